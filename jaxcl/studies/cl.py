"""The continual-learning runner (``study: cl``): a data set cut into a stream of tasks, a model,
methods and seeds; for every method all seeds in one program (``over_seeds``: ``vmap``, or a
compiled ``lax.map`` for convolutional models on the CPU).

Without checkpoints a method's whole stream is one compiled program (``Experiment.run``: a
``lax.scan`` over tasks of the one loop, :func:`jaxcl.loops.run_chunks`). With checkpoints (the
default) the run is cut where checkpoints are written: at task ends, and every
``loop.checkpoint_every`` steps; batches depend only on the run key and the step counter, so both
give the same run (a test pins it). Prints one table of ACC, BWT, FWT, forgetting, min-ACC,
WC-ACC and WF_w (mean ± std over seeds) and writes results.json (:mod:`jaxcl.results`),
``accuracy_matrix.png`` and ``stability_gap.png``.
"""

from __future__ import annotations

import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from .. import config, parallel, plots, report, results
from .. import metrics as M
from .. import sweep as sweep_mod
from ..batching import over_seeds, resolve_mode
from ..config import ConfigError, method_settings
from ..data import loaders, streams
from ..driver import Report, Run, Segment, Study, run_segments
from ..engine import check_finite
from ..loops import Experiment, LoopConfig, seeds_keys
from ..methods import get_method
from ..models import check_section, from_config, model_config

DEFAULTS = {
    "data": {
        "dataset": "fashion-mnist",
        "scenario": "class-incremental",
        "n_tasks": 5,
        "max_train_per_task": 0,
        "max_test_per_task": 0,
        "classes_per_task": 2,  # scenario scole: classes drawn per task
        "rehearsal_fraction": 0.0,  # > 0: power-law rehearsal of earlier tasks (streams.power_law_rehearsal)
        "rehearsal_alpha": 1.0,  # its exponent (0: uniform rehearsal)
        "order": "random",  # "delt": LQS-scored, folding-ordered tasks read in order (jaxcl.data.delt)
        "delt_layers": 3,  # folding layers
        "delt_select": 1.0,  # share of each task kept (highest LQS)
    },  # 0: every example
    "model": model_config("mlp"),
    "loop": {
        "steps_per_task": 200,
        "batch_size": 64,
        "eval_every": 2,
        "eval_per_task": 1000,
        "consolidate_samples": 256,
        "skip_nonfinite": False,
        "checkpoint": True,
        "checkpoint_every": 0,
    },
    "methods": ("finetune", "er", "ewc", "joint"),
    "seeds": 5,
    "seed": 0,
    "wf_window": 10,
}


TINY = {
    "data": {"max_train_per_task": 1000, "max_test_per_task": 200},
    "seeds": 2,
    "loop": {
        "steps_per_task": 40,
        "batch_size": 32,
        "eval_every": 5,
        "eval_per_task": 100,
        "consolidate_samples": 64,
    },
    "model": {"mlp": {"hidden": (64,)}},
}


def tiny(cfg: dict) -> dict:
    """The seconds-long variant of a continual-learning config (what the tests run)."""
    out = {**cfg, "seeds": TINY["seeds"]}
    for sec in ("data", "loop"):
        out[sec] = {**cfg.get(sec, {}), **TINY[sec]}
    out["model"] = {
        **cfg.get("model", {}),
        "mlp": {**cfg.get("model", {}).get("mlp", {}), **TINY["model"]["mlp"]},
    }
    return out


def loop_config(cfg: dict) -> LoopConfig:
    l = cfg["loop"]
    return LoopConfig(
        l["steps_per_task"],
        l["batch_size"],
        l["eval_every"],
        l["eval_per_task"],
        l["consolidate_samples"],
        l["skip_nonfinite"],
        order="sequential" if cfg["data"].get("order", "random") == "delt" else "random",
    )


def build_model(cfg: dict, stream):
    """The config's model for the stream's input shape and classes (the one model factory)."""
    return from_config(cfg["model"], stream.input_shape, stream.n_classes)


