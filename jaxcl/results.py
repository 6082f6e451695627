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

A committed summary (``summary`` / ``write_summary``, schema ``jaxcl-summary/1``) is the small
part of a run's ``results.json`` that the docs cite: per row and column the mean, std and
per-seed values, the scalars and short lists of each row and of ``extra``, the command, the
commit, the run's seconds and the machine's load average. ``results/studies/<config>.json`` holds
one per study default run; ``tests/test_docs_evidence.py`` checks the docs' tables against them.
"""

from __future__ import annotations

import datetime
import os

import numpy as np

from . import report

SCHEMA = "jaxcl-results/1"
SUMMARY_SCHEMA = "jaxcl-summary/1"
SHORT = 64  # lists up to this long are kept in a summary
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


def _numbers(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _short(v):
    """``v`` if it is a scalar, a string or a short flat list of them; else ``None``."""
    if v is None or isinstance(v, (str, bool)) or _numbers(v):
        return v
    if (
        isinstance(v, (list, tuple))
        and len(v) <= SHORT
        and all(x is None or isinstance(x, (str, bool)) or _numbers(x) for x in v)
    ):
        return list(v)
    return None


def _matrix_row_means(v):
    """Row means of a short 2-D numeric list (an accuracy matrix), else ``None``."""
    if isinstance(v, (list, tuple)) and 0 < len(v) <= SHORT and all(isinstance(r, (list, tuple)) for r in v):
        try:
            a = np.asarray(v, np.float64)
        except (TypeError, ValueError):
            return None
        if a.ndim == 2 and a.shape[1] <= SHORT:
            return a.mean(1).tolist()
    return None


def summary(res: dict, *, command: str = "", seconds: float | None = None, loadavg=None, **meta) -> dict:
    """The committed summary of one run's results object (``results.json``, loaded).

    Per row: ``{key: {"mean", "std", "per_seed"}}`` for every summarised quantity, plus the row's
    scalars and short lists (``SHORT`` entries at most) under ``"info"`` and, for a short 2-D
    entry (an accuracy matrix), its row means as ``<key>_row_means``. ``command``, ``seconds``
    (the run's wall time) and ``loadavg`` (``{"start": [1, 5, 15 min], "end": [...]}``) are what the
    caller measured around the run; other keyword arguments are kept under ``"run"``.
    """
    rows = {}
    for name, r in res["rows"].items():
        per_seed = r.get("per_seed", {})
        cols = {}
        for k, st in r.get("summary", {}).items():
            cols[k] = {"mean": st["mean"], "std": st["std"], "per_seed": list(per_seed.get(k, []))}
        info = {}
        for k, v in r.items():
            if k in ("summary", "per_seed"):
                continue
            short = _short(v)
            if short is not None:
                info[k] = short
            elif (means := _matrix_row_means(v)) is not None:
                info[f"{k}_row_means"] = means
            elif isinstance(v, dict):
                sub = {kk: _short(vv) for kk, vv in v.items() if _short(vv) is not None}
                if sub:
                    info[k] = sub
        rows[name] = {"columns": cols, "info": info}
    seeds = res.get("config", {}).get("seeds")
    if seeds is None:
        seeds = max((len(c["per_seed"]) for r in rows.values() for c in r["columns"].values()), default=1)
    extra = {k: _short(v) for k, v in res.get("extra", {}).items() if _short(v) is not None}
    timing = {k: v for k, v in res.get("timing", {}).items() if _numbers(v)}
    return {
        "schema": SUMMARY_SCHEMA,
        "name": res.get("name"),
        "study": res.get("study"),
        "command": command,
        "git_commit": res.get("git_commit"),
        "created": res.get("created"),
        "seeds": seeds,
        "versions": res.get("versions", {}),
        "device": res.get("device", {}),
        "seconds": seconds,
        "loadavg": loadavg or {},
        "run": meta,
        "timing": timing,
        "columns": res.get("columns", []),
        "rows": rows,
        "extra": extra,
        "table": res.get("table", ""),
    }


def write_summary(path: str, res: dict, **meta) -> str:
    """Write ``summary(res, **meta)`` atomically to ``path`` (a ``.json`` file); returns ``path``."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    return report.write_json(path, summary(res, **meta))
