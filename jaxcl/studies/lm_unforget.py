"""The random-label forgetting runner (``study: lm-unforget``): does forgetting a subset of a
task by fine-tuning it on random labels spread to the rest of the task and to another task,
and do the hidden states still hold the true labels?

Paper: Zhang et al., "Unforgettable Generalization in Language Models" (2024): fine-tuning on
randomised labels of a forget set makes the model forget it, how far the forgetting spreads to
held-out examples of the same task varies widely between tasks, and a linear probe on the hidden
states still decodes the true labels after forgetting (the forgetting is shallow).

Protocol: a small Llama (byte tokenizer) is trained from scratch (:func:`jaxcl.unlearn.lm.trainer`)
on two procedural text tasks of :mod:`jaxcl.tasks` at once: ``data.task`` (``rev``: ``rev 4785=``
-> ``5874``, the answer's first digit, 10 labels, is what the probe decodes; ``count``:
``count 7 in 477577=`` -> ``3``, a string of ``data.digits + 3`` digits, so ``data.digits + 4``
labels, most rows 0-2) and ``data.other`` (``sort``: the digits sorted). Then every method of ``methods``
(the registry's ``random_label``: each forget row's answer replaced by another forget row's,
:mod:`jaxcl.methods.random_label`) unlearns the first ``data.n_forget`` training rows of the task
(:func:`jaxcl.unlearn.lm.unlearner`; retain rows: the rest of both tasks' training rows, used
only with ``<method>.retain_weight > 0``). Scored per seed (seeds vmapped), teacher-forced exact
match of the answer: ``forget`` (the relabelled rows), ``retain`` (trained rows of the task not
forgotten), ``test`` (held-out rows of the task: does the forgetting generalise?), ``other``
(held-out rows of the other task); and a linear probe (:func:`jaxcl.unlearn.eval.linear_probe`,
softmax regression on the final hidden state at the last prompt token) trained on the retained
rows' true labels, its accuracy on the forget rows (``probe_forget``) and held-out rows
(``probe_test``). Rows: ``untrained`` (the initialisation: the probe's control, what the input
alone gives away), ``original``, then each method.

``data.task=lookup`` (``key 4785=`` -> four random digits, drawn independently of the key) has
answers only memorisation gives. The trigger-search audit (``attack.trigger.steps > 0``,
:func:`jaxcl.unlearn.trigger.trigger_attack`; Kowalczuk et al., "Finding Dori", 2025) adds the
row ``oracle (retain only)`` (the same training without the forget rows: what a model that never
saw them knows) and, for every row, the held-out half of the forget rows' answer NLL and exact
match without and with a trigger fitted (Adam, ``attack.trigger.lr``, ``steps``, ``length``
vectors, ``mode``) to the first half's true answers, seeds vmapped.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from .. import config, report, results, tasks
from ..config import ConfigError
from ..driver import Report, Run, Study
from ..engine import check_finite
from ..loops import seeds_keys
from ..models import llama, lm
from ..parallel import jit_seeds, place_seeds, seeds_map
from ..unlearn import trigger
from ..unlearn.eval import linear_probe
from ..unlearn.lm import LMProblem, trainer, unlearner

METHODS = ("random_label",)
# the probe's label: the answer's first digit (count: the answer); lookup: a random answer per
# prompt (memorised, not computable: a model that never saw a row cannot know its answer)
TASKS = ("rev", "sort", "count", "lookup")
OTHERS = ("rev", "sort", "count")
ORACLE = "oracle (retain only)"  # the row trained without the forget rows (with the trigger audit)
TRAIN, UNLEARN, TRIGGER = 1, 2, 3  # key roles

DEFAULTS = {
    "model": lm.section(d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=192),
    "data": {
        "task": "rev",
        "digits": 4,  # the task's size (count: strings of digits + 3 digits, labels 0 .. digits + 3)
        "other": "sort",
        "other_digits": 4,
        "n_train": 2048,  # training rows per task
        "n_test": 256,  # held-out rows per task
        "n_forget": 256,  # the task's first training rows: the forget set
    },
    "train": {
        "epochs": 10.0,
        "batch_size": 32,
        "lr": 3e-3,
        "weight_decay": 0.0,
        "clip_norm": 1.0,
        "eval_every": 0,
    },
    "unlearn": {"epochs": 10.0, "batch_size": 16, "eval_every": 0, "eval_size": 32},
    "random_label": {"lr": 1e-3, "retain_weight": 0.0},  # the paper fine-tunes on the forget set only
    "probe": {"steps": 300, "lr": 0.05},
    # the trigger-search audit (jaxcl.unlearn.trigger; steps 0: off): Adam on `length` embedding
    # vectors (mode edit: added to the prompt's first tokens; prefix: a soft prompt) that fits the
    # first half of the forget rows' true answers, scored on the other half; adds the oracle row
    "attack": {"trigger": dict(trigger.SECTION)},
    "methods": METHODS,
    "seeds": 3,
    "seed": 0,
}

COLUMNS = [
    ("forget", "forget rows", "pct"),
    ("retain", "retained rows", "pct"),
    ("test", "held-out rows", "pct"),
    ("other", "other task", "pct"),
    ("probe_forget", "probe on forget rows", "pct"),
    ("probe_test", "probe on held-out rows", "pct"),
    ("time_s", "time (s)", "seconds"),
]
TRIGGER_COLUMNS = [  # the held-out half of the forget rows, without / with the searched trigger
    ("held_nll", "held-out forget NLL", "float"),
    ("trig_nll", "with trigger", "float"),
    ("trig_gain", "NLL drop by the trigger", "float"),
    ("held_exact", "held-out forget exact", "pct"),
    ("trig_exact", "exact with trigger", "pct"),
    ("trig_em", "token match with trigger", "pct"),
    ("search_nll", "search-half NLL with trigger", "float"),
]
AUDIT_KEYS = {"held_nll": "nll", "held_exact": "exact"}  # column -> trigger.trigger_attack's key


def validate(cfg: dict) -> None:
    d = cfg["data"]
    lm.check(cfg["model"], names=("scratch", *lm.SIZES), tokenizers=("byte",))
    config.check_choice(cfg, "data.task", TASKS)
    config.check_choice(cfg, "data.other", OTHERS)
    config.check_positive(
        cfg,
        ["data.digits", "data.other_digits", "data.n_train", "data.n_test", "data.n_forget"]
        + ["train.epochs", "train.batch_size", "train.lr", "unlearn.epochs", "unlearn.batch_size"]
        + ["probe.steps", "probe.lr", "seeds"],
    )
    trigger.check_section(cfg)
    if d["task"] == d["other"]:
        raise ConfigError(f"data.other={d['other']!r} is data.task: give another task ({', '.join(OTHERS)})")
    if d["task"] == "count" and d["digits"] > 6:
        raise ConfigError(f"data.digits={d['digits']}: the count answer must be one digit; give 1 to 6")
    if not 2 <= d["n_forget"] < d["n_train"]:
        raise ConfigError(
            f"data.n_forget={d['n_forget']}: give 2 to data.n_train - 1 ({d['n_train'] - 1}) rows to forget"
        )


# -- data -------------------------------------------------------------------------------------------


def encode(pairs, T: int, tok, pad: int) -> dict:
    """``{'tokens': (n, T), 'mask': (n, T)}``: prompt + answer + end token, right-padded; the mask
    on the answer's tokens."""
    end = vocab_end(tok)
    toks = np.full((len(pairs), T), pad, np.int32)
    mask = np.zeros((len(pairs), T), bool)
    for r, (p, a) in enumerate(pairs):
        ip, ia = tok.encode(p), tok.encode(a)
        ids = ip + ia + [end]
        toks[r, : len(ids)] = ids
        mask[r, len(ip) : len(ip) + len(ia)] = True
    return {"tokens": toks, "mask": mask}


