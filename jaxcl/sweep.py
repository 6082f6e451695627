"""Sweeps: a grid of traced hyperparameters x seeds as one program (``jaxcl sweep CONFIG --grid
<method>.<hparam>=v1,v2 ...``), shared by every runner's ``sweep``.

The grid names keys of one method's section (``er.lr``, ``er.replay_fraction``, ``ssd.alpha``,
``ga.lr``); each must be a traced hyperparameter of the registry (a static option cannot be
vmapped). Every cell and seed run in one compiled program: ``lax.map(..., batch_size=K)`` over
cells vmaps K cells at a time and scans over the groups, so a sweep that would not fit in memory
runs in chunks; K comes from the compiled program's memory analysis and the free memory (or
``--chunk``). The peak memory is reported in results.json.

A study's sweep body returns a :class:`SweepPlan` (one cell's program, its shared arguments, the
method's hyperparameters and how to read one cell's outputs as a row); :func:`run_plan` owns the
rest, the same for every study: the cells stacked, compiled and run with their timings, one row
per cell, the results object, the printed table, results.json and ``sweep.png``.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import resource
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from . import report, results
from .config import ConfigError
from .methods import METHODS


def parse_grid(items: list[str]) -> dict[str, list[float]]:
    """``["er.lr=1e-3,3e-3", ...]`` -> ``{"er.lr": [0.001, 0.003]}``."""
    grid = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--grid {item!r}: expected <method>.<hparam>=v1,v2,...")
        name, vals = item.split("=", 1)
        try:
            values = [float(v) for v in vals.split(",") if v.strip()]
        except ValueError:
            raise ConfigError(f"--grid {item!r}: values must be numbers") from None
        if not values:
            raise ConfigError(f"--grid {item!r}: no values")
        grid[name.strip()] = values
    return grid


def cells_of(grid: dict, runnable) -> tuple[str, list[str], list[tuple]]:
    """Check the grid against the registry and the methods the study can run (``runnable``):
    ``(method, names, cells)``."""
    if not grid:
        raise ConfigError("give at least one --grid <method>.<hparam>=v1,v2,...")
    methods = set()
    for key, values in grid.items():
        if "." not in key:
            raise ConfigError(f"--grid {key}: name the method too, e.g. er.{key} or ssd.{key}")
        m, h = key.split(".", 1)
        if m not in runnable:
            raise ConfigError(
                f"--grid {key}: unknown method {m!r} for this study; valid: {', '.join(runnable)}"
            )
        spec = METHODS[m]
        if h not in spec.hparams:
            raise ConfigError(
                f"--grid {key}: {h!r} is not a traced hyperparameter of {m}; "
                f"sweepable: {', '.join(f'{m}.{k}' for k in spec.hparams)}"
            )
        for v in values:
            spec.hparams[h].check(key, v)
        methods.add(m)
    if len(methods) > 1:
        raise ConfigError(f"a sweep varies one method's hyperparameters; the grid names {sorted(methods)}")
    return (methods.pop(), *grid_cells(grid))


def grid_cells(grid: dict) -> tuple[list[str], list[tuple]]:
    """``(names, cells)``: the grid's keys and every combination of their values."""
    names = list(grid)
    return names, list(itertools.product(*(grid[n] for n in names)))


def stack_cells(base_hp: dict, names: list[str], cells: list[tuple]) -> dict:
    """The method's hyperparameters with a leading axis of cells."""
    short = [n.split(".", 1)[1] for n in names]
    return {
        k: jnp.asarray([dict(zip(short, c)).get(k, float(v)) for c in cells], jnp.float32)
        for k, v in base_hp.items()
    }


def cell_name(names: list[str], cell: tuple) -> str:
    return ", ".join(f"{n}={v:g}" for n, v in zip(names, cell))


def available_memory_bytes() -> int:
    d = jax.devices()[0]
    stats = d.memory_stats() if hasattr(d, "memory_stats") else None
    if stats and "bytes_limit" in stats:
        return int(stats["bytes_limit"] - stats.get("bytes_in_use", 0))
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except Exception:
        return 8 << 30


