"""The task-order study (``study: cl-order``): how much a continual-learning result depends on the
order in which the tasks arrive. Every method runs its stream in ``orders`` random task orders x
``seeds`` seeds as ONE program (``vmap`` over orders of ``vmap`` over seeds of
:meth:`jaxcl.loops.Experiment.run`; the order is an argument, the stream's task axis gathered
inside). Rows: the final average accuracy ACC and forgetting (mean over orders and seeds), and
each seed's spread of ACC over the task orders (std and max - min; mean ± std over seeds): a
method whose ranking moves within that spread is not ranked by a single order (Yoon et al., 2020, "Scalable and
Order-robust Continual Learning"; Lin et al., 2022 report order effects of the same size as
method differences).
"""

from __future__ import annotations

import os

import jax
import numpy as np

from .. import config, plots, results  # noqa: F401  (plots selects the Agg backend)
from .. import metrics as M
from ..config import method_settings
from ..data import streams
from ..driver import Report, Run, Segment, Study, run_segments
from ..engine import check_finite
from ..loops import Experiment, LoopConfig, seeds_keys
from ..methods import get_method
from ..models import check_section, from_config, model_config

DEFAULTS = {
    "data": {"dataset": "digits", "scenario": "class-incremental", "n_tasks": 5},
    "model": model_config("mlp", mlp={"hidden": (128,)}),
    "loop": {"steps_per_task": 100, "batch_size": 32, "eval_every": 10, "eval_per_task": 1000},
    "methods": ("finetune", "er"),
    "orders": 8,
    "seeds": 4,
    "seed": 0,
}
COLUMNS = [
    ("acc", "ACC", "pct"),
    ("forgetting", "Forgetting", "pct"),
    ("order_std", "ACC std over orders", "pct"),
    ("order_range", "ACC max - min over orders", "pct"),
]


def validate(cfg: dict) -> None:
    config.check_positive(cfg, ["orders", "seeds", "data.n_tasks"] + [f"loop.{k}" for k in DEFAULTS["loop"]])
    LoopConfig(**cfg["loop"]).validate()
    check_section(cfg["model"])


def orders(cfg: dict) -> np.ndarray:
    """``(orders, T)`` task orders: the identity first, then random permutations from ``seed``."""
    T, rng = cfg["data"]["n_tasks"], np.random.default_rng(cfg["seed"])
    return np.stack([np.arange(T)] + [rng.permutation(T) for _ in range(cfg["orders"] - 1)])


def experiment(cfg: dict, model, stream, name: str) -> tuple[Experiment, dict]:
    """Method ``name``'s :class:`Experiment` (checked against the stream) and its traced
    hyperparameters."""
    hp, opts = method_settings(cfg, name)
    exp = Experiment(model, get_method(name, "cl"), LoopConfig(**cfg["loop"]), **opts)
    exp.check(stream)
    return exp, exp.default_hparams(**hp)


def over_orders(fn):
    """``fn(key, stream, hp)`` for every (order, seed): ``(keys (S,), perms (O, T), stream, hp)``,
    the stream's task axis gathered by each order inside (one program)."""
    one = lambda k, perm, stream, h: fn(k, jax.tree.map(lambda a: a[perm], stream), h)  # noqa: E731
    return jax.vmap(jax.vmap(one, (0, None, None, None)), (None, 0, None, None))


