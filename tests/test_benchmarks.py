"""The speed benchmarks run at a tiny size and write well-formed JSON lines (no timing checks)."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_conv_cpu_tiny_writes_json_lines(tmp_path):
    out = tmp_path / "conv.jsonl"
    script = os.path.join(ROOT, "benchmarks_speed", "conv_cpu.py")
    proc = subprocess.run(
        [sys.executable, script, "--tiny", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    rows = [json.loads(l) for l in out.read_text().splitlines()]
    assert [r["variant"] for r in rows] == [
        "conv-lax-1seed",
        "conv-canonical-1seed",
        "seeds-vmap",
        "seeds-map",
    ]
    assert [r["seeds"] for r in rows] == [1, 1, 2, 2]
    assert all(r["s_per_step_per_seed"] > 0 and r["width"] == 4 for r in rows)
    assert "speed-up in a scan" in proc.stdout


def _run_all():
    sys.path.insert(0, os.path.join(ROOT, "benchmarks_speed"))
    import run_all

    return run_all


@pytest.mark.parametrize(
    "name,file",
    [
        ("ssd", "ssd_cpu"),
        ("gu_overhead", "gu_overhead_cpu"),
        ("llm_step", "llm_step_cpu"),
        ("er_stream", "er_stream_cpu"),
        ("rft_step", "rft_step_cpu"),
        ("replay_zoo", "replay_zoo_cpu"),
    ],
)
def test_run_all_reads_every_benchmarks_committed_lines(name, file):
    ra = _run_all()
    path = os.path.join(ROOT, "benchmarks_speed", "results", f"{file}.jsonl")
    lines = [json.loads(l) for l in open(path) if l.strip()]
    rows = ra.ADAPTERS[name](lines)
    assert rows and set(ra.BENCHES) == set(ra.ADAPTERS)
    for r in rows:
        assert r["jaxcl_s"] > 0 and r["jaxcl_first_s"] > 0
        if r["peer_s"] is not None:
            assert r["ratio"] == pytest.approx(r["peer_s"] / r["jaxcl_s"])
    assert "| " + rows[0]["workload"] in ra.table(rows)


def test_run_all_tiny_runs_a_benchmark_twice_and_writes_one_table(tmp_path):
    pytest.importorskip("torch")
    out = tmp_path / "all.jsonl"
    proc = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "benchmarks_speed", "run_all.py"),
            "--tiny",
            "--only",
            "er_stream",
            "--second-process",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "matmul peak" in proc.stdout and "| er_stream seeds=1" in proc.stdout
    rows = [json.loads(l) for l in out.read_text().splitlines()]
    assert [r["workload"] for r in rows] == [
        "er_stream seeds=1 steps/task=10",
        "er_stream seeds=2 steps/task=10",
    ]
    for r in rows:  # (this is also the er_stream script's tiny run)
        assert r["matmul_peak_gflops"]["float32"] > 0 and r["sizes"] == "tiny"
        assert {"jax", "torch", "flax"} <= set(r["versions"]) and r["device"]["device_kind"]
        assert r["peer"] == "torch-eager" and r["ratio"] > 0
        assert r["jaxcl_first_s"] > 0 and r["jaxcl_first_warm_s"] > 0  # cold process, then warm cache
