"""The MUSE-style study (``study: muse``): a language model trained on two corpora, part of one
unlearned, scored on MUSE's six criteria (Shi et al., "MUSE: Machine Unlearning Six-Way
Evaluation for Language Models", 2024; the criteria: :mod:`jaxcl.unlearn.muse`).

Offline data instead of MUSE's BBC news and Harry Potter books: a small Llama trained from scratch
on ``data.corpora`` (default the KJV's books of the law and the 2012 Democratic convention
speeches) and on the documents of fictional entities (the knowledge the questions ask about).

- ``D_f``: ``data.n_forget`` consecutive windows of the first corpus and ``data.n_facts``
  entities' documents, cut into ``data.requests`` equal folds (the sequential requests);
- ``D_r``: ``data.n_retain`` other windows of the first corpus, ``data.n_other`` of the second and
  ``data.n_facts`` other entities' documents; ``D_h``: ``data.n_holdout`` windows of the first
  corpus's held-out documents (every tenth), which no model sees;
- **target**: the registry's ``finetune`` on ``D_f + D_r`` (``train``: AdamW, warm-up + cosine;
  each entity document ``data.fact_repeats`` times), **retrain** (the oracle): the same on ``D_r``;
- each method of ``methods`` unlearns from the target, through :class:`jaxcl.unlearn.muse.MusePhase`
  (every criterion every ``unlearn.eval_every`` steps inside the compiled loop):
  the whole ``D_f`` (the table's C1-C4), the first ``s`` folds at once for each ``s`` of ``scale``
  below ``data.requests`` (C5; ``s = 1`` is the stream's first request), and the folds as
  ``data.requests`` sequential requests, each from the model the previous one left (C6).

Columns (ROUGE-L F1 and AUC as percentages): ``verbmem_f`` (C1, lower: forgotten), ``knowmem_f``
(C2), ``privleak`` (C3, MUSE's PrivLeak of the Min-K% attack against the retrained model of the same
seed: 0 ideal, < 0 under-unlearned, > 0 over-unlearned), ``knowmem_r`` (C4, utility), ``scal_knowmem_r``
(C5: utility after unlearning the smallest forget set of ``scale``; compare with C4 at the whole
``D_f``), ``sust_knowmem_r`` / ``sust_verbmem_f`` (C6: after the last sequential request),
``scal_drop`` (C5 as one number per seed: ``scal_knowmem_r - knowmem_r``) and ``sust_drop`` (C6:
KnowMem on ``D_r`` after the first request minus after the last).
``extra.scale`` / ``extra.sequential`` hold every criterion per size / per request (per seed),
rows' ``trace`` the criteria inside each unlearning loop; ``criteria.png`` plots C5 and C6.
Seeds are vmapped (one program per phase); results.json through :mod:`jaxcl.results`.
"""

from __future__ import annotations

import os
import time

import jax
import numpy as np

from .. import config, plots, report, results
from ..config import ConfigError
from ..data import text
from ..driver import Report, Run, Study
from ..engine import check_finite
from ..loops import seeds_keys
from ..models import lm
from ..parallel import jit_seeds, place_seeds, seeds_map
from ..unlearn import attacks
from ..unlearn import muse as M
from ..unlearn.lm import LMProblem, check_ranks, trainer, unlearner

METHODS = ("ga", "graddiff", "npo", "simnpo", "rmu", "gu-graddiff")
NEWER = ("undial", "wga", "satimp")  # open-unlearning's other recent methods, by --set methods=
# what the study runs: every unlearning method whose forget rows need no alternative answer (IDK and
# DPO prefer a refusal, which a corpus window has none of), and their GU versions
CHOICES = METHODS + ("gu-ga", "gu-npo", "gu-simnpo") + NEWER + tuple(f"gu-{m}" for m in NEWER)
TARGET, RETRAIN, UNLEARN = 1, 2, 3  # key roles
ROW_TARGET, ROW_RETRAIN = "target (before unlearning)", "retrain (reference)"

