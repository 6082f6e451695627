"""The docs' numbers equal the committed results files (issue 19, "claims match the evidence").

Every numeric table in ``README.md``, ``benchmarks_speed/README.md`` and the ``experiments/*.py``
headers is preceded (within a few lines) by a marker naming its source::

    <!-- results: results/studies/rft-continual.json -->
    <!-- results: results/studies/lm-facts.json rows=facts x1,facts x4 cols=gain_peak,gain_final -->
    <!-- results: benchmarks_speed/results/er_stream_cpu_redesign.jsonl lines=3 cols=-,jaxcl.median_s -->
    <!-- results: none: <why these numbers are not from a results file> -->

A study summary (``results/studies/<config>.json``, written by ``jaxcl.results.write_summary``)
maps a table row to a summary row by its first cell (or ``rows=``, in order) and a column to a
summarised key by its header label (or ``cols=``, in order, ``-`` for a column that holds no
result, ``key:ci95`` for ``mean ± the 95 % interval's half-width``); a cell ``m ± s`` must equal
the key's mean and std to the printed digits (``pct`` keys in %); ``section=comparisons`` reads
the summary's paired differences between rows instead of its rows; a pivot table (one row per
method, one column per benchmark) names its columns by row templates, ``fmnist-class-il/*@acc``
(key ``acc`` of summary row ``fmnist-class-il/<the table row's first cell>``), and
``extra.mean_rank.*`` reads a per-row scalar of the summary's ``extra``; ``info.<list>[a:b]*100`` is
the mean of a slice of a row's short list, found by a dotted path (SCoLe's accuracy after tasks
a..b-1; ``info.curves_mean.auc[11:12]``: one evaluation), scaled. A JSON-lines file maps table
row i to line ``lines[i]`` (1-based) and column j to ``cols[j]``: ``-`` or ``+``-joined dotted
paths (``jaxcl.median_s``), each optionally ``:min`` / ``:max`` (of a list) or ``:x<factor>`` (a
unit); the cell's numbers must equal those values in order. A bold ratio (``**1.30x**``) in the
READMEs must equal a ``ratio`` of a committed benchmark line. No jax import: a few seconds.
"""

from __future__ import annotations

import ast
import glob
import json
import math
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MARK = re.compile(r"<!--\s*results:\s*(.*?)\s*-->")
NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?(?:e[-+]?\d+)?(?![\d.])")  # "2.61x", "8.06-10.63"
RATIO = re.compile(r"\*\*(\d+(?:\.\d+)?)x\*\*")
LOOKAHEAD = 6  # lines between a marker and its table


def _docs() -> dict[str, str]:
    """``{relative path: text}`` of the checked docs (a config file: its module docstring)."""
    out = {}
    for rel in ("README.md", "benchmarks_speed/README.md"):
        with open(os.path.join(ROOT, rel)) as f:
            out[rel] = f.read()
    for path in sorted(glob.glob(os.path.join(ROOT, "experiments", "*.py"))):
        with open(path) as f:
            out[os.path.relpath(path, ROOT)] = ast.get_docstring(ast.parse(f.read())) or ""
    return out


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _tables(text: str) -> list[tuple[int, list[str], list[list[str]]]]:
    """``(first line index, header cells, body rows)`` of every pipe table in ``text``."""
    lines, out, i = text.splitlines(), [], 0
    while i < len(lines):
        if (
            lines[i].strip().startswith("|")
            and i + 1 < len(lines)
            and re.match(r"^\s*\|[\s:|-]+\|\s*$", lines[i + 1])
        ):
            start, header, body = i, _cells(lines[i]), []
            i += 2
            while i < len(lines) and lines[i].strip().startswith("|"):
                body.append(_cells(lines[i]))
                i += 1
            out.append((start, header, body))
        else:
            i += 1
    return out


def _marker(lines: list[str], start: int) -> str | None:
    for j in range(start - 1, max(-1, start - 1 - LOOKAHEAD), -1):
        m = MARK.search(lines[j])
        if m:
            return m.group(1)
        if lines[j].strip().startswith("|"):
            return None
    return None


def _parse_marker(spec: str) -> tuple[str, dict]:
    if spec.startswith("none"):
        return "none", {"why": spec[4:].lstrip(":").strip()}
    path, *rest = spec.split(" ", 1)
    opts = {}
    for m in re.finditer(r"(\w+)=(.*?)(?=\s+\w+=|$)", rest[0] if rest else ""):
        opts[m.group(1)] = m.group(2).strip()
    return path, opts


def _numbers(cell: str) -> list[float]:
    return [float(x) for x in NUMBER.findall(cell.replace("−", "-"))]