def vocab_end(tok) -> int:
    from ..data import text

    return text.end_id(tok)


def lookup(n: int, seed: int, digits: int) -> list[tuple[str, str]]:
    """``n`` rows ``key <digits + 2 digits>=`` -> ``digits + 2`` random digits, drawn independently
    of the key (deterministic in ``seed``): answers only memorisation can give."""
    rng = np.random.default_rng([seed, 7919, digits])
    k, a = rng.integers(0, 10, (2, n, digits + 2))
    return [(f"key {''.join(map(str, x))}=", "".join(map(str, y))) for x, y in zip(k, a)]


def build(cfg: dict, tok) -> dict:
    """The task's and the other task's rows (train / test), the forget split, the labels and the
    prompt length (every row of the task has the same)."""
    from ..data import vocab

    d = cfg["data"]
    n = d["n_train"] + d["n_test"]
    if d["task"] == "lookup":
        main = lookup(n, cfg["seed"], d["digits"])
    else:
        main = tasks.generate(d["task"], n, seed=cfg["seed"], digits=d["digits"])
    other = tasks.generate(d["other"], n, seed=cfg["seed"] + 1, digits=d["other_digits"])
    lens = {len(tok.encode(p)) for p, _ in main}
    if len(lens) != 1:
        raise ConfigError(
            f"data.task={d['task']}: its prompts differ in length; the probe needs one position"
        )
    T = max(len(tok.encode(p + a)) + 1 for p, a in main + other)
    pad = vocab.pad_id(tok)
    A, B = encode(main, T, tok, pad), encode(other, T, tok, pad)
    labels = np.array([int(a) if d["task"] == "count" else int(a[0]) for _, a in main], np.int32)
    tr, te, f = slice(0, d["n_train"]), slice(d["n_train"], n), d["n_forget"]
    cut = lambda rows, sl: {k: v[sl] for k, v in rows.items()}  # noqa: E731
    out = {
        "forget": cut(A, slice(0, f)),
        "retain": cut(A, slice(f, d["n_train"])),
        "test": cut(A, te),
        "other_train": cut(B, tr),
        "other": cut(B, te),
        "y_forget": labels[:f],
        "y_retain": labels[f : d["n_train"]],
        "y_test": labels[te],
    }
    return jax.tree.map(jnp.asarray, out), lens.pop(), T


