"""Two JAX processes on localhost (jax.distributed, CPU collectives over gloo) run a small study
as one multi-controller program and agree with a single-process run."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).parent / "scripts" / "multihost.py"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def last_json(text):
    return json.loads(text.strip().splitlines()[-1])


def test_two_processes_agree_with_one():
    port = free_port()
    env = {**os.environ, "TQDM_DISABLE": "1", "XLA_FLAGS": ""}
    procs = [
        subprocess.Popen(
            [sys.executable, str(SCRIPT), str(port), str(i), "2"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outs = []
    for p in procs:
        try:
            o, e = p.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail("the 2-process run hung")
        assert p.returncode == 0, e[-2000:]
        outs.append(last_json(o))
    single = subprocess.run(
        [sys.executable, str(SCRIPT), "0", "0", "1"], env=env, capture_output=True, text=True, timeout=300
    )
    assert single.returncode == 0, single.stderr[-2000:]
    one = last_json(single.stdout)
    assert [o["devices"] for o in outs] == [2, 2] and one["devices"] == 1
    np.testing.assert_allclose(outs[0]["R"], outs[1]["R"], atol=0)
    np.testing.assert_allclose(outs[0]["R"], one["R"], atol=1e-5)
    assert np.asarray(one["R"]).shape == (2, 5, 5)


def test_missing_coordinator_times_out_with_a_clear_error():
    code = (
        "from jaxcl.parallel import initialize_multihost\n"
        f"initialize_multihost('127.0.0.1:{free_port()}', 2, 1, timeout_s=2)"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode != 0
    assert "no coordinator answered" in p.stderr and "Start process 0" in p.stderr
