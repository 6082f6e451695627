"""The one results writer: every study (and every sweep) writes ``results.json`` in one schema,
prints one kind of table, and lists its plots.

Schema ``jaxcl-results/1`` (a JSON object):

* ``schema``, ``study`` (the runner: ``cl``, ``unlearn-class``, ``tofu``, or ``sweep``),
  ``name`` (the config's name), ``config`` (the resolved config, every key), ``versions``,
  ``device``, ``git_commit``, ``created`` (UTC, ISO 8601);
* ``columns``: ``[[key, label, format], ...]``, format one of ``pct`` (a fraction shown in %),
  ``float``, ``sci`` or ``seconds``;
* ``rows``: ``{row name (a method, a sweep cell): {"summary": {key: {"mean", "std"}},
  "per_seed": {key: [value per seed]}, ...study-specific entries}}``;
* ``table``: the printed table (Markdown); ``plots``: file names next to results.json;
  ``timing``: seconds (compile, run, per row); ``extra``: study-specific arrays (accuracy
  matrices, traces).
"""

from __future__ import annotations

import datetime
import os

import numpy as np

from . import report

SCHEMA = "jaxcl-results/1"
FORMATS = ("pct", "float", "sci", "seconds")


def summarize(per_seed: dict) -> dict:
    """``{key: [v per seed]}`` -> ``{key: {"mean", "std"}}`` (NaN-free keys only)."""
    out = {}
    for k, v in per_seed.items():
        a = np.asarray(v, np.float64).reshape(-1)
        out[k] = {"mean": float(a.mean()), "std": float(a.std())}
    return out


def row(per_seed: dict, **extra) -> dict:
    """One row: per-seed values, their summary, and any study-specific entries."""
    per_seed = {k: np.asarray(v, np.float64).reshape(-1).tolist() for k, v in per_seed.items()}
    return {"summary": summarize(per_seed), "per_seed": per_seed, **extra}


def _cell(stat: dict, fmt: str, seeds: int) -> str:
    m, s = stat["mean"], stat["std"]
    if fmt == "pct":
        return f"{100 * m:5.1f} ± {100 * s:4.1f}" if seeds > 1 else f"{100 * m:5.1f}"
    if fmt == "float":
        return f"{m:6.3f} ± {s:5.3f}" if seeds > 1 else f"{m:6.3f}"
    if fmt == "sci":
        return f"{m:9.2e}"
    return f"{m:.1f}"


def format_table(rows: dict, columns: list, *, first: str = "method") -> str:
    """A Markdown table: one line per row, ``mean ± std`` over seeds per column."""
    header = [first] + [label for _, label, _ in columns]
    lines = []
    for name, r in rows.items():
        seeds = max((len(v) for v in r.get("per_seed", {}).values()), default=1)
        cells = [_cell(r["summary"][k], fmt, seeds) if k in r["summary"] else "-" for k, _, fmt in columns]
        lines.append([name] + cells)
    return report.table(lines, header)


def make(
    study: str,
    cfg: dict,
    rows: dict,
    columns: list,
    *,
    timing: dict | None = None,
    extra: dict | None = None,
    first: str = "method",
) -> dict:
    """The results object of a study (see the module docstring)."""
    for _, _, fmt in columns:
        if fmt not in FORMATS:
            raise ValueError(f"column format {fmt!r} is not one of {FORMATS}")
    return {
        "schema": SCHEMA,
        "study": study,
        "name": cfg.get("name", study),
        "config": cfg,
        "versions": report.versions(),
        "device": report.device_info(),
        "git_commit": report.git_commit(),
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "columns": [list(c) for c in columns],
        "rows": rows,
        "table": format_table(rows, columns, first=first),
        "plots": [],
        "timing": timing or {},
        "extra": extra or {},
    }


def write(out_dir: str, results: dict, plots: list[str] = ()) -> str:
    """Write ``results.json`` atomically into ``out_dir``; ``plots`` are file names there."""
    results["plots"] = sorted(set(results.get("plots", [])) | {os.path.basename(p) for p in plots})
    return report.write_json(os.path.join(out_dir, "results.json"), results)
