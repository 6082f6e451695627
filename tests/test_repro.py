"""``jaxcl repro``: the cells, their environment, the paired batch-size difference and the device
difference, computed against numpy / scipy by hand; resume; bad input in one line (exit 2). The
cells' runs are faked (a real cell is a whole ``jaxcl run``); the real command is in the README."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from scipy import stats

from jaxcl import cli, repro

SEEDS = 5


def _fake_results(cell: repro.Cell) -> dict:
    """A study's results: row ``npo``'s ``acc`` depends on the batch size (+0.01 per doubling)
    and, by 1e-7, on the device count; ``time_s`` is a timing, not compared."""
    rng = np.random.default_rng(0)  # the same "seeds" in every cell
    base = 0.5 + 0.02 * rng.standard_normal(SEEDS)
    acc = base + 0.01 * np.log2(int(cell.value) / 32) + (1e-7 if cell.devices > 1 else 0.0)
    per_seed = {"acc": acc.tolist(), "time_s": [1.0]}
    return {
        "name": "fake",
        "config": {"seeds": SEEDS},
        "columns": [["acc", "ACC", "pct"], ["time_s", "time (s)", "seconds"]],
        "rows": {
            "npo": {
                "summary": {
                    k: {"mean": float(np.mean(v)), "std": float(np.std(v))} for k, v in per_seed.items()
                },
                "per_seed": per_seed,
            }
        },
    }


def _runner(calls):
    def run(config, run_args, cell, out, mesh):
        calls.append(cell)
        res = _fake_results(cell)
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "results.json"), "w") as f:
            json.dump(res, f)
        return res

    return run


def test_cells_env_and_parsing():
    assert repro.parse_vary("unlearn.batch_size=32, 64") == ("unlearn.batch_size", ["32", "64"])
    assert repro.parse_devices("8,1") == [1, 8]
    cs = repro.cells("unlearn.batch_size", ["32", "64"], [1, 8])
    assert [(c.value, c.devices) for c in cs] == [("32", 1), ("64", 1), ("32", 8), ("64", 8)]
    assert len({c.slug for c in cs}) == 4
    env = repro.cell_env(8, {"XLA_FLAGS": "--xla_cpu_foo=1 --xla_force_host_platform_device_count=2"})
    assert env["XLA_FLAGS"].split() == ["--xla_cpu_foo=1", "--xla_force_host_platform_device_count=8"]
    assert env["JAX_PLATFORMS"] == "cpu"
    for bad in ("unlearn.batch_size", "=1,2", "k="):
        with pytest.raises(ValueError, match="--vary"):
            repro.parse_vary(bad)
    with pytest.raises(ValueError, match="include 1"):
        repro.parse_devices("2,8")


def test_differences_against_numpy(tmp_path, capsys):
    calls = []
    res = repro.run(
        "fake", [], "unlearn.batch_size", ["32", "128"], [1, 8], str(tmp_path), runner=_runner(calls)
    )
    assert len(calls) == 4
    d = res["extra"]["differences"]["npo"]
    assert set(d) == {"acc"}  # the timing column is not compared
    # 128 vs 32 on one device: +0.02 for every seed (two doublings), a zero-width interval
    a32, a128 = (
        np.asarray(_fake_results(repro.Cell("k", v, 1))["rows"]["npo"]["per_seed"]["acc"])
        for v in ("32", "128")
    )
    diff = a128 - a32
    assert d["acc"]["batch"]["mean"] == pytest.approx(diff.mean(), abs=1e-12)
    assert d["acc"]["batch"]["mean"] == pytest.approx(0.02, abs=1e-9)
    ci = stats.t.ppf(0.975, SEEDS - 1) * diff.std(ddof=1) / np.sqrt(SEEDS)
    assert d["acc"]["batch"]["ci95"] == pytest.approx(ci, abs=1e-12)
    assert d["acc"]["devices"] == pytest.approx(1e-7, rel=1e-3)
    assert ("npo [batch_size=128, 1 dev]", "npo [batch_size=32, 1 dev]", "acc") in res["extra"]["compare"]
    assert ("npo [batch_size=32, 8 dev]", "npo [batch_size=32, 1 dev]", "acc") in res["extra"]["compare"]
    assert set(res["rows"]) == {f"npo [batch_size={v}, {n} dev]" for v in ("32", "128") for n in (1, 8)}
    out = capsys.readouterr().out
    assert "+0.02" in out and "max |devices - 1 dev|" in out
    # the committed summary's paired differences are the same numbers
    from jaxcl import results

    s = results.summary(res, compare=[tuple(c) for c in res["extra"]["compare"]])
    assert s["comparisons"]["npo [batch_size=128, 1 dev] - npo [batch_size=32, 1 dev]"]["columns"]["acc"][
        "mean"
    ] == pytest.approx(0.02, abs=1e-9)
    assert d["acc"]["devices_paired"]["mean"] == pytest.approx(1e-7, rel=1e-3)
    # interrupted and rerun: finished cells are read, not rerun; other flags: every cell reruns
    again = []
    repro.run("fake", [], "unlearn.batch_size", ["32", "128"], [1, 8], str(tmp_path), runner=_runner(again))
    assert again == []
    repro.run(
        "fake",
        ["--seeds", "3"],
        "unlearn.batch_size",
        ["32", "128"],
        [1, 8],
        str(tmp_path),
        runner=_runner(again),
    )
    assert len(again) == 4


def test_cli_refuses_bad_input_in_one_line(capsys):
    assert cli.main(["repro", "unlearn-class", "--tiny", "--vary", "unlearn.batch_size"]) == 2
    assert "--vary" in capsys.readouterr().err
    assert cli.main(["repro", "unlearn-class", "--tiny", "--vary", "unlearn.batch_sise=32,64"]) == 2
    assert "batch_sise" in capsys.readouterr().err
    assert (
        cli.main(["repro", "unlearn-class", "--tiny", "--vary", "unlearn.batch_size=32", "--resume", "x"])
        == 2
    )
    assert "--resume" in capsys.readouterr().err
