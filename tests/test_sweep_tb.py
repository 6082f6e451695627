"""Sweeps as one program (chunked or not, the numbers agree) and TensorBoard event files."""

import json
import struct

import numpy as np
import pytest

from jaxcl import cli
from jaxcl.cl_study import CONFIGS, tiny
from jaxcl.sweep import parse_grid, run_sweep


def test_sweep_chunked_equals_unchunked_and_reports_memory(tmp_path):
    cfg = tiny(CONFIGS["split-digits"])
    grid = {"lr": [1e-3, 3e-3], "replay_fraction": [0.0, 0.5]}
    a = run_sweep(cfg, "er", grid, seeds=2, chunk=4, verbose=False)
    b = run_sweep(cfg, "er", grid, seeds=2, chunk=1, out_dir=str(tmp_path), verbose=False)
    assert a["n_cells"] == 4 and b["chunk"] == 1
    for ra, rb in zip(a["cells"], b["cells"]):
        assert ra["cell"] == rb["cell"]
        for x, y in zip(ra["per_seed"], rb["per_seed"]):
            assert x["acc"] == pytest.approx(y["acc"], abs=1e-6)
    acc = {tuple(r["cell"].values()): r["summary"]["acc"]["mean"] for r in a["cells"]}
    assert acc[(3e-3, 0.5)] > acc[(3e-3, 0.0)] + 0.1  # replay matters: the sweep is not a no-op
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["memory"]["process_peak_rss_bytes"] > 0
    assert (tmp_path / "sweep.png").stat().st_size > 5000


def test_sweep_cli_and_bad_grid(tmp_path, capsys):
    assert (
        cli.main(
            [
                "sweep",
                "split-digits",
                "--tiny",
                "--method",
                "ewc",
                "--grid",
                "ewc_lambda=0,1000",
                "--seeds",
                "2",
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    assert "ewc_lambda=1000" in capsys.readouterr().out
    with pytest.raises(ValueError, match="no hyperparameter"):
        run_sweep(tiny(CONFIGS["split-digits"]), "er", {"momentum": [0.9]}, seeds=1, verbose=False)
    with pytest.raises(ValueError, match="expected name=v1,v2"):
        parse_grid(["lr"])


def read_scalars(path):
    from tensorboardX.proto import event_pb2

    data, out, i = open(path, "rb").read(), {}, 0
    while i < len(data):
        (n,) = struct.unpack("<Q", data[i : i + 8])
        ev = event_pb2.Event.FromString(data[i + 12 : i + 12 + n])
        i += 12 + n + 4
        for v in ev.summary.value:
            out.setdefault(v.tag, []).append((ev.step, v.simple_value))
    return out


def test_tensorboard_event_files(tmp_path):
    assert (
        cli.main(
            [
                "run",
                "split-digits",
                "--tiny",
                "--method",
                "er",
                "--tensorboard",
                "--no-checkpoint",
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    files = list((tmp_path / "tensorboard" / "er").glob("events.out.tfevents.*"))
    assert len(files) == 1
    sc = read_scalars(files[0])
    res = json.loads((tmp_path / "results.json").read_text())
    curve = np.asarray(res["methods"]["er"]["acc_trace_mean"])[:, :, 0].ravel()
    assert [s for s, _ in sc["acc/task_0"]][:2] == [5, 10]
    np.testing.assert_allclose([v for _, v in sc["acc/task_0"]], curve, rtol=1e-6)
    assert {"loss", "grad_norm", "param_norm", "acc/task_4"} <= set(sc)