def _decimals(cell: str) -> list[int]:
    """Decimal places each number of ``cell`` is printed to (``8.70e-02``: 4)."""
    out = []
    for x in NUMBER.findall(cell):
        mant, _, exp = x.partition("e")
        out.append((len(mant.split(".")[1]) if "." in mant else 0) - int(exp or 0))
    return out


def _equal(doc: float, digits: int, value: float) -> bool:
    """``doc`` is ``value`` printed with ``digits`` decimals (either rounding of a tie)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return False
    return abs(doc - value) <= 0.5 * 10.0**-digits + 1e-9 * max(1.0, abs(value))


def _get(obj, path: str):
    path, _, reduce = path.partition(":")
    for part in path.split("."):
        obj = obj[int(part)] if isinstance(obj, list) else obj[part]
    if reduce == "min":
        return min(obj)
    if reduce == "max":
        return max(obj)
    if reduce.startswith("x"):  # a unit: ":x100" (a fraction in %), ":x1000" (s in ms)
        return float(reduce[1:]) * obj
    return obj


def _check_cell(where: str, cell: str, values: list[float]) -> list[str]:
    nums, digs = _numbers(cell), _decimals(cell)
    if len(nums) != len(values):
        return [f"{where}: {cell!r} has {len(nums)} numbers, its source gives {len(values)} ({values})"]
    return [
        f"{where}: {cell!r}: {n} is not the source's {v:.6g}"
        for n, d, v in zip(nums, digs, values)
        if not _equal(n, d, v)
    ]


def _check_study(where, path, opts, header, body) -> list[str]:
    with open(os.path.join(ROOT, path)) as f:
        s = json.load(f)
    label_to = {label: (key, fmt) for key, label, fmt in s["columns"]}
    fmt_of = {key: fmt for key, _, fmt in s["columns"]}
    if "cols" in opts:
        keys = [k.strip() for k in opts["cols"].split(",")]
    else:
        keys = [label_to.get(h, (None,))[0] or f"?{h}" for h in header[1:]]
    if len(keys) != len(header) - 1:
        return [f"{where}: cols= names {len(keys)} keys for {len(header) - 1} columns"]
    names = [n.strip() for n in opts["rows"].split(",")] if "rows" in opts else [r[0] for r in body]
    if len(names) != len(body):
        return [f"{where}: rows= names {len(names)} rows for a table of {len(body)}"]
    section = opts.get("section", "rows")
    errs = []
    pivot = any("*" in k for k in keys)  # a table with one row per method over several summary rows
    for name, cells in zip(names, body):
        if not pivot and name not in s.get(section, {}):
            errs.append(f"{where}: row {name!r} is not in {path} {section} ({', '.join(s.get(section, {}))})")
            continue
        row = s[section].get(name, {}).get("columns", {})
        for key, cell in zip(keys, cells[1:]):
            r = row
            if key.startswith("extra.") and "*" in key:  # "extra.mean_rank.*": a per-row scalar
                v = s.get("extra", {})
                for part in key[len("extra.") :].replace("*", name).split("."):
                    v = v.get(part) if isinstance(v, dict) else None
                if not isinstance(v, (int, float)):
                    errs.append(f"{where}: {path} has no {key.replace('*', name)!r}")
                else:
                    errs += _check_cell(f"{where} {name}/{key}", cell, [float(v)])
                continue
            if "@" in key:  # "fmnist-class-il/*@acc": key acc of the summary row named by the template
                tmpl, _, key = key.partition("@")
                rname = tmpl.replace("*", name)
                if rname not in s.get(section, {}):
                    errs.append(f"{where}: row {rname!r} is not in {path} {section}")
                    continue
                r = s[section][rname]["columns"]
            if key == "-" or not _numbers(cell):  # a text cell ("-", "no decay") holds no claim
                if key == "-" and _numbers(cell):
                    errs.append(f"{where}: {cell!r} in a column with no source key")
                continue
            if key.startswith("?"):
                errs.append(f"{where}: column {key[1:]!r} is no column label of {path}")
                continue
            if key.startswith("info."):  # "info.R_mean_row_means[0:5]*100": the mean of a slice
                m = re.fullmatch(r"info\.([\w.]+)\[(\d+):(\d+)\](?:\*(\d+))?", key)
                v = s[section][name].get("info", {})
                for part in m.group(1).split(".") if m else ["-"]:
                    v = v.get(part) if isinstance(v, dict) else None
                if v is None:
                    errs.append(f"{where}: row {name!r} of {path} has no {key!r}")
                    continue
                part = v[int(m.group(2)) : int(m.group(3))]
                errs += _check_cell(
                    f"{where} {name}/{key}", cell, [float(m.group(4) or 1) * sum(part) / len(part)]
                )
                continue
            key, _, spread = key.partition(":")  # "forgetting:ci95": mean ± the 95 % half-width
            if key not in r:
                errs.append(f"{where}: row {name!r} of {path} has no {key!r}")
                continue
            scale = 100.0 if fmt_of.get(key) == "pct" else 1.0
            sd = r[key].get(spread or "std")
            vals = [scale * r[key]["mean"], float("nan") if sd is None else scale * sd]
            n = len(_numbers(cell))
            errs += _check_cell(f"{where} {name}/{key}", cell, vals[: max(1, min(n, 2))])
    return errs


def _check_jsonl(where, path, opts, header, body) -> list[str]:
    with open(os.path.join(ROOT, path)) as f:
        records = [json.loads(line) for line in f if line.strip()]
    if "lines" not in opts or "cols" not in opts:
        return [f"{where}: a JSON-lines source needs lines= and cols="]
    lines = [int(x) for x in opts["lines"].split(",")]
    cols = [c.strip() for c in opts["cols"].split(",")]
    if len(lines) != len(body) or len(cols) != len(header) - 1:
        return [
            f"{where}: lines=/cols= name {len(lines)}x{len(cols)} cells for a {len(body)}x{len(header) - 1} table"
        ]
    errs = []
    for ln, cells in zip(lines, body):
        rec = records[ln - 1]
        for spec, cell in zip(cols, cells[1:]):
            if spec == "-":
                if _numbers(cell):
                    errs.append(f"{where}: {cell!r} in a column with no source key")
                continue
            vals = [float(_get(rec, p)) for p in spec.split("+")]
            errs += _check_cell(f"{where} line {ln}/{spec}", cell, vals)
    return errs


def _all_tables():
    for rel, text in _docs().items():
        lines = text.splitlines()
        for start, header, body in _tables(text):
            if not any(_numbers(c) for row in body for c in row[1:]):
                continue  # no numbers: nothing to source
            yield rel, lines, start, header, body


def test_docs_have_numeric_tables():
    assert sum(1 for _ in _all_tables()) >= 10  # the parser sees the docs' tables


def test_every_numeric_table_equals_its_results_file():
    errors, checked = [], 0
    for rel, lines, start, header, body in _all_tables():
        where = f"{rel}:{start + 1}"
        spec = _marker(lines, start)
        if spec is None:
            errors.append(f"{where}: a numeric table with no <!-- results: ... --> marker")
            continue
        path, opts = _parse_marker(spec)
        if path == "none":
            if len(opts["why"]) < 10:
                errors.append(f"{where}: 'results: none' needs the reason the numbers have no file")
            continue
        if not os.path.exists(os.path.join(ROOT, path)):
            errors.append(f"{where}: {path} does not exist")
            continue
        check = _check_jsonl if path.endswith(".jsonl") else _check_study
        errors += check(where, path, opts, header, body)
        checked += 1
    assert not errors, "docs disagree with their results files:\n" + "\n".join(errors)
    assert checked >= 5


def _benchmark_ratios() -> list[float]:
    out = []
    for path in glob.glob(os.path.join(ROOT, "benchmarks_speed", "results", "*.jsonl")):
        with open(path) as f:
            for line in f:
                if not line.strip():
                    continue
                for k, v in json.loads(line).items():
                    if "ratio" in k and isinstance(v, (int, float)):
                        out.append(float(v))
    return out


def test_bold_ratios_come_from_results():
    ratios = _benchmark_ratios()
    errors = []
    for rel in ("README.md", "benchmarks_speed/README.md"):
        with open(os.path.join(ROOT, rel)) as f:
            text = f.read()
        for m in RATIO.finditer(text):
            doc, digits = float(m.group(1)), _decimals(m.group(1))[0]
            if not any(_equal(doc, digits, r) for r in ratios):
                line = text.count("\n", 0, m.start()) + 1
                errors.append(f"{rel}:{line}: **{m.group(1)}x** is no ratio in benchmarks_speed/results/")
    assert not errors, "\n".join(errors)


@pytest.mark.parametrize(
    "cell,values,ok",
    [
        ("70.6 ± 7.2", [70.649, 7.21], True),
        ("70.6 ± 7.2", [70.7, 7.2], False),
        ("70.6 ± 7.2", [70.6], False),
        ("-0.451 ± 0.020", [-0.4514, 0.0196], True),
        ("-0.451 ± 0.020", [0.451, 0.020], False),
        ("10.30 s [8.06-10.63]", [10.2954, 8.0577, 10.6338], True),
        ("5.0-6.5", [4.99, 6.55], True),  # a range is two numbers, not 5.0 and -6.5
        ("5.0-6.5", [5.2, 6.5], False),
        ("**1.30x**", [1.2997], True),
        ("**2.61x**", [1.2997], False),
        ("8.70e-02", [0.0870], True),
        ("8.70e-02", [0.0875], False),  # the digits of a mantissa, not of the absolute value
    ],
)
def test_cell_comparison(cell, values, ok):
    """The comparison itself: numbers in order, equal to the printed digits, signs and ranges kept."""
    assert (not _check_cell("t", cell, values)) == ok


def test_config_headers_have_no_unchecked_tables():
    """A header table must be a pipe table (so the check above sees it), not aligned columns."""
    errors = []
    for rel, text in _docs().items():
        if not rel.startswith("experiments/"):
            continue
        for i, line in enumerate(text.splitlines()):
            body = line.strip()
            if not line.startswith("    ") or body.startswith(("|", "<!--", "jaxcl", "python", "--")):
                continue
            if len(_numbers(body)) >= 3:
                errors.append(
                    f"{rel} (docstring line {i + 1}): {body[:60]!r} looks like a table row; make it a pipe table"
                )
    assert not errors, "\n".join(errors)


def _summaries() -> dict[str, dict]:
    out = {}
    for path in sorted(glob.glob(os.path.join(ROOT, "results", "studies", "*.json"))):
        with open(path) as f:
            out[os.path.basename(path)] = json.load(f)
    return out


def test_study_summaries_are_consistent():
    """Each committed summary's means, stds, 95 % intervals and paired differences follow from its
    per-seed values (scipy's t interval as the reference), and it names its command and commit."""
    import numpy as np
    from scipy import stats

    summaries = _summaries()
    assert summaries, "no results/studies/*.json"
    for fname, s in summaries.items():
        assert s["schema"] == "jaxcl-summary/1" and s["command"].startswith("jaxcl ") and s["git_commit"], (
            fname
        )
        assert s["seconds"] > 0 and len(s["loadavg"]["start"]) == 3, fname
        entries = [(n, r) for n, r in s["rows"].items()] + list(s.get("comparisons", {}).items())
        for name, r in entries:
            for key, c in r["columns"].items():
                v = np.asarray(c.get("per_seed", []), np.float64)
                if v.size == 0:
                    continue
                where = f"{fname} {name}/{key}"
                np.testing.assert_allclose(
                    [c["mean"], c["std"]], [v.mean(), v.std()], rtol=1e-9, atol=1e-12, err_msg=where
                )
                if v.size > 1 and v.std() > 0:
                    lo, hi = stats.t.interval(0.95, v.size - 1, loc=v.mean(), scale=stats.sem(v))
                    np.testing.assert_allclose(c["ci95"], (hi - lo) / 2, rtol=1e-9, atol=1e-12, err_msg=where)
        for name, r in s.get("comparisons", {}).items():
            a, b = name.split(" - ")
            for key, c in r["columns"].items():
                d = np.subtract(
                    s["rows"][a]["columns"][key]["per_seed"], s["rows"][b]["columns"][key]["per_seed"]
                )
                np.testing.assert_allclose(c["per_seed"], d, rtol=1e-12, err_msg=f"{fname} {name}/{key}")


def test_pivot_table_reads_each_column_from_its_row(tmp_path):
    """A method x benchmark table: each cell from ``<benchmark>/<method>``; a wrong cell is caught."""
    s = {
        "columns": [["acc", "ACC", "pct"]],
        "rows": {
            "a/er": {"columns": {"acc": {"mean": 0.7404, "std": 0.012}}},
            "b/er": {"columns": {"acc": {"mean": 0.213, "std": 0.011}}},
        },
        "extra": {"mean_rank": {"er": 13.0}},
    }
    path = tmp_path / "s.json"
    path.write_text(json.dumps(s))
    opts = {"cols": "a/*@acc,b/*@acc,extra.mean_rank.*"}
    header = ["method", "A", "B", "mean rank"]
    assert not _check_study("t", str(path), opts, header, [["er", "74.0 ± 1.2", "21.3 ± 1.1", "13.0"]])
    assert _check_study("t", str(path), opts, header, [["er", "21.3 ± 1.1", "74.0 ± 1.2", "13.0"]])
    assert _check_study("t", str(path), opts, header, [["er", "74.0 ± 1.2", "21.3 ± 1.1", "12.0"]])
    assert _check_study("t", str(path), opts, header, [["gem", "74.0 ± 1.2", "21.3 ± 1.1", "13.0"]])