DEFAULTS = {
    "model": lm.section(d_model=128, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=384, tokenizer="smollm2"),
    "data": {
        "corpora": ("bible:law", "convention:democrat"),  # the first is unlearned from
        "seq_len": 64,
        "prefix_len": 32,  # VerbMem's prompt; the rest of the window is the continuation
        "n_forget": 64,
        "n_retain": 128,
        "n_other": 128,
        "n_holdout": 64,
        "n_facts": 16,
        "fact_repeats": 8,
        "requests": 4,
    },
    # the target's and the retrained model's training (tofu.trainer's recipe: AdamW, warm-up + cosine)
    "train": {
        "epochs": 20.0,
        "batch_size": 32,
        "lr": 3e-3,
        "weight_decay": 0.0,
        "clip_norm": 1.0,
        "eval_every": 0,
    },
    # unlearning: epochs over the forget rows; criteria every eval_every steps (largest divisor)
    "unlearn": {"epochs": 4.0, "batch_size": 16, "eval_every": 5, "eval_size": 32},
    "scale": (1, 2),  # C5: forget-set sizes in folds, besides the whole D_f
    "methods": METHODS,
    "seeds": 4,
    "seed": 0,
}

MESH_BATCHES = ("train.batch_size", "unlearn.batch_size")
CRITERIA = ("verbmem_f", "knowmem_f", "mia_auc", "knowmem_r")
COLUMNS = [
    ("verbmem_f", "C1 VerbMem f", "pct"),
    ("knowmem_f", "C2 KnowMem f", "pct"),
    ("privleak", "C3 PrivLeak", "float"),
    ("knowmem_r", "C4 KnowMem r", "pct"),
    ("scal_knowmem_r", "C5 KnowMem r (smallest)", "pct"),
    ("sust_knowmem_r", "C6 KnowMem r (last request)", "pct"),
    ("sust_verbmem_f", "C6 VerbMem f (last request)", "pct"),
    ("scal_drop", "C5 utility lost to size", "pct"),
    ("sust_drop", "C6 utility lost to requests", "pct"),
    ("time_s", "time (s)", "seconds"),
]


