"""Checkpoints that survive SIGKILL: resume equals an uninterrupted run exactly (CPU); a corrupt
latest checkpoint falls back to the previous one; another config is refused by field."""

import json
import os
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcl.checkpoint import Checkpointer, ConfigMismatchError

ARGS = ["run", "split-digits", "--tiny", "--method", "er", "--method", "ewc", "--checkpoint-every", "10"]


KILLER = os.path.join(os.path.dirname(__file__), "scripts", "kill_after_saves.py")


def jaxcl(args, kill_after_saves=None):
    """The command line in a subprocess; ``kill_after_saves=N``: SIGKILLed after its N-th save."""
    e = {**os.environ, "TQDM_DISABLE": "1"}
    cmd = [KILLER, str(kill_after_saves)] if kill_after_saves else ["-m", "jaxcl.cli"]
    return subprocess.run([sys.executable, *cmd, *args], env=e, capture_output=True, text=True, timeout=600)


def results(path):
    r = json.loads((path / "results.json").read_text())
    return {
        m: (np.asarray(v["R_per_seed"]), np.asarray(v["acc_trace_mean"]), np.asarray(v["loss_trace_mean"]))
        for m, v in r["rows"].items()
    }


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("full")
    p = jaxcl(ARGS + ["--out", str(out)])
    assert p.returncode == 0, p.stderr[-2000:]
    return results(out)


def assert_same(a, b):
    assert a.keys() == b.keys()
    for m in a:
        for x, y in zip(a[m], b[m]):
            np.testing.assert_array_equal(x, y)


def test_sigkill_mid_task_then_resume_is_exact(tmp_path, uninterrupted):
    out = tmp_path / "killed"
    # 8 chunks of 5 steps per task, a checkpoint every 10 steps: save 7 is inside task 1 of ER
    p = jaxcl(ARGS + ["--out", str(out)], kill_after_saves=7)
    assert p.returncode == -signal.SIGKILL
    assert not (out / "results.json").exists()
    p = jaxcl(ARGS + ["--resume", str(out)])
    assert p.returncode == 0, p.stderr[-2000:]
    assert_same(results(out), uninterrupted)


def test_corrupt_latest_checkpoint_falls_back(tmp_path, uninterrupted):
    out = tmp_path / "corrupt"
    p = jaxcl(ARGS + ["--out", str(out)], kill_after_saves=7)
    assert p.returncode == -signal.SIGKILL
    ck = out / "checkpoints" / "er"
    latest = max(int(d) for d in os.listdir(ck) if d.isdigit())
    for root, _, files in os.walk(ck / str(latest) / "state"):
        for f in files:
            with open(os.path.join(root, f), "r+b") as fh:
                fh.truncate(max(0, os.path.getsize(os.path.join(root, f)) // 3))
    p = jaxcl(ARGS + ["--resume", str(out)])
    assert p.returncode == 0, p.stderr[-2000:]
    assert f"checkpoint {ck}/{latest} is truncated or corrupted" in p.stdout
    assert_same(results(out), uninterrupted)
    assert (ck / str(latest - 2)).exists() or len(os.listdir(ck)) >= 2  # nothing earlier was lost


def test_other_config_is_refused_naming_the_field(tmp_path):
    out = tmp_path / "cfg"
    p = jaxcl(ARGS + ["--out", str(out)], kill_after_saves=2)
    assert p.returncode == -signal.SIGKILL
    p = jaxcl(ARGS + ["--resume", str(out), "--lr", "0.5"])
    assert p.returncode != 0
    assert "field 'er.lr'" in p.stderr and "Resume with the same options" in p.stderr
    p = jaxcl(["run", "split-digits", "--tiny", "--resume", str(tmp_path / "nothing")])
    assert p.returncode == 2 and "no such folder" in p.stderr


def test_checkpointer_roundtrip_with_typed_keys(tmp_path):
    c = Checkpointer(str(tmp_path), {"a": 1})
    payload = {"k": jax.random.split(jax.random.key(3), 2), "x": jnp.arange(3.0), "d": {0: jnp.ones(2)}}
    c.save(5, payload, {"task": 1})
    got, meta = c.restore_latest(jax.tree.map(lambda a: a, payload))
    assert meta["task"] == 1 and meta["config"] == {"a": 1}
    np.testing.assert_array_equal(jax.random.key_data(got["k"]), jax.random.key_data(payload["k"]))
    np.testing.assert_array_equal(got["d"][0], np.ones(2))
    with pytest.raises(ConfigMismatchError, match="field 'a' is 1 there and 2 now"):
        Checkpointer(str(tmp_path), {"a": 2}).restore_latest(payload)
