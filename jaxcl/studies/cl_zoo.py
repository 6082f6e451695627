"""The method-zoo runner (``study: cl-zoo``): every registered continual-learning method on
several benchmarks, each benchmark one run of the ``cl`` runner (:mod:`jaxcl.studies.cl`: all seeds
of a method in one program, the full metric table), then one ranked table across benchmarks and a
plot.

Config: the ``cl`` runner's sections plus ``benchmarks`` (names of :data:`BENCHMARKS`, each a set
of ``data`` settings), ``buffer`` (the capacity given to every method with a ``capacity`` option,
so replay methods compare at equal memory) and ``methods`` (default: every registered method that
applies to continual learning, so methods added to the registry join automatically).

Writes ``out/<benchmark>/`` (the ``cl`` runner's results.json and plots per benchmark) and
``out/results.json`` (rows ``<benchmark>/<method>`` with their rank by ACC within the benchmark,
and the mean rank over benchmarks) and ``out/zoo.png`` (ACC per method and benchmark).
"""

from __future__ import annotations

import copy
import dataclasses
import os

import numpy as np

from .. import config, metrics, plots, results
from ..config import ConfigError
from ..driver import Report, Run, Study
from ..methods import METHODS
from . import get_study

BENCHMARKS = {
    "fmnist-class-il": {"dataset": "fashion-mnist", "scenario": "class-incremental", "n_tasks": 5},
    "fmnist-task-il": {"dataset": "fashion-mnist", "scenario": "task-incremental", "n_tasks": 5},
    "mnist1d-class-il": {"dataset": "mnist-1d", "scenario": "class-incremental", "n_tasks": 5},
}

N_CLASSES = 10  # every benchmark above
PER_CLASS_MEMORY = ("gdumb", "icarl")  # methods whose memory needs a slot per class


def all_cl_methods() -> tuple:
    """Every registered method that applies to a continual-learning stream, sorted (not those that
    train LoRA adapters only: a classifier stream trains its model from a random initialisation)."""
    return tuple(sorted(n for n, s in METHODS.items() if s.applies_to("cl") and not s.needs_lora))


CL = get_study("cl")  # every benchmark is one run of the cl study
DEFAULTS = {
    **copy.deepcopy(CL.defaults),
    "methods": all_cl_methods(),
    "benchmarks": tuple(BENCHMARKS),
    "buffer": 500,
}

RANK_COLUMNS = metrics.COLUMNS + [("rank", "rank (ACC)", "seconds"), ("time_s", "time (s)", "seconds")]


def validate(cfg: dict) -> None:
    config.check_each(cfg, "benchmarks", BENCHMARKS, "benchmark")
    if isinstance(cfg["buffer"], bool) or not isinstance(cfg["buffer"], int) or cfg["buffer"] <= 0:
        raise ConfigError(f"buffer={cfg['buffer']!r} must be a positive integer (examples in memory)")
    for m in cfg["methods"]:
        if m in PER_CLASS_MEMORY and cfg["buffer"] < N_CLASSES:
            raise ConfigError(
                f"buffer={cfg['buffer']} is smaller than the {N_CLASSES} classes of the benchmarks: {m} keeps "
                "at least one example per class; raise buffer or drop the method"
            )
    for b in cfg["benchmarks"]:
        CL.validate(sub_config(cfg, b))


def sub_config(cfg: dict, bench: str) -> dict:
    """The ``cl`` runner's config of one benchmark (its data settings, the shared buffer)."""
    sub = {k: copy.deepcopy(v) for k, v in cfg.items() if k not in ("benchmarks", "buffer")}
    sub["study"] = "cl"
    sub["name"] = f"{cfg['name']}/{bench}"
    sub["data"] = {**cfg["data"], **BENCHMARKS[bench]}
    for m in cfg["methods"]:
        if "capacity" in METHODS[m].options:
            sub[m] = {**sub[m], "capacity": cfg["buffer"]}
    return sub


