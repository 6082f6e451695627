"""Language-model training sharded over a mesh: 8 forced host devices (sequences over ``data``)
give the losses and parameters of one device (a subprocess, ~10 s on the 2-core CPU)."""

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).parent / "scripts" / "lm_multidevice.py"


def test_lm_steps_on_one_and_eight_devices_agree():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "TQDM_DISABLE": "1"}
    p = subprocess.run([sys.executable, str(SCRIPT)], env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    r = json.loads(p.stdout.strip().splitlines()[-1])
    assert r["moved"] > 1e-3, r  # the steps did train
    assert r["loss_1"][-1] < r["loss_1"][0], r
    assert max(abs(a - b) for a, b in zip(r["loss_1"], r["loss_8"])) < 1e-5, r
    assert r["grad_norm_maxdiff"] < 1e-5, r
    assert r["params_maxdiff"] < 1e-5, r
    assert r["opt_maxdiff"] < 1e-5, r
    assert r["n_shards"] == 8 and r["shard_rows"] == [2], r  # 16 sequences, 2 per device
    assert r["param_devices"] == 8, r  # parameters replicated on every device
    assert r["all_reduce_in_hlo"], r  # the gradient is summed across the data axis
