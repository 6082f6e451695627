"""Many devices (8 forced host devices, in a subprocess): same results as one device."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parent / "scripts" / "multidevice.py"


@pytest.fixture(scope="module")
def result():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "TQDM_DISABLE": "1"}
    p = subprocess.run([sys.executable, str(SCRIPT)], env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("method", ["finetune", "er", "ewc", "agem"])
def test_one_and_eight_devices_agree(result, method):
    for mesh, diff in result["methods"][method].items():
        assert diff["params"] < 1e-5, (method, mesh, diff)
        assert diff["R"] < 1e-5, (method, mesh, diff)


def test_replay_buffer_identical_on_every_device(result):
    assert result["buffer_devices"] == 8
    assert result["buffer_identical"]
    assert result["buffer_seen"] == 10 * 16
    assert result["buffer_equals_single_device"]


def test_data_parallel_program_all_reduces(result):
    assert result["all_reduce_in_hlo"]


def test_shard_map_fisher(result):
    assert result["fisher_scale"] > 0
    assert result["fisher_diff"] < 1e-6 * max(1.0, result["fisher_scale"])


def test_mesh_errors_name_the_sizes(result):
    batch_msg, seeds_msg = result["errors"]
    assert "batch size 12" in batch_msg and "8 devices" in batch_msg
    assert "3 seeds" in seeds_msg and "seeds axis of 4" in seeds_msg


@pytest.mark.parametrize("method", ["gu-graddiff", "ssd", "npo"])
def test_unlearning_phases_on_one_and_eight_devices_agree(result, method):
    r = result["unlearn"][method]
    assert r["moved"] > 1e-4, r  # the phase did something
    assert r["diff"] < 1e-5, r


def test_gu_state_holds_history_and_adam_not_a_second_basis(result):
    # rank 2: history 2 floats per parameter, Adam's two moments 2 more; the old state kept the
    # basis too (2 more), i.e. 6
    assert result["gu_state_floats_per_param"] < 4.2, result["gu_state_floats_per_param"]