def validate(cfg: dict) -> None:
    """Every value checked before any data is loaded or anything compiled."""
    config.check_positive(
        cfg,
        [
            "data.n_tasks",
            "loop.steps_per_task",
            "loop.batch_size",
            "loop.eval_every",
            "loop.eval_per_task",
            "loop.consolidate_samples",
            "seeds",
            "wf_window",
        ],
    )
    config.check_nonnegative(cfg, ["data.max_train_per_task", "data.max_test_per_task"], "all")
    config.check_nonnegative(cfg, ["loop.checkpoint_every"], "off")
    config.check_choice(cfg, "data.dataset", sorted(loaders.LOADERS))
    config.check_choice(cfg, "data.scenario", streams.SCENARIOS)
    config.check_choice(cfg, "data.order", ("random", "delt"))
    config.check_multiple(cfg, "loop.checkpoint_every", "loop.eval_every")
    d = cfg["data"]
    if not 0.0 <= d.get("rehearsal_fraction", 0.0) < 1.0 or d.get("rehearsal_alpha", 1.0) < 0:
        raise ConfigError(
            f"data.rehearsal_fraction={d.get('rehearsal_fraction')} must be in [0, 1) and "
            f"data.rehearsal_alpha={d.get('rehearsal_alpha')} >= 0 (power-law rehearsal; 0: off / uniform)"
        )
    if d.get("rehearsal_fraction", 0.0) and d["scenario"] == "task-incremental":
        raise ConfigError(
            "data.rehearsal_fraction > 0 needs a single-head scenario (class-incremental, permuted, rotated, "
            "scole): a rehearsed example would be masked out of its own label in a task-incremental stream"
        )
    if d.get("order") == "delt" and not (
        0.0 < d.get("delt_select", 1.0) <= 1.0 and d.get("delt_layers", 3) >= 1
    ):
        raise ConfigError(
            f"data.delt_select={d.get('delt_select')} must be in (0, 1] and data.delt_layers={d.get('delt_layers')} >= 1"
        )
    if d["scenario"] == "scole" and d.get("classes_per_task", 2) < 1:
        raise ConfigError(f"data.classes_per_task={d.get('classes_per_task')} must be >= 1")
    check_section(cfg["model"])
    try:
        loop_config(cfg).validate()
    except ValueError as e:
        raise ConfigError(f"loop: {e}") from None


def build_stream(cfg: dict) -> streams.Stream:
    """The config's stream (:func:`jaxcl.data.streams.from_config`; DELT scores with its model)."""
    return streams.from_config(cfg["data"], cfg["seed"], lambda stream: build_model(cfg, stream))


def experiment(cfg: dict, stream, method: str, *, mesh=None) -> tuple[Experiment, dict]:
    """The :class:`Experiment` of one method of the config, and its traced hyperparameters."""
    hp, opts = method_settings(cfg, method)
    exp = Experiment(build_model(cfg, stream), get_method(method, "cl"), loop_config(cfg), mesh=mesh, **opts)
    exp.check(stream)  # shape mismatches are reported here, before any compilation
    return exp, exp.default_hparams(**hp)


def _segments(chunks_per_task: int, every: int | None) -> list[int]:
    """Chunk counts of the calls that make up one task (one call unless checkpointing)."""
    if not every or every >= chunks_per_task:
        return [chunks_per_task]
    n, rest = divmod(chunks_per_task, every)
    return [every] * n + ([rest] if rest else [])


def run_method(
    cfg: dict,
    stream,
    method: str,
    *,
    progress=None,
    ckpt_dir: str | None = None,
    resume: bool = False,
    mesh=None,
) -> dict:
    """All seeds of one method (:func:`jaxcl.batching.over_seeds`); numpy arrays with a leading
    seed axis.

    Without ``ckpt_dir``: the whole stream as one compiled program (:meth:`Experiment.run`). With
    it: a checkpoint at every task end and every ``loop.checkpoint_every`` steps; ``resume``
    continues from the newest good checkpoint and gives the same result as an uninterrupted run.
    """
    exp, hp = experiment(cfg, stream, method, mesh=mesh)
    keys = parallel.place_seeds((seeds_keys(cfg["seed"], cfg["seeds"]),), (0,), mesh)[0]
    T = stream.n_tasks
    # vmap, or lax.map (CPU convs); with a mesh, vmap with the seeds sharded over its seeds axis
    seeds = lambda fn, in_axes: parallel.seeds_map(fn, in_axes, mesh, model=exp.model)
    t0 = time.perf_counter()
    if not ckpt_dir:
        out = jax.jit(seeds(exp.run, (0, None, None)))(keys, stream, hp)
        if not cfg["loop"]["skip_nonfinite"]:  # skipped updates are counted in the notes instead
            check_finite(out["nonfinite_step"], where=f"(method {method})")
        if progress is not None:
            progress.update(T)
        state_params, nonfinite = out["final_params"], out["nonfinite_step"]
        out = {
            "R0": np.asarray(out["R0"]),
            "R": np.asarray(out["R"]),
            "trace": jax.tree.map(np.asarray, out["trace"]),
        }
        elapsed = 0.0
    else:
        out, state, elapsed = _segmented(
            cfg, exp, stream, hp, keys, method, seeds, ckpt_dir, resume, progress, t0
        )
        t0 = time.perf_counter()  # elapsed holds the whole run (and a resumed run's earlier part)
        state_params, nonfinite = state.params, state.nonfinite_step
    trace = out["trace"]
    return {
        "R0": np.asarray(out["R0"]),
        "R": np.asarray(out["R"]),
        "acc_trace": trace["acc"],
        "loss": trace["loss"],
        "grad_norm": trace["grad_norm"],
        "param_norm": trace["param_norm"],
        "seconds": elapsed + time.perf_counter() - t0,
        "hparams": {k: float(v) for k, v in hp.items()},
        "options": exp.options,
        "final_params": state_params,
        "skipped_steps": int(np.sum(np.asarray(nonfinite) >= 0)),
    }