def validate(cfg: dict) -> None:
    d = cfg["data"]
    config.check_each(
        cfg, "data.corpora", set(text.domain_names()), "text domain", unknown=text.unknown_source
    )
    if len(d["corpora"]) != 2:
        raise ConfigError(
            f"data.corpora={list(d['corpora'])}: give two corpora (the first is unlearned from)"
        )
    lm.check(cfg["model"], names=("scratch", *lm.SIZES))
    if cfg["model"]["lora"].get("rank", 0):
        raise ConfigError(
            "model.lora: the muse study decodes its criteria with the full weights; set model.lora.rank=0"
        )
    config.check_positive(
        cfg,
        [
            "data.seq_len",
            "data.prefix_len",
            "data.n_forget",
            "data.n_retain",
            "data.n_other",
            "data.n_holdout",
        ]
        + [
            "data.n_facts",
            "data.fact_repeats",
            "data.requests",
            "train.epochs",
            "train.batch_size",
            "train.lr",
        ]
        + ["unlearn.epochs", "unlearn.batch_size", "unlearn.eval_size", "seeds"],
    )
    if not 0 < d["prefix_len"] < d["seq_len"]:
        raise ConfigError(
            f"data.prefix_len={d['prefix_len']} must be between 1 and data.seq_len - 1 ({d['seq_len'] - 1})"
        )
    for key in ("n_forget", "n_facts"):
        if d[key] < d["requests"]:
            raise ConfigError(
                f"data.{key}={d[key]} is smaller than data.requests={d['requests']}: every request needs one"
            )
    bad = [s for s in cfg["scale"] if not (isinstance(s, int) and 0 < s < d["requests"])]
    if bad:
        raise ConfigError(
            f"scale={list(cfg['scale'])}: sizes in folds, each 1 to data.requests - 1 ({d['requests'] - 1})"
        )
    check_ranks(cfg, cfg["methods"], (d["n_forget"] + d["n_facts"]) // d["requests"])


# -- the schedule ----------------------------------------------------------------------------------


def _problem(rows: dict, retain: dict, probe: dict) -> M.MuseProblem:
    return M.MuseProblem(forget=rows, forget_alt=rows, retain=retain, probe=probe)


def phases(cfg: dict, model, data: M.Data, mesh=None) -> list:
    """``[(name, key role, Phase, hp, problem, kind)]``: the target's and the retrained model's
    training, then for every method the whole forget set (``main``), each size of ``scale``
    (``scale:s``, from the target; ``s = 1`` is ``request:1``) and each request of the stream
    (``request:r``, from the previous request's model)."""
    d, pad = cfg["data"], data.pad
    rep = d["fact_repeats"]
    every = range(d["requests"])
    train_f = M.forget_rows(data, every)
    train_f = jax.tree.map(lambda a, b: np.concatenate([a, b]), train_f, M.repeat(data.forget_docs, rep - 1))
    retain_train = jax.tree.map(
        lambda a, b: np.concatenate([a, b]), data.retain, M.repeat(data.retain_docs, rep - 1)
    )
    both = jax.tree.map(lambda a, b: np.concatenate([a, b]), train_f, retain_train)
    empty = {k: v[:1] for k, v in train_f.items()}
    out = []
    for name, role, rows in ((ROW_TARGET, TARGET, both), (ROW_RETRAIN, RETRAIN, retain_train)):
        phase, hp = trainer(model, cfg, rows["tokens"].shape[0], mesh)
        out.append((name, role, phase, hp, LMProblem(forget=empty, forget_alt=empty, retain=rows), "train"))
    kw = {"prefix_len": d["prefix_len"], "pad": pad}
    for name in cfg["methods"]:
        sets = [("main", list(every))] + [(f"scale:{s}", list(range(s))) for s in cfg["scale"] if s > 1]
        sets += [(f"request:{r + 1}", [r]) for r in every]
        made = {}  # one phase per forget-set size: the requests share one compiled program
        for kind, folds in sets:
            rows = M.forget_rows(data, folds)
            n = rows["tokens"].shape[0]
            if n not in made:
                phase, hp = unlearner(model, cfg, name, n, mesh)
                made[n] = M.MusePhase(model, phase.spec, phase.phase, mesh=mesh, **phase.options, **kw), hp
            out.append((name, UNLEARN, *made[n], _problem(rows, data.retain, data.probe), kind))
    return out


def load(cfg: dict):
    """``(model, tokenizer, data)`` of the config."""
    tok = M.tokenizer(cfg)
    model = lm.load(cfg["model"], max_seq_len=cfg["data"]["seq_len"] + 8, tokenizer=tok)[0]
    return model, tok, M.build(cfg, tok)


def body(cfg: dict, run: Run) -> Report:
    """Target and retrained model, then every method's whole forget set, sizes and request stream."""
    say, mesh = run.say, run.mesh
    t_start = time.perf_counter()
    model, tok, data = load(cfg)
    d = cfg["data"]
    keys = seeds_keys(cfg["seed"], cfg["seeds"])
    crit = jit_seeds(lambda p, pr: M.criteria(model, p, pr, d["prefix_len"], data.pad), (0, None), mesh)
    init = jax.vmap(model.init)(jax.vmap(lambda k: jax.random.fold_in(k, 0))(keys))
    timing, scored, traces = {}, {}, {}
    scale, seq = {}, {}

    compiled = {}  # one program per phase object: the requests of a method compile once

    def phase_run(phase, hp, params, role, problem, salt):
        fn = seeds_map(lambda p, k, prob: phase.run(p, k, prob, hp), (0, 0, None), mesh)
        k = jax.vmap(lambda k: jax.random.fold_in(jax.random.fold_in(k, role), salt))(keys)
        args = place_seeds((params, k, problem), (0, 0, None), mesh)
        o, c_s, t_s = report.timed_jit(fn, *args, cache=compiled, key=id(phase))
        check_finite(o["nonfinite_step"], where=f"(phase {role})")
        return o, c_s, t_s

    def score(params):
        return {k: np.asarray(v) for k, v in crit(params, data.probe).items()}

    schedule = phases(cfg, model, data, mesh)
    start, prev, bar = {}, {}, run.progress(len(schedule), "phases")
    for i, (name, role, phase, hp, problem, kind) in enumerate(schedule):
        if role != UNLEARN:
            o, c_s, t_s = phase_run(phase, hp, init, role, problem, 0)
            start[role] = o["params"]
            scored[name] = score(o["params"])
            timing[name] = {"compile_s": c_s, "time_s": t_s, "steps": phase.phase.steps}
            say(
                f"{name}: {phase.phase.steps} steps ({t_s:.1f}s + {c_s:.1f}s compile), "
                + ", ".join(f"{k} {v.mean():.3f}" for k, v in scored[name].items())
            )
        else:
            from_params = prev[name] if kind.startswith("request:") and kind != "request:1" else start[TARGET]
            o, c_s, t_s = phase_run(phase, hp, from_params, role, problem, i)
            s = score(o["params"])
            if kind == "main":
                scored[name], timing[name] = s, {"compile_s": c_s, "time_s": t_s, "steps": phase.phase.steps}
                traces[name] = {k: np.asarray(v).mean(0).tolist() for k, v in o["trace"].items()}
            elif kind.startswith("scale:"):
                scale.setdefault(name, {})[int(kind.split(":")[1])] = s
            else:
                prev[name] = o["params"]
                seq.setdefault(name, []).append(s)
                if kind == "request:1":
                    scale.setdefault(name, {})[1] = s
            say(
                f"  {name:12s} {kind:10s} {phase.phase.steps} steps: verbmem_f {s['verbmem_f'].mean():.3f} "
                f"knowmem_f {s['knowmem_f'].mean():.3f} knowmem_r {s['knowmem_r'].mean():.3f} ({t_s:.1f}s + {c_s:.1f}s)"
            )
        bar.update(1)

    bar.close()
    auc_retrain = scored[ROW_RETRAIN]["mia_auc"]
    leak = lambda a: np.array([attacks.privleak(float(x), float(y)) for x, y in zip(a, auc_retrain)])  # noqa: E731
    nan = np.full(cfg["seeds"], np.nan)
    smallest = min([*cfg["scale"], d["requests"]])
    out_rows = {}
    for name, s in scored.items():
        per = {k: s[k] for k in ("verbmem_f", "knowmem_f", "knowmem_r", "mia_auc")}
        per["privleak"] = leak(s["mia_auc"])
        learned = name in seq
        per["scal_knowmem_r"] = scale[name][smallest]["knowmem_r"] if learned else nan
        per["sust_knowmem_r"] = seq[name][-1]["knowmem_r"] if learned else nan
        per["sust_verbmem_f"] = seq[name][-1]["verbmem_f"] if learned else nan
        # per seed: utility at the smallest size minus at the whole D_f; after the first request
        # minus after the last (> 0: utility falls as the forget set grows / as requests come)
        per["scal_drop"] = per["scal_knowmem_r"] - s["knowmem_r"] if learned else nan
        per["sust_drop"] = seq[name][0]["knowmem_r"] - seq[name][-1]["knowmem_r"] if learned else nan
        per["time_s"] = [timing[name]["time_s"]]
        out_rows[name] = results.row(
            per, timing=timing[name], **({"trace": traces[name]} if name in traces else {})
        )
    timing["total_s"] = time.perf_counter() - t_start
    tolist = lambda s: {k: np.asarray(v).tolist() for k, v in s.items()}  # noqa: E731
    extra = {
        "sizes": {
            "folds": d["requests"],
            "forget_rows": int(M.forget_rows(data, range(d["requests"]))["tokens"].shape[0]),
        },
        "scale": {
            n: {str(k): tolist(v) for k, v in sorted(by.items())} | {str(d["requests"]): tolist(scored[n])}
            for n, by in scale.items()
        },
        "sequential": {n: [tolist(s) for s in ss] for n, ss in seq.items()},
        "privleak_sequential": {n: [leak(s["mia_auc"]).tolist() for s in ss] for n, ss in seq.items()},
    }
    res = results.make("muse", cfg, out_rows, COLUMNS, timing=timing, extra=extra, first="model")
    header = (
        f"\n{cfg['name']}: forget {d['n_forget']} windows of {d['corpora'][0]} + {d['n_facts']} facts in "
        f"{d['requests']} requests, {cfg['seeds']} seeds ({timing['total_s']:.1f}s); ROUGE-L F1 and PrivLeak in %\n"
    )
    return Report(res, header, plots=(lambda res, out: plot(res, os.path.join(out, "criteria.png")),))


def programs(cfg: dict, mesh) -> list:
    """The compiled calls of a run (``jaxcl compile``): the criteria, and every distinct phase
    (the whole forget set, each size, one request) with one training step of each."""
    from .. import compile as C

    model, _, data = load(cfg)
    d = cfg["data"]
    sp = C.seeds_spec(mesh)
    keys = C.abstract(jax.eval_shape(lambda: seeds_keys(cfg["seed"], cfg["seeds"])), mesh, sp)
    params = C.abstract(jax.eval_shape(jax.vmap(model.init), keys), mesh, sp)
    crit = jit_seeds(lambda p, pr: M.criteria(model, p, pr, d["prefix_len"], data.pad), (0, None), mesh)
    out = [C.Program("criteria", crit, (params, C.abstract(data.probe, mesh)))]
    for name, role, phase, hp, problem, kind in phases(cfg, model, data, mesh):
        if kind.startswith("request:") and kind != "request:1":
            continue  # the same program as the first request
        label = name if role != UNLEARN else f"{name} {kind}"
        out += C.phase_programs(label, phase, hp, role, params, keys, C.abstract(problem, mesh), mesh)
    return out


def plot(res: dict, path: str) -> str:
    """C5 (utility against the forget set's size) and C6 (utility and VerbMem over the requests)."""
    ex = res["extra"]
    with plots.figure(path, (11, 3.6), 3, dpi=110) as (a5, a6, a1):
        for n, by in ex["scale"].items():
            sizes = sorted(by, key=int)
            a5.plot(
                [int(s) for s in sizes], [100 * np.mean(by[s]["knowmem_r"]) for s in sizes], "o-", label=n
            )
        for n, ss in ex["sequential"].items():
            r = range(1, len(ss) + 1)
            a6.plot(r, [100 * np.mean(s["knowmem_r"]) for s in ss], "o-", label=n)
            a1.plot(r, [100 * np.mean(s["verbmem_f"]) for s in ss], "o-", label=n)
        for ax, t, y in (
            (a5, "C5 scalability", "KnowMem on D_r (%)"),
            (a6, "C6 sustainability", "KnowMem on D_r (%)"),
            (a1, "C6: verbatim memorisation", "VerbMem on D_f (%)"),
        ):
            ax.set_title(f"{res['name']}: {t}", fontsize=9)
            ax.set_xlabel("folds of D_f at once" if ax is a5 else "requests served")
            ax.set_ylabel(y)
        ref = res["rows"].get(ROW_RETRAIN)
        if ref is not None:  # the model that never saw D_f: where an unlearned model should land
            a1.axhline(100 * ref["summary"]["verbmem_f"]["mean"], color="k", ls="--", lw=0.8, label="retrain")
        a5.legend(fontsize=7)
        a1.legend(fontsize=7)
    return path


STUDY = Study(
    "muse",
    kinds=("unlearn",),
    defaults=DEFAULTS,
    validate=validate,
    body=body,
    no_sweep="compare settings with jaxcl run ... --set",
    methods=CHOICES,
    mesh_batches=MESH_BATCHES,
    programs=programs,
)
run, sweep = STUDY.run, STUDY.sweep
