"""GRPO on 8 forced host devices (prompts and rollouts sharded over the data axis) gives the
parameters of one device (a subprocess, ~25 s on the 2-core CPU)."""

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).parent / "scripts" / "rft_multidevice.py"


def test_grpo_on_one_and_eight_devices_agree():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "TQDM_DISABLE": "1"}
    p = subprocess.run([sys.executable, str(SCRIPT)], env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    r = json.loads(p.stdout.strip().splitlines()[-1])
    assert r["moved"] > 1e-3  # the iterations did train
    assert r["params_maxdiff"] < 1e-4, r
    assert r["reward_1"] == r["reward_8"]  # the same rollouts