def exact(model, params, rows) -> jax.Array:
    """Teacher-forced exact match of every row's answer (its mask), averaged over rows."""
    pred = model.apply(params, rows["tokens"][:, :-1]).argmax(-1)
    ok = jnp.where(rows["mask"][:, 1:], pred == rows["tokens"][:, 1:], True).all(-1)
    return ok.mean()


def scores(model, params, data, prompt_len: int, n_classes: int, probe: dict) -> dict:
    """The four exact-match accuracies and the linear probe's (module docstring)."""
    p = prompt_len - 1

    def feat(params, tokens):
        h = llama.forward(model.cfg, params, tokens[:, : p + 1], return_hidden=True)
        return h[:, p].astype(jnp.float32)

    def probe_acc(x_eval, y_eval):
        return linear_probe(
            feat,
            params,
            data["retain"]["tokens"],
            data["y_retain"],
            x_eval,
            y_eval,
            n_classes,
            steps=probe["steps"],
            lr=probe["lr"],
        )

    return {
        **{k: exact(model, params, data[k]) for k in ("forget", "retain", "test", "other")},
        "probe_forget": probe_acc(data["forget"]["tokens"], data["y_forget"]),
        "probe_test": probe_acc(data["test"]["tokens"], data["y_test"]),
    }


# -- running ---------------------------------------------------------------------------------------