def rank_rows(rows: dict) -> dict:
    """Rank 1 = highest mean ACC (ties share the better rank)."""
    accs = {m: r["summary"]["acc"]["mean"] for m, r in rows.items()}
    return {m: 1 + sum(1 for o in accs.values() if o > a) for m, a in accs.items()}


def body(cfg: dict, run: Run) -> Report:
    """Every benchmark as one run of the ``cl`` study (its folder under ``out``), ranked."""
    rows, per_bench, timing = {}, {}, {}
    for b in cfg["benchmarks"]:
        res = CL.run(
            sub_config(cfg, b),
            os.path.join(run.out, b) if run.out else None,
            resume=run.resume,
            fresh=run.fresh,
            verbose=run.verbose,
            mesh=run.mesh,
        )
        ranks = rank_rows(res["rows"])
        per_bench[b] = {}
        for m, r in sorted(res["rows"].items(), key=lambda kv: ranks[kv[0]]):
            row = copy.deepcopy(r)
            row["summary"]["rank"] = {"mean": float(ranks[m]), "std": 0.0}
            rows[f"{b}/{m}"] = row
            per_bench[b][m] = r["summary"]["acc"]
            timing[f"{b}/{m}"] = res["timing"][m]
    mean_rank = {
        m: float(np.mean([rows[f"{b}/{m}"]["summary"]["rank"]["mean"] for b in cfg["benchmarks"]]))
        for m in cfg["methods"]
    }
    overall = sorted(mean_rank, key=mean_rank.get)
    res = results.make(
        "cl-zoo",
        cfg,
        rows,
        RANK_COLUMNS,
        timing=timing,
        extra={"mean_rank": mean_rank, "overall_order": overall},
        first="benchmark/method",
    )
    return Report(
        res,
        header=f"\n{cfg['name']}: every benchmark, ranked by ACC (mean ± std over {cfg['seeds']} seeds)\n",
        notes=("\nmean rank over benchmarks: " + ", ".join(f"{m} {mean_rank[m]:.1f}" for m in overall),),
        plots=(lambda res, out: plot_zoo(per_bench, overall, os.path.join(out, "zoo.png"), cfg),),
    )


def plot_zoo(per_bench: dict, order: list, path: str, cfg: dict) -> str:
    """Grouped bars: ACC (mean ± std over seeds) per method, one colour per benchmark."""
    n_b = len(per_bench)
    w = 0.8 / max(n_b, 1)
    x = np.arange(len(order))
    with plots.figure(path, (max(6, 0.55 * len(order) * max(1, n_b) / 1.5), 4), dpi=110) as (ax,):
        for i, (b, accs) in enumerate(per_bench.items()):
            mean = [100 * accs[m]["mean"] for m in order]
            std = [100 * accs[m]["std"] for m in order]
            ax.bar(x + (i - (n_b - 1) / 2) * w, mean, w, yerr=std, label=b, capsize=2)
        ax.set_xticks(x, order, rotation=60, ha="right")
        ax.set_ylabel("ACC (%)")
        ax.set_title(f"{cfg['name']}: final average accuracy, {cfg['seeds']} seeds, buffer {cfg['buffer']}")
        ax.legend(fontsize=8)
    return path


def sweep_cells(cfg: dict, method: str, run: Run):
    """A sweep runs on one benchmark: the first of ``benchmarks`` (the ``cl`` study's sweep, its
    results in ``<out>/<benchmark>``)."""
    b = cfg["benchmarks"][0]
    sub = sub_config(cfg, b)
    return dataclasses.replace(CL.sweep_body(sub, method, run), cfg=sub, subdir=b)


def programs(cfg: dict, mesh) -> list:
    """The compiled calls of a run (``jaxcl compile``): every benchmark's ``cl`` programs
    (:func:`jaxcl.studies.cl.programs`: per method the whole stream and one step), named
    ``<benchmark>/<method>: ...``."""
    from . import cl

    out = []
    for b in cfg["benchmarks"]:
        for p in cl.programs(sub_config(cfg, b), mesh):
            out.append(dataclasses.replace(p, name=f"{b}/{p.name}"))
    return out


STUDY = Study(
    "cl-zoo",
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
