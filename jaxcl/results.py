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
They are made after the run from its folder, with what was measured around it::

    res = json.load(open("runs/rft-continual/results.json"))
    write_summary("results/studies/rft-continual.json", res, command="jaxcl run rft-continual --seeds 16",
                  seconds=1685.7, loadavg={"start": [3.61, 3.58, 2.01], "end": [3.45, 3.69, 3.44]},
                  compare=[("rft", "sft", "forgetting")])
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
    if m is None or not np.isfinite(m):  # a column the row does not have (e.g. no stand-alone row ran)
        return "-"
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


def _matrix(v):
    """A short 2-D numeric list (an accuracy matrix) as a ``float64`` array, else ``None``."""
    if not (isinstance(v, (list, tuple)) and 0 < len(v) <= SHORT):
        return None
    if not all(isinstance(r, (list, tuple)) and len(r) <= SHORT for r in v):
        return None
    try:
        a = np.asarray(v, np.float64)
    except (TypeError, ValueError):
        return None
    return a if a.ndim == 2 else None


def _keep(out: dict, k: str, v) -> None:
    """Put ``v`` into ``out`` if it is short: scalars and short lists as they are, a 2-D list of at
    most ``4 * SHORT`` numbers as it is, a larger one (up to ``SHORT`` x ``SHORT``) as its row
    means under ``<k>_row_means``."""
    short = _short(v)
    if short is not None:
        out[k] = short
    elif (a := _matrix(v)) is not None:
        if a.size <= 4 * SHORT:
            out[k] = a.tolist()
        else:
            out[f"{k}_row_means"] = a.mean(1).tolist()
    elif isinstance(v, dict):
        sub = {}
        for kk, vv in v.items():
            _keep(sub, kk, vv)
        if sub:
            out[k] = sub


def interval(values) -> dict:
    """``{"mean", "std", "ci95", "per_seed"}`` of per-seed values: ``std`` over seeds (ddof 0, as
    the tables print), ``ci95`` the half-width of the 95 % interval of the mean (Student's t, ddof 1;
    ``None`` for one seed)."""
    a = np.asarray(values, np.float64).reshape(-1)
    n = a.size
    ci = None
    if n > 1:
        from scipy import stats

        ci = float(stats.t.ppf(0.975, n - 1) * a.std(ddof=1) / np.sqrt(n))
    return {"mean": float(a.mean()), "std": float(a.std()), "ci95": ci, "per_seed": a.tolist()}


def summary(
    res: dict,
    *,
    command: str = "",
    seconds: float | None = None,
    loadavg=None,
    compare: tuple = (),
    **meta,
) -> dict:
    """The committed summary of one run's results object (``results.json``, loaded).

    Per row: ``{key: {"mean", "std", "per_seed"}}`` for every summarised quantity, plus the row's
    scalars, short lists and small matrices under ``"info"`` (see ``_keep``; ``extra`` likewise). ``command``, ``seconds``
    (the run's wall time) and ``loadavg`` (``{"start": [1, 5, 15 min], "end": [...]}``) are what the
    caller measured around the run; ``compare`` lists ``(row_a, row_b, key)``: the per-seed
    difference ``a - b`` of ``key`` (paired: seed i of both rows starts from the same key) with
    its interval goes under ``"comparisons"["a - b"]``. Other keyword arguments are kept under
    ``"run"``.
    """
    rows = {}
    for name, r in res["rows"].items():
        per_seed = r.get("per_seed", {})
        cols = {}
        for k, st in r.get("summary", {}).items():
            cols[k] = interval(per_seed[k]) if k in per_seed else {"mean": st["mean"], "std": st["std"]}
        info = {}
        for k, v in r.items():
            if k not in ("summary", "per_seed"):
                _keep(info, k, v)
        rows[name] = {"columns": cols, "info": info}
    comparisons = {}
    for a, b, key in compare:
        pa, pb = res["rows"][a]["per_seed"][key], res["rows"][b]["per_seed"][key]
        d = np.asarray(pa, np.float64) - np.asarray(pb, np.float64)
        comparisons.setdefault(f"{a} - {b}", {"columns": {}})["columns"][key] = interval(d)
    seeds = res.get("config", {}).get("seeds")
    if seeds is None:
        seeds = max((len(c["per_seed"]) for r in rows.values() for c in r["columns"].values()), default=1)
    extra = {}
    for k, v in res.get("extra", {}).items():
        _keep(extra, k, v)
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
        "comparisons": comparisons,
        "extra": extra,
        "table": res.get("table", ""),
    }


def write_summary(path: str, res: dict, **meta) -> str:
    """Write ``summary(res, **meta)`` atomically to ``path`` (a ``.json`` file); returns ``path``."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    return report.write_json(path, summary(res, **meta))


def summary_table(
    s: dict, keys=None, *, rows=None, section: str = "rows", spread: str = "std", first: str | None = None
) -> str:
    """The Markdown table of a summary (``summary``'s dict, or a committed file loaded) for the
    docs: ``keys`` (default every column), ``rows`` (default all of ``section``: ``"rows"`` or
    ``"comparisons"``), cells ``mean ± std`` or, with ``spread="ci95"``, ``mean ± 95 % half-width``."""
    columns = [c for c in s["columns"] if keys is None or c[0] in keys]
    if keys is not None:
        columns.sort(key=lambda c: list(keys).index(c[0]))
    fmt = {k: f for k, _, f in s["columns"]}
    for k in keys or ():
        if k not in fmt:
            raise KeyError(f"{k!r} is no column of {s.get('name')}")
    out = {}
    for name in rows or s[section]:
        cols = s[section][name]["columns"]
        summ = {
            k: {"mean": c["mean"], "std": c[spread]} for k, c in cols.items() if c.get(spread) is not None
        }
        out[name] = {"summary": summ, "per_seed": {k: c.get("per_seed", [0, 0]) for k, c in cols.items()}}
    first = first or ("row" if section == "rows" else "difference")
    return format_table(out, [list(c) for c in columns], first=first)
