"""How much a study's numbers move with the batch size and the device count:
``jaxcl repro CONFIG --vary <key>=v1,v2,... [--devices 1,8] [run flags]``.

The complaint users of unlearning libraries raise most is that results do not reproduce across
batch size and hardware. This command answers it for any study: it runs ``jaxcl run CONFIG``
once per cell of (each value of ``--vary``) x (each device count), every cell with the same
seeds, and reports, per row and per summarised column,

* the paired difference between the largest and the smallest value of the varied key on one
  device (seed i of both cells starts from the same key: a difference beyond its 95 % interval is
  a real dependence on the batch size, not seed noise), and
* the largest per-seed difference between each device count and one device at the same value
  (the study's mesh over forced host devices, ``--mesh auto`` unless given: the same program,
  only the reductions are split and reordered, so this is float rounding, expected ~1e-6).

Device counts are forced host (CPU) devices (``--xla_force_host_platform_device_count``), the
same on every machine; every cell runs on the CPU backend so that the cells compare like with
like. Each cell is a separate process (the device count is fixed when jax starts) writing its
own folder under ``OUT/cells/``; a cell that finished before with the same command is read, not
rerun, so an interrupted check continues where it stopped (``--fresh`` reruns every cell).

Writes ``OUT/results.json`` (rows ``"<row> [<cell>]"``, the cells' rows unchanged; ``extra``:
the differences above and the ``compare`` list for :func:`jaxcl.results.write_summary`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys

import numpy as np

from . import report, results

FORCE = "--xla_force_host_platform_device_count"


@dataclasses.dataclass(frozen=True)
class Cell:
    key: str
    value: str
    devices: int

    @property
    def label(self) -> str:
        return f"{self.key.rsplit('.', 1)[-1]}={self.value}, {self.devices} dev"

    @property
    def slug(self) -> str:
        return re.sub(r"[^\w.=-]+", "_", f"{self.key}={self.value}-dev{self.devices}")


def parse_vary(item: str) -> tuple[str, list[str]]:
    """``"unlearn.batch_size=32,64"`` -> ``("unlearn.batch_size", ["32", "64"])``."""
    key, eq, vals = item.partition("=")
    values = [v.strip() for v in vals.split(",") if v.strip()]
    if not eq or not key.strip() or len(values) < 1:
        raise ValueError(f"--vary {item!r}: expected <key>=v1,v2,... (e.g. unlearn.batch_size=32,64,128)")
    return key.strip(), values


def parse_devices(item: str) -> list[int]:
    """``"1,8"`` -> ``[1, 8]``; one device comes first (the reference of the device comparison)."""
    try:
        devs = sorted({int(d) for d in item.split(",") if d.strip()})
    except ValueError:
        raise ValueError(f"--devices {item!r}: expected device counts, e.g. 1,8") from None
    if not devs or devs[0] != 1:
        raise ValueError(f"--devices {item!r}: include 1 (the reference the other counts are compared to)")
    return devs


def cells(key: str, values: list[str], devices: list[int]) -> list[Cell]:
    return [Cell(key, v, d) for d in devices for v in values]


def cell_env(n_devices: int, env: dict | None = None) -> dict:
    """The environment of a cell's process: ``n_devices`` forced host devices, the CPU backend."""
    env = dict(os.environ if env is None else env)
    flags = [f for f in env.get("XLA_FLAGS", "").split() if not f.startswith(FORCE)]
    env["XLA_FLAGS"] = " ".join([*flags, f"{FORCE}={n_devices}"])
    env["JAX_PLATFORMS"] = "cpu"
    return env


def run_cell(config: str, run_args: list[str], cell: Cell, out: str, mesh: str = "auto") -> dict:
    """``jaxcl run`` for one cell in its own process; its ``results.json``, loaded."""
    cmd = [sys.executable, "-m", "jaxcl", "run", config, *run_args, "--set", f"{cell.key}={cell.value}"]
    cmd += ["--out", out, "--no-checkpoint"]
    if cell.devices > 1:
        cmd += ["--mesh", mesh]
    print(f"\n== {cell.label}: {' '.join(cmd[3:])}", flush=True)
    rc = subprocess.run(cmd, env=cell_env(cell.devices)).returncode
    if rc != 0:
        raise RuntimeError(f"cell {cell.label}: `jaxcl run` exited with status {rc} (its output is above)")
    with open(os.path.join(out, "results.json")) as f:
        return json.load(f)


def _keys(res: dict) -> list[str]:
    """The summarised numeric columns of a study's results (not its timings)."""
    return [k for k, _, fmt in res["columns"] if fmt not in ("seconds",)]


def _per_seed(res: dict, row: str, key: str):
    v = res["rows"].get(row, {}).get("per_seed", {}).get(key)
    return None if v is None else np.asarray(v, np.float64)


