"""Sweeps: a grid of traced hyperparameters x seeds as one program.

``jaxcl sweep split-fashion-mnist --method er --grid lr=1e-3,3e-3 --grid replay_fraction=0.25,0.5 --seeds 10``

Every cell of the grid and every seed run in one compiled program: ``vmap`` over seeds inside
``lax.map`` over cells. ``lax.map(..., batch_size=K)`` vmaps K cells at a time and scans over
the groups, so a sweep that would not fit in memory runs in chunks of K cells; K is chosen from
the compiled program's memory analysis and the memory available (or set with ``--chunk``). The
peak memory (XLA's estimate for the program, and the process's resident peak) is reported in
results.json.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import resource
import time

import jax
import jax.numpy as jnp
import numpy as np

from . import metrics as M
from . import report
from .batching import over_seeds, resolve_mode
from .cl_study import CONFIGS, CLStudyConfig, build_stream, tiny
from .loops import Experiment, seeds_keys
from .methods import get_method
from .models import make_model


def parse_grid(items: list[str]) -> dict[str, list[float]]:
    grid = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--grid {item!r}: expected name=v1,v2,...")
        name, vals = item.split("=", 1)
        try:
            grid[name.strip()] = [float(v) for v in vals.split(",") if v.strip()]
        except ValueError:
            raise ValueError(f"--grid {item!r}: values must be numbers") from None
        if not grid[name.strip()]:
            raise ValueError(f"--grid {item!r}: no values")
    return grid


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


def run_sweep(
    cfg: CLStudyConfig,
    method: str,
    grid: dict[str, list[float]],
    *,
    seeds: int,
    chunk: int | None = None,
    out_dir: str | None = None,
    verbose: bool = True,
) -> dict:
    stream = jax.device_put(build_stream(cfg))
    model = make_model(cfg.model, stream.input_shape, stream.n_classes, **dict(cfg.model_kwargs))
    exp = Experiment(model, get_method(method), cfg.loop, **cfg.method_options(method))
    exp.check(stream)
    base = exp.default_hparams(**cfg.method_hparams(method))
    unknown = set(grid) - set(base)
    if unknown:
        raise ValueError(
            f"method {method!r} has no hyperparameter(s) {sorted(unknown)}; sweepable: {sorted(base)}"
        )
    names = list(grid)
    cells = list(itertools.product(*(grid[n] for n in names)))
    hp_grid = {
        k: jnp.asarray([dict(zip(names, c)).get(k, float(v)) for c in cells], jnp.float32)
        for k, v in base.items()
    }
    keys = seeds_keys(cfg.seed, seeds)
    per_cell = over_seeds(exp.run, (0, None, None), model=exp.model)

    def summarise(out):  # keep what the metrics need, drop the final params
        return {
            "R": out["R"],
            "R0": out["R0"],
            "acc": out["trace"]["acc"],
            "nonfinite": out["nonfinite_step"],
        }

    one_cell = jax.jit(lambda k, s, h: summarise(per_cell(k, s, h)))
    one_hp = jax.tree.map(lambda a: a[0], hp_grid)
    t0 = time.perf_counter()
    compiled_one = one_cell.lower(keys, stream, one_hp).compile()
    cell_bytes = program_bytes(compiled_one)
    if chunk is None and resolve_mode("auto", exp.model) == "map":
        chunk = 1  # vmapping cells would group the convolutions, slow on XLA:CPU (jaxcl.batching)
    if chunk is None:
        budget = int(0.5 * available_memory_bytes())
        chunk = len(cells) if not cell_bytes else max(1, min(len(cells), budget // max(cell_bytes, 1)))
    chunk = max(1, min(int(chunk), len(cells)))
    fn = jax.jit(lambda k, s, hg: jax.lax.map(lambda h: summarise(per_cell(k, s, h)), hg, batch_size=chunk))
    compiled = fn.lower(keys, stream, hp_grid).compile()
    compile_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    out = jax.block_until_ready(compiled(keys, stream, hp_grid))
    run_s = time.perf_counter() - t1
    nf = np.asarray(out["nonfinite"])
    rows, table_rows = [], []
    cols = [("acc", "ACC"), ("forgetting", "Forgetting"), ("min_acc", "min-ACC"), ("wc_acc", "WC-ACC")]
    for i, c in enumerate(cells):
        per_seed = M.per_seed(
            np.asarray(out["R"][i]), np.asarray(out["R0"][i]), np.asarray(out["acc"][i]), cfg.wf_window
        )
        summ = M.summary(per_seed)
        diverged = int((nf[i] >= 0).sum())
        rows.append(
            {"cell": dict(zip(names, c)), "summary": summ, "per_seed": per_seed, "diverged_seeds": diverged}
        )
        table_rows.append(
            [", ".join(f"{n}={v:g}" for n, v in zip(names, c))]
            + [report.fmt(summ[k]["mean"], summ[k]["std"]) for k, _ in cols]
            + [str(diverged)]
        )
    table = report.table(table_rows, ["cell"] + [h for _, h in cols] + ["diverged"])
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    dev = jax.devices()[0]
    dev_peak = (dev.memory_stats() or {}).get("peak_bytes_in_use") if hasattr(dev, "memory_stats") else None
    res = {
        "study": cfg.name,
        "method": method,
        "grid": grid,
        "seeds": seeds,
        "config": dataclasses.asdict(cfg),
        "versions": report.versions(),
        "device": report.device_info(),
        "git_commit": report.git_commit(),
        "cells": rows,
        "table": table,
        "chunk": chunk,
        "n_cells": len(cells),
        "memory": {
            "program_bytes_one_cell": cell_bytes,
            "program_bytes": program_bytes(compiled),
            "device_peak_bytes": dev_peak,
            "process_peak_rss_bytes": peak_rss,
        },
        "seconds": {"compile": compile_s, "run": run_s},
    }
    if verbose:
        print(
            f"\n{cfg.name} sweep of {method}: {len(cells)} cells x {seeds} seeds in one program "
            f"({chunk} cells at a time); accuracies in %, mean ± std over seeds; "
            f"compile {compile_s:.1f} s, run {run_s:.1f} s\n"
        )
        print(table)
        mb = lambda b: "n/a" if b is None else f"{b / 2**20:.0f} MiB"
        print(f"\npeak memory: program {mb(res['memory']['program_bytes'])}, process RSS {mb(peak_rss)}")
    if out_dir:
        os.makedirs(out_dir, exist_ok=True)
        res["plot"] = plot_sweep(
            rows, names, grid, os.path.join(out_dir, "sweep.png"), f"{cfg.name}: {method}"
        )
        report.write_json(os.path.join(out_dir, "results.json"), res)
        if verbose:
            print(f"wrote {out_dir}/results.json, sweep.png")
    return res


def plot_sweep(rows, names, grid, path, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    if len(names) == 2:
        a, b = names
        mat = np.array([[r["summary"]["acc"]["mean"] for r in rows if r["cell"][a] == va] for va in grid[a]])
        im = ax.imshow(mat, cmap="viridis", vmin=0, vmax=1)
        for i in range(mat.shape[0]):
            for j in range(mat.shape[1]):
                ax.text(j, i, f"{100 * mat[i, j]:.1f}", ha="center", va="center", color="w", fontsize=8)
        ax.set_xticks(range(len(grid[b])), [f"{v:g}" for v in grid[b]])
        ax.set_yticks(range(len(grid[a])), [f"{v:g}" for v in grid[a]])
        ax.set_xlabel(b)
        ax.set_ylabel(a)
        fig.colorbar(im, label="ACC (mean over seeds)")
    else:
        labels = [", ".join(f"{k}={v:g}" for k, v in r["cell"].items()) for r in rows]
        for key, lab in (("acc", "ACC"), ("min_acc", "min-ACC"), ("wc_acc", "WC-ACC")):
            ax.errorbar(
                range(len(rows)),
                [r["summary"][key]["mean"] for r in rows],
                yerr=[r["summary"][key]["std"] for r in rows],
                marker="o",
                capsize=3,
                label=lab,
            )
        ax.set_xticks(range(len(rows)), labels, rotation=30, ha="right", fontsize=7)
        ax.set_ylabel("accuracy (mean ± std over seeds)")
        ax.legend()
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv: list[str]) -> int:
    import argparse

    p = argparse.ArgumentParser(
        prog="jaxcl sweep", description="a grid of hyperparameters x seeds as one program"
    )
    p.add_argument("study", choices=sorted(CONFIGS))
    p.add_argument("--method", default="er")
    p.add_argument("--grid", action="append", default=[], help="name=v1,v2,... (repeatable)")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--chunk", type=int, default=None, help="cells vmapped at a time (default: from memory)")
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if not args.grid:
        p.error("give at least one --grid name=v1,v2,...")
    get_method(args.method)
    cfg = CONFIGS[args.study]
    if args.tiny:
        cfg = tiny(cfg)
    out = args.out or os.path.join("runs", f"sweep-{args.study}-{args.method}")
    try:
        grid = parse_grid(args.grid)
    except ValueError as e:
        p.error(str(e))
    run_sweep(cfg, args.method, grid, seeds=args.seeds, chunk=args.chunk, out_dir=out)
    return 0