def _segmented(cfg, exp, stream, hp, keys, method, seeds, ckpt_dir, resume, progress, t0):
    """The stream as a schedule of segments cut where checkpoints are written: every
    ``checkpoint_every`` steps of a task, the task's last call with its end (consolidation and
    the accuracy row)."""
    T, E, S = stream.n_tasks, exp.chunks_per_task, cfg["seeds"]
    every = cfg["loop"]["checkpoint_every"]
    sizes = _segments(E, every // cfg["loop"]["eval_every"] if every else None)
    init = jax.jit(seeds(exp.init, (0, None, None)))
    acc0 = jax.jit(seeds(exp.initial_accuracy, (0, None, None)))
    chunk_fns = {
        n: jax.jit(
            seeds(lambda s, st, h, t, n=n: exp.train_chunks(s, st, h, t, n), (0, None, None, None)),
            donate_argnums=0,
        )
        for n in set(sizes)
    }
    end_task = jax.jit(seeds(exp.end_task, (0, None, None, None)), donate_argnums=0)
    state = init(keys, stream, hp)
    shapes = jax.eval_shape(chunk_fns[sizes[0]], state, stream, hp, jnp.int32(0))[1]
    out = {
        "R0": np.asarray(acc0(state, stream, hp)),
        "R": np.zeros((S, T, T), np.float32),
        "trace": {k: np.zeros((S, T, E) + v.shape[2:], np.float32) for k, v in shapes.items()},
    }

    def segment(t, start, n, last):
        def fn(state, out):
            tt = jnp.asarray(t, jnp.int32)
            state, tr = chunk_fns[n](state, stream, hp, tt)
            for k, v in tr.items():
                out["trace"][k][:, t, start : start + n] = np.asarray(v)
            if last:
                state, r_row = end_task(state, stream, hp, tt)
                out["R"][:, t] = np.asarray(r_row)
            return state, out

        return Segment(fn, int(last), f"(method {method}, task {t})")

    schedule = []
    for t in range(T):
        starts = np.cumsum([0, *sizes[:-1]])
        schedule += [
            segment(t, int(a), n, i == len(sizes) - 1) for i, (a, n) in enumerate(zip(starts, sizes))
        ]
    conf = report.to_jsonable({k: v for k, v in cfg.items() if k not in ("methods", "tiny")})
    conf["method"] = method
    state, out, seconds = run_segments(
        schedule,
        state,
        out,
        ckpt_dir=os.path.join(ckpt_dir, method),
        conf=conf,
        resume=resume,
        progress=progress,
        stop_nonfinite=not cfg["loop"]["skip_nonfinite"],
        t0=t0,
    )
    return out, state, seconds


def _columns(cfg):
    return M.COLUMNS + [
        (f"wf{cfg['wf_window']}", f"WF{cfg['wf_window']}", "pct"),
        ("time_s", "time (s)", "seconds"),
    ]


def _per_seed(rows: list[dict]) -> dict:
    return {k: [r[k] for r in rows] for k in rows[0]}


def body(cfg: dict, run: Run) -> Report:
    """Every method of the config, all seeds in one program each; checkpoints (``run.ckpt_dir``)
    at task ends and every ``loop.checkpoint_every`` steps, resumed with ``run.resume``."""
    stream = jax.device_put(build_stream(cfg))
    batching = resolve_mode("auto", build_model(cfg, stream))
    rows, raw = {}, {}
    with run.progress(len(cfg["methods"]) * stream.n_tasks, "task") as bar:
        for m in cfg["methods"]:
            bar.set_postfix_str(f"{m} x {cfg['seeds']} seeds")
            r = run_method(
                cfg, stream, m, progress=bar, ckpt_dir=run.ckpt_dir, resume=run.resume, mesh=run.mesh
            )
            raw[m] = r
            per_seed = _per_seed(M.per_seed(r["R"], r["R0"], r["acc_trace"], cfg["wf_window"]))
            per_seed["time_s"] = [r["seconds"]]
            rows[m] = results.row(
                per_seed,
                hparams=r["hparams"],
                options=r["options"],
                skipped_steps=r["skipped_steps"],
                R_mean=r["R"].mean(0).tolist(),
                R_std=r["R"].std(0).tolist(),
                R_per_seed=r["R"].tolist(),
                R0_per_seed=r["R0"].tolist(),
                acc_trace_mean=r["acc_trace"].mean(0).tolist(),
                acc_trace_std=r["acc_trace"].std(0).tolist(),
                loss_trace_mean=r["loss"].mean(0).tolist(),
                grad_norm_trace_mean=r["grad_norm"].mean(0).tolist(),
                param_norm_trace_mean=r["param_norm"].mean(0).tolist(),
            )
    res = results.make(
        "cl",
        cfg,
        rows,
        _columns(cfg),
        timing={m: r["seconds"] for m, r in raw.items()},
        extra={"seed_batching": batching},
    )
    l, d = cfg["loop"], cfg["data"]
    how = "vmapped" if batching == "vmap" else "in a compiled loop"
    header = (
        f"\n{cfg['name']}: {d['scenario']}, {d['n_tasks']} tasks, {cfg['model']['name']}, {cfg['seeds']} seeds "
        f"({how}), {l['steps_per_task']} steps/task, eval every {l['eval_every']} steps on "
        f"{l['eval_per_task']} test examples/task; accuracies in %, mean ± std\n"
    )
    notes = tuple(
        f"note: {m}: {r['skipped_steps']} seed(s) skipped non-finite updates (loop.skip_nonfinite)"
        for m, r in raw.items()
        if r["skipped_steps"]
    )
    plot_files = plots.task_plots(raw, cfg["name"], cfg["seeds"], l["eval_every"])
    return Report(res, header, notes, plot_files, every=l["eval_every"], memory={"raw": raw})


def sweep_cells(cfg: dict, method: str, run: Run) -> sweep_mod.SweepPlan:
    """Every cell of the grid (one method's traced hyperparameters) x every seed as one program:
    ``over_seeds`` inside ``lax.map`` over cells (:func:`jaxcl.sweep.run_plan`)."""
    stream = jax.device_put(build_stream(cfg))
    exp, base = experiment(cfg, stream, method)
    per_cell = over_seeds(exp.run, (0, None, None), model=exp.model)

    def one_cell(keys, stream, hp):  # what the metrics need; the final params stay on the device
        o = per_cell(keys, stream, hp)
        return {"R": o["R"], "R0": o["R0"], "acc": o["trace"]["acc"], "nonfinite": o["nonfinite_step"]}

    def row(o):
        per_seed = _per_seed(M.per_seed(o["R"], o["R0"], o["acc"], cfg["wf_window"]))
        per_seed["diverged"] = [float((o["nonfinite"] >= 0).sum())]
        return per_seed, {}

    cols = [
        ("acc", "ACC", "pct"),
        ("forgetting", "Forgetting", "pct"),
        ("min_acc", "min-ACC", "pct"),
        ("wc_acc", "WC-ACC", "pct"),
    ]
    return sweep_mod.SweepPlan(
        one_cell,
        (seeds_keys(cfg["seed"], cfg["seeds"]), stream),
        base,
        row,
        cols,
        "acc",
        "ACC",
        diverged="diverged seeds",
        conv_cpu=resolve_mode("auto", exp.model) == "map",
    )


def programs(cfg: dict, mesh) -> list:
    """The compiled calls of a run without checkpoints (``jaxcl compile``): per method, the whole
    stream for every seed (:meth:`Experiment.run` over the seeds) and one training step of every
    seed (:meth:`Experiment.one_step`), on a stream of the config's shapes."""
    from ..compile import Program, abstract, placed, seeds_spec

    stream = streams.from_config(cfg["data"], cfg["seed"], shapes_only=True)
    keys = jax.eval_shape(lambda: seeds_keys(cfg["seed"], cfg["seeds"]))
    keys, st = abstract(keys, mesh, seeds_spec(mesh)), abstract(stream, mesh)
    out = []
    for method in cfg["methods"]:
        exp, hp = experiment(cfg, stream, method, mesh=mesh)
        seeds = lambda fn, exp=exp: parallel.seeds_map(fn, (0, None, None), mesh, model=exp.model)  # noqa: E731
        hp = abstract(hp, mesh)
        state = placed(jax.eval_shape(seeds(exp.init), keys, st, hp), mesh, seeds=True)
        out.append(Program(f"{method}: the stream", jax.jit(seeds(exp.run)), (keys, st, hp)))
        out.append(
            Program(
                f"{method}: one step", jax.jit(seeds(exp.one_step)), (state, st, hp), steps=1, called=False
            )
        )
    return out


STUDY = Study(
    "cl",
    kinds=("cl",),
    defaults=DEFAULTS,
    validate=validate,
    body=body,
    sweep_body=sweep_cells,
    mesh_batches=("loop.batch_size",),
    checkpoint_key="loop.checkpoint",
    programs=programs,
)
run, sweep = STUDY.run, STUDY.sweep