def program_bytes(compiled) -> int | None:
    try:
        ma = compiled.memory_analysis()
        return int(ma.temp_size_in_bytes + ma.argument_size_in_bytes + ma.output_size_in_bytes)
    except Exception:
        return None


def compile_cells(one_cell, shared: tuple, hp_grid: dict, n_cells: int, chunk: int | None, *, conv_cpu: bool):
    """``one_cell(*shared, hp) -> outputs`` over every cell (``lax.map`` with ``batch_size``);
    returns ``(compiled fn(*shared, hp_grid), chunk, memory report, compile seconds)``."""
    if chunk is not None and chunk <= 0:
        raise ConfigError(f"--chunk {chunk} must be a positive number of cells")
    t0 = time.perf_counter()
    one_hp = jax.tree.map(lambda a: a[0], hp_grid)
    cell_bytes = program_bytes(jax.jit(one_cell).lower(*shared, one_hp).compile())
    if chunk is None and conv_cpu:
        chunk = 1  # vmapping cells would group the convolutions, slow on XLA:CPU (jaxcl.batching)
    if chunk is None:
        budget = int(0.5 * available_memory_bytes())
        chunk = n_cells if not cell_bytes else max(1, min(n_cells, budget // max(cell_bytes, 1)))
    chunk = max(1, min(int(chunk), n_cells))
    fn = jax.jit(lambda *a: jax.lax.map(lambda h: one_cell(*a[:-1], h), a[-1], batch_size=chunk))
    compiled = fn.lower(*shared, hp_grid).compile()
    mem = {"program_bytes_one_cell": cell_bytes, "program_bytes": program_bytes(compiled)}
    return compiled, chunk, mem, time.perf_counter() - t0


@dataclasses.dataclass
class SweepPlan:
    """What a study's sweep body (``sweep_body(cfg, method, run) -> SweepPlan``) returns: one
    cell's program and how to read its outputs; :func:`run_plan` does the rest."""

    one_cell: Callable  # one_cell(*shared, hp) -> outputs of one cell (every seed)
    shared: tuple  # the arguments every cell shares
    hp: dict  # the method's traced hyperparameters; a cell replaces the grid's keys
    row: Callable  # row(outputs of one cell) -> (per-seed values, more entries of the row)
    columns: list  # the table's columns (``time_s`` and those the rows lack are left out)
    key: str  # the column sweep.png shows, and its label
    label: str
    diverged: str = "diverged"  # the label of the rows' ``diverged`` column, added last
    conv_cpu: bool = False  # the model has convolutions (one cell at a time on XLA:CPU)
    host: bool = True  # the outputs are fetched to the host before ``row`` (else kept on device)
    extra: dict = dataclasses.field(default_factory=dict)  # more entries of results' ``extra``
    timing: dict = dataclasses.field(default_factory=dict)  # more timings (the models trained first)
    cfg: dict | None = None  # the config the results record (default: the sweep's)
    subdir: str = ""  # results written to ``<out>/<subdir>`` (a study that sweeps one of its parts)


def run_plan(
    plan: SweepPlan, cfg: dict, method: str, grid: dict, chunk: int | None, out: str | None, verbose: bool
) -> dict:
    """Every cell of ``grid`` x every seed of ``plan`` as one program (``chunk`` cells vmapped at
    a time, from the memory analysis when not given), one row per cell, then :func:`finish`."""
    names, cells = grid_cells(grid)
    hp_grid = stack_cells(plan.hp, names, cells)
    run_cells, chunk, mem, compile_s = compile_cells(
        plan.one_cell, plan.shared, hp_grid, len(cells), chunk, conv_cpu=plan.conv_cpu
    )
    t0 = time.perf_counter()
    o = jax.block_until_ready(run_cells(*plan.shared, hp_grid))
    run_s = time.perf_counter() - t0
    o = jax.device_get(o) if plan.host else o
    rows = {}
    for i, c in enumerate(cells):
        per_seed, more = plan.row(jax.tree.map(lambda a: a[i], o))
        rows[cell_name(names, c)] = results.row(per_seed, cell=dict(zip(names, c)), **more)
    first = next(iter(rows.values()))["summary"]
    cols = [c for c in plan.columns if c[0] in first and c[0] != "time_s"]
    res = results.make(
        "sweep",
        plan.cfg or cfg,
        rows,
        cols + [("diverged", plan.diverged, "float")],
        first="cell",
        timing={"compile": compile_s, "run": run_s, **plan.timing},
        extra={
            "method": method,
            **plan.extra,
            "grid": grid,
            "chunk": chunk,
            "n_cells": len(cells),
            "memory": mem,
        },
    )
    if out and plan.subdir:
        out = os.path.join(out, plan.subdir)
        report.prepare_out_dir(out)
    return finish(res, names, grid, out, verbose, plan.key, plan.label)


def finish(
    res: dict, names: list[str], grid: dict, out: str | None, verbose: bool, key: str, label: str
) -> dict:
    """Peak memory, the printed table, results.json and ``sweep.png``."""
    res["extra"]["memory"]["process_peak_rss_bytes"] = (
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    )
    dev = jax.devices()[0]
    stats = dev.memory_stats() if hasattr(dev, "memory_stats") else None
    res["extra"]["memory"]["device_peak_bytes"] = (stats or {}).get("peak_bytes_in_use")
    if verbose:
        x = res["extra"]
        print(
            f"\n{res['name']} sweep of {x['method']}: {x['n_cells']} cells x {res['config']['seeds']} seeds in one "
            f"program ({x['chunk']} cells at a time); mean ± std over seeds; compile "
            f"{res['timing']['compile']:.1f} s, run {res['timing']['run']:.1f} s\n"
        )
        print(res["table"])
        mb = lambda b: "n/a" if b is None else f"{b / 2**20:.0f} MiB"
        print(
            f"\npeak memory: program {mb(x['memory']['program_bytes'])}, "
            f"process RSS {mb(x['memory']['process_peak_rss_bytes'])}"
        )
    if out:
        path = plot_sweep(
            res["rows"], names, grid, os.path.join(out, "sweep.png"), f"{res['name']}: sweep", key, label
        )
        results.write(out, res, [path])
        if verbose:
            print(f"wrote {out}/results.json, sweep.png")
    return res


def plot_sweep(rows: dict, names, grid, path, title, key="acc", label="ACC"):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    rows = list(rows.values())
    if len(names) == 2:
        a, b = names
        mat = np.array([[r["summary"][key]["mean"] for r in rows if r["cell"][a] == va] for va in grid[a]])
        im = ax.imshow(mat, cmap="viridis")
        for i in range(mat.shape[0]):
            for j in range(mat.shape[1]):
                ax.text(j, i, f"{mat[i, j]:.3g}", ha="center", va="center", color="w", fontsize=8)
        ax.set_xticks(range(len(grid[b])), [f"{v:g}" for v in grid[b]])
        ax.set_yticks(range(len(grid[a])), [f"{v:g}" for v in grid[a]])
        ax.set_xlabel(b)
        ax.set_ylabel(a)
        fig.colorbar(im, label=f"{label} (mean over seeds)")
    else:
        labels = [", ".join(f"{k}={v:g}" for k, v in r["cell"].items()) for r in rows]
        ax.errorbar(
            range(len(rows)),
            [r["summary"][key]["mean"] for r in rows],
            yerr=[r["summary"][key]["std"] for r in rows],
            marker="o",
            capsize=3,
            label=label,
        )
        ax.set_xticks(range(len(rows)), labels, rotation=30, ha="right", fontsize=7)
        ax.set_ylabel(f"{label} (mean ± std over seeds)")
        ax.legend()
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
