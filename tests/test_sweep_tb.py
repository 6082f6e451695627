"""Sweeps as one program (chunked or not, the numbers agree) and TensorBoard event files."""

import json
import struct

import numpy as np
import pytest

from jaxcl import cli, config
from jaxcl.studies import cl
from jaxcl.sweep import parse_grid


def test_sweep_chunked_equals_unchunked_and_reports_memory(tmp_path):
    cfg = config.resolve(config.load("split-digits", tiny=True))
    grid = {"er.lr": [1e-3, 3e-3], "er.replay_fraction": [0.0, 0.5]}
    a = cl.sweep(cfg, grid, chunk=4, verbose=False)
    b = cl.sweep(cfg, grid, chunk=1, out=str(tmp_path), verbose=False)
    assert a["extra"]["n_cells"] == 4 and b["extra"]["chunk"] == 1
    assert list(a["rows"]) == list(b["rows"])
    for name in a["rows"]:
        np.testing.assert_allclose(
            a["rows"][name]["per_seed"]["acc"], b["rows"][name]["per_seed"]["acc"], atol=1e-6
        )
    acc = {name: r["summary"]["acc"]["mean"] for name, r in a["rows"].items()}
    # replay matters: the sweep is not a no-op
    assert acc["er.lr=0.003, er.replay_fraction=0.5"] > acc["er.lr=0.003, er.replay_fraction=0"] + 0.1
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["schema"] == "jaxcl-results/1" and res["study"] == "sweep"
    assert res["extra"]["memory"]["process_peak_rss_bytes"] > 0
    assert (tmp_path / "sweep.png").stat().st_size > 5000


def test_sweep_cli_and_bad_grid(tmp_path, capsys):
    argv = [
        "sweep",
        "split-digits",
        "--tiny",
        "--grid",
        "ewc.ewc_lambda=0,1000",
        "--seeds",
        "2",
        "--out",
        str(tmp_path),
    ]
    assert cli.main(argv) == 0
    assert "ewc.ewc_lambda=1000" in capsys.readouterr().out
    cfg = config.resolve(config.load("split-digits", tiny=True))
    with pytest.raises(ValueError, match="'momentum' is not a traced hyperparameter of er"):
        cl.sweep(cfg, {"er.momentum": [0.9]}, verbose=False)
    with pytest.raises(ValueError, match="name the method too"):
        cl.sweep(cfg, {"lr": [0.1]}, verbose=False)
    with pytest.raises(ValueError, match="expected <method>.<hparam>=v1,v2"):
        parse_grid(["lr"])
    assert cli.main(["sweep", "split-digits", "--tiny", "--grid", "er.lr=-1", "--out", str(tmp_path)]) == 2
    assert "er.lr=-1.0 is out of range" in capsys.readouterr().err


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
    curve = np.asarray(res["rows"]["er"]["acc_trace_mean"])[:, :, 0].ravel()
    assert [s for s, _ in sc["acc/task_0"]][:2] == [5, 10]
    np.testing.assert_allclose([v for _, v in sc["acc/task_0"]], curve, rtol=1e-6)
    assert {"loss", "grad_norm", "param_norm", "acc/task_4"} <= set(sc)