def differences(by_cell: dict[Cell, dict]) -> tuple[dict, list]:
    """``({row: {key: {"batch": interval of (last value - first value), "devices": max |diff|}}},
    compare)`` over the cells' results; ``compare``: the ``(row a, row b, key)`` pairs of
    :func:`jaxcl.results.summary`'s paired differences (last - first value on one device, each
    device count - one device at the first value)."""
    cs = list(by_cell)
    one = [c for c in cs if c.devices == 1]
    first, last = one[0], one[-1]
    ref = by_cell[first]
    out, compare = {}, []
    for row in ref["rows"]:
        out[row] = {}
        for key in _keys(ref):
            a = _per_seed(ref, row, key)
            if a is None or not np.all(np.isfinite(a)):
                continue
            entry = {}
            if last != first:
                b = _per_seed(by_cell[last], row, key)
                if b is not None and b.shape == a.shape:
                    entry["batch"] = results.interval(b - a)
                    compare.append((f"{row} [{last.label}]", f"{row} [{first.label}]", key))
            dev = []
            for c in cs:
                if c.devices == 1:
                    continue
                base = by_cell[Cell(c.key, c.value, 1)]
                x, y = _per_seed(by_cell[c], row, key), _per_seed(base, row, key)
                if x is not None and y is not None and x.shape == y.shape:
                    dev.append(float(np.max(np.abs(x - y))))
                    if c.value == first.value:  # the paired shift of the mean (the most devices last)
                        entry["devices_paired"] = results.interval(x - y)
                        compare.append((f"{row} [{c.label}]", f"{row} [{first.label}]", key))
            if dev:
                entry["devices"] = max(dev)
            if entry:
                out[row][key] = entry
    return out, compare


def _pm(iv: dict) -> str:
    return f"{iv['mean']:+.2g}" + ("" if iv["ci95"] is None else f" ± {iv['ci95']:.2g}")


def table(diff: dict, by_cell: dict[Cell, dict]) -> str:
    """Per row and column: the batch dependence (mean ± 95 % of the paired difference) beside the
    seeds' own spread, and the largest device difference."""
    cs = list(by_cell)
    one = [c for c in cs if c.devices == 1]
    ref = by_cell[one[0]]
    label = {k: lab for k, lab, _ in ref["columns"]}
    lines = []
    for row, keys in diff.items():
        for key, e in keys.items():
            spread = ref["rows"][row]["summary"][key]["std"]
            b = e.get("batch")
            lines.append(
                [
                    row,
                    label.get(key, key),
                    "-" if b is None else _pm(b),
                    f"{spread:.3g}",
                    "-" if "devices" not in e else f"{e['devices']:.2g}",
                    "-" if "devices_paired" not in e else _pm(e["devices_paired"]),
                ]
            )
    head = [
        "row",
        "column",
        f"{one[-1].label} - {one[0].label} (paired, 95 %)",
        "seeds' std",
        "max |devices - 1 dev| per seed",
        f"{cs[-1].devices} dev - 1 dev at {one[0].label.split(',')[0]} (paired, 95 %)",
    ]
    return report.table(lines, head)


def run(
    config: str,
    run_args: list[str],
    key: str,
    values: list[str],
    devices: list[int],
    out: str,
    *,
    mesh: str = "auto",
    fresh: bool = False,
    runner=run_cell,
) -> dict:
    """Every cell (its cached ``results.json`` unless ``fresh``), the differences, ``OUT/results.json``."""
    by_cell = {}
    for cell in cells(key, values, devices):
        folder = os.path.join(out, "cells", cell.slug)
        path, stamp = os.path.join(folder, "results.json"), os.path.join(folder, "cell.json")
        what = {"config": config, "run_args": list(run_args), "mesh": mesh if cell.devices > 1 else None}
        if os.path.exists(path) and os.path.exists(stamp) and not fresh:
            with open(stamp) as f:
                same = json.load(f) == what
            if same:  # the same cell finished before (an interrupted check continues)
                with open(path) as f:
                    by_cell[cell] = json.load(f)
                print(f"== {cell.label}: read {path} (--fresh reruns it)")
                continue
        by_cell[cell] = runner(config, run_args, cell, folder, mesh)
        report.write_json(stamp, what)
    diff, compare = differences(by_cell)
    rows = {f"{r} [{c.label}]": row for c, res in by_cell.items() for r, row in res["rows"].items()}
    first = by_cell[next(iter(by_cell))]
    cfg = {
        "name": f"repro-{first.get('name', config)}",
        "config": config,
        "run_args": run_args,
        "vary": {key: values},
        "devices": devices,
        "mesh": mesh,
        "seeds": first.get("config", {}).get("seeds"),
    }
    cols = [c for c in first["columns"] if c[2] != "seconds"]
    res = results.make(
        "repro", cfg, rows, cols, extra={"differences": diff, "compare": compare}, first="row [cell]"
    )
    text = table(diff, by_cell)
    res["table"] = text
    os.makedirs(out, exist_ok=True)
    results.write(out, res)
    print(
        f"\n{cfg['name']}: {len(by_cell)} cells, {cfg['seeds']} seeds each\n\n{text}\n\nwrote {out}/results.json"
    )
    return res