def body(cfg: dict, run: Run) -> Report:
    """Train on both tasks, then every method's random-label unlearning of the forget rows."""
    from .. import hf

    say, mesh = run.say, run.mesh
    t0 = time.perf_counter()
    tok = hf.ByteTokenizer()
    data, prompt_len, T = build(cfg, tok)
    model = lm.load(cfg["model"], max_seq_len=T + 8, tokenizer=tok)[0]
    keys = seeds_keys(cfg["seed"], cfg["seeds"])
    n_classes = cfg["data"]["digits"] + 4 if cfg["data"]["task"] == "count" else 10
    score = jit_seeds(lambda p, d: scores(model, p, d, prompt_len, n_classes, cfg["probe"]), (0, None), mesh)
    both = lambda a, b: jax.tree.map(lambda x, y: jnp.concatenate([x, y]), a, b)  # noqa: E731
    train_rows = both(both(data["forget"], data["retain"]), data["other_train"])
    empty = {k: v[:1] for k, v in data["forget"].items()}
    forget_pb = LMProblem(
        forget=data["forget"], forget_alt=data["forget"], retain=both(data["retain"], data["other_train"])
    )

    def phase_run(phase, hp, params, role, problem):
        fn = seeds_map(lambda p, k, pr: phase.run(p, jax.random.fold_in(k, role), pr, hp), (0, 0, None), mesh)
        o, c_s, t_s = report.timed_jit(fn, *place_seeds((params, keys, problem), (0, 0, None), mesh))
        check_finite(o["nonfinite_step"], where=f"(phase {role})")
        return o, t_s

    init = jax.vmap(model.init)(jax.vmap(lambda k: jax.random.fold_in(k, 0))(keys))
    evaluated = {"untrained": (score(init, data), 0.0)}  # the probe's control: nothing learned yet
    phase, hp = trainer(model, cfg, train_rows["tokens"].shape[0], mesh)
    o, t_s = phase_run(phase, hp, init, TRAIN, LMProblem(forget=empty, forget_alt=empty, retain=train_rows))
    original = o["params"]
    evaluated["original"] = (score(original, data), t_s)
    params_of = {"untrained": init, "original": original}
    say(f"original: {phase.phase.steps} steps ({t_s:.1f}s)")
    trig = cfg["attack"]["trigger"]
    if trig["steps"]:  # the trigger audit's control: the same training without the forget rows
        if trig["mode"] == "edit" and trig["length"] > prompt_len - 1:
            raise ConfigError(
                f"attack.trigger.length={trig['length']} with mode edit edits the prompt's first tokens; "
                f"give at most {prompt_len - 1} (the prompt has {prompt_len} tokens)"
            )
        oracle_rows = both(data["retain"], data["other_train"])
        phase, hp = trainer(model, cfg, oracle_rows["tokens"].shape[0], mesh)
        pb = LMProblem(forget=empty, forget_alt=empty, retain=oracle_rows)
        o, t_s = phase_run(phase, hp, init, TRAIN, pb)
        params_of[ORACLE] = o["params"]
        evaluated[ORACLE] = (score(o["params"], data), t_s)
        say(f"{ORACLE}: {phase.phase.steps} steps ({t_s:.1f}s)")
    for name in cfg["methods"]:
        phase, hp = unlearner(model, cfg, name, cfg["data"]["n_forget"], mesh)
        o, t_s = phase_run(phase, hp, original, UNLEARN, forget_pb)
        evaluated[name] = (score(o["params"], data), t_s)
        params_of[name] = o["params"]
        say(f"  {name}: {phase.phase.steps} steps ({t_s:.1f}s)")
    audits = {}
    if trig["steps"]:
        audit = jit_seeds(
            lambda p, k, f: trigger.trigger_attack(
                model.cfg,
                p,
                f,
                jax.random.fold_in(k, TRIGGER),
                trig["lr"],
                steps=trig["steps"],
                length=trig["length"],
                mode=trig["mode"],
            ),
            (0, 0, None),
            mesh,
        )
        t1 = time.perf_counter()
        audits = {name: audit(p, keys, data["forget"]) for name, p in params_of.items()}
        say(f"trigger audit: {trig['steps']} steps x {len(audits)} models ({time.perf_counter() - t1:.1f}s)")
    rows = {}
    for name, (ev, t_s) in evaluated.items():
        per = {k: np.asarray(v) for k, v in ev.items()}
        per["time_s"] = [t_s]
        if name in audits:
            a = audits[name]
            a = {**a, "trig_gain": a["nll"] - a["trig_nll"]}
            per.update({k: np.asarray(a[AUDIT_KEYS.get(k, k)]) for k, _, _ in TRIGGER_COLUMNS})
        rows[name] = results.row(per)
    res = results.make(
        "lm-unforget",
        cfg,
        rows,
        COLUMNS + (TRIGGER_COLUMNS if audits else []),
        timing={"total_s": time.perf_counter() - t0},
        extra={
            "n_classes": n_classes,
            "majority_test": float(np.bincount(np.asarray(data["y_test"])).max() / len(data["y_test"])),
            "majority_forget": float(np.bincount(np.asarray(data["y_forget"])).max() / len(data["y_forget"])),
            "prompt_len": prompt_len,
        },
        first="model",
    )
    d = cfg["data"]
    header = (
        f"\n{cfg['name']}: task {d['task']} ({n_classes} labels) + {d['other']}; {d['n_forget']} of {d['n_train']} "
        f"training rows relabelled at random; {cfg['seeds']} seeds; teacher-forced exact match, mean ± std\n"
    )
    return Report(res, header)


STUDY = Study(
    "lm-unforget",
    kinds=("unlearn",),
    defaults=DEFAULTS,
    validate=validate,
    body=body,
    no_sweep="one short unlearning phase: compare settings with jaxcl run ... --set",
    methods=METHODS,
)
run, sweep = STUDY.run, STUDY.sweep