def body(cfg: dict, run: Run) -> Report:
    """Every method, every order x seed in one program; a checkpoint-free segment per method."""
    d = {**cfg["data"], "max_train_per_task": 0, "max_test_per_task": 0}
    stream = jax.device_put(streams.from_config(d, cfg["seed"]))
    model = from_config(cfg["model"], stream.input_shape, stream.n_classes)
    perms, keys = orders(cfg), seeds_keys(cfg["seed"], cfg["seeds"])

    def method(name: str) -> Segment:
        exp, hp = experiment(cfg, model, stream, name)
        program = jax.jit(over_orders(exp.run))

        def fn(state, out):
            o = program(keys, perms, stream, hp)
            R, R0 = np.asarray(o["R"]), np.asarray(o["R0"])  # (orders, seeds, T, T), (orders, seeds, T)
            out[name] = {"R": R, "acc_trace": np.asarray(o["trace"]["acc"]), "R0": R0}
            check_finite(o["nonfinite_step"], where=f"(method {name})")
            return None, out

        return Segment(fn, 1, f"(method {name})")

    with run.progress(len(cfg["methods"]), "method") as bar:
        _, raw, seconds = run_segments([method(m) for m in cfg["methods"]], None, {}, progress=bar)
    rows = {}
    for name, r in raw.items():
        per = [M.per_seed(r["R"][o], r["R0"][o], r["acc_trace"][o]) for o in range(len(perms))]
        acc = np.array([[s["acc"] for s in p] for p in per])  # (orders, seeds)
        rows[name] = results.row(
            {
                "acc": acc.ravel().tolist(),
                "forgetting": [s["forgetting"] for p in per for s in p],
                "order_std": acc.std(0).tolist(),  # per seed: the spread its task orders cause
                "order_range": (acc.max(0) - acc.min(0)).tolist(),
            },
            acc_per_order=acc.mean(1).tolist(),
        )
    res = results.make(
        "cl-order", cfg, rows, COLUMNS, timing={"total": seconds}, extra={"orders": perms.tolist()}
    )
    header = (
        f"\n{cfg['name']}: {d['scenario']}, {d['n_tasks']} tasks in {cfg['orders']} orders x {cfg['seeds']} seeds "
        "(one program per method); accuracies in %, mean ± std over orders x seeds (spreads: over seeds)\n"
    )
    return Report(res, header, plots=(lambda res, out: plot_orders(res, os.path.join(out, "orders.png")),))


def programs(cfg: dict, mesh) -> list:
    """The compiled calls of a run (``jaxcl compile``), on a stream of the data set's shapes: per
    method every order x seed through the stream (one program) and one training step of each
    (the run replicates them: on a mesh, every argument is replicated over it)."""
    from .. import compile as C

    d = {**cfg["data"], "max_train_per_task": 0, "max_test_per_task": 0}
    stream = streams.from_config(d, cfg["seed"], shapes_only=True)
    model = from_config(cfg["model"], stream.input_shape, stream.n_classes)
    perms, st = C.abstract(orders(cfg), mesh), C.abstract(stream, mesh)
    keys = C.abstract(jax.eval_shape(lambda: seeds_keys(cfg["seed"], cfg["seeds"])), mesh)
    out = []
    for name in cfg["methods"]:
        exp, hp = experiment(cfg, model, stream, name)
        hp = C.abstract(hp, mesh)
        state = C.abstract(jax.eval_shape(over_orders(exp.init), keys, perms, st, hp), mesh)
        step = jax.jit(jax.vmap(jax.vmap(exp.one_step, (0, None, None)), (0, None, None)))
        out += [
            C.Program(f"{name}: every order x seed", jax.jit(over_orders(exp.run)), (keys, perms, st, hp)),
            C.Program(f"{name}: one step", step, (state, st, hp), steps=1, called=False),
        ]
    return out


def plot_orders(res: dict, path: str) -> str:
    """Each method's mean ACC in every task order (dots) and over orders (bar)."""
    with plots.figure(path, (1.6 + 1.2 * len(res["rows"]), 3.6), dpi=110) as (ax,):
        for i, r in enumerate(res["rows"].values()):
            acc = 100 * np.asarray(r["acc_per_order"])
            ax.bar(i, acc.mean(), color="0.85")
            ax.plot(np.full(len(acc), i), acc, "o", ms=4)
        ax.set_xticks(range(len(res["rows"])), list(res["rows"]))
        ax.set_ylabel("ACC (%), one dot per task order")
        ax.set_title(f"{res['name']}: {len(res['extra']['orders'])} task orders", fontsize=9)
    return path


STUDY = Study("cl-order", kinds=("cl",), defaults=DEFAULTS, validate=validate, body=body, programs=programs)
run, sweep = STUDY.run, STUDY.sweep
