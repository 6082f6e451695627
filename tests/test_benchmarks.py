"""The speed benchmarks run at a tiny size and write well-formed JSON lines (no timing checks)."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tiny(tmp_path, script, *argv):
    """``(json lines, stdout)`` of ``benchmarks_speed/<script> *argv --out <tmp file>``; its exit
    status 0 (else its output's tail)."""
    out = tmp_path / "rows.jsonl"
    proc = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks_speed", script), *argv, "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return [json.loads(l) for l in out.read_text().splitlines()], proc.stdout


def test_conv_cpu_tiny_writes_json_lines(tmp_path):
    rows, stdout = _tiny(tmp_path, "conv_cpu.py", "--tiny")
    assert [r["variant"] for r in rows] == [
        "conv-lax-1seed",
        "conv-canonical-1seed",
        "seeds-vmap",
        "seeds-map",
    ]
    assert [r["seeds"] for r in rows] == [1, 1, 2, 2]
    assert all(r["s_per_step_per_seed"] > 0 and r["width"] == 4 and r["batch"] == 8 for r in rows)
    assert "speed-up in a scan" in stdout


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
        ("lora_step", "lora_step_cpu"),
        ("shadow_models", "shadow_models_cpu"),
    ],
)
def test_run_all_reads_every_benchmarks_committed_lines(name, file):
    ra = _run_all()
    path = os.path.join(ROOT, "benchmarks_speed", "results", f"{file}.jsonl")
    lines = [json.loads(l) for l in open(path) if l.strip()]
    rows = ra.ADAPTERS[name](lines)
    assert rows and set(ra.BENCHES) == set(ra.ADAPTERS)
    for r in rows:
        assert r["jaxcl_s"] > 0 and r["jaxcl_first_s"] > 0 and r["source"] == "measured"
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


def test_run_all_device_filter_runs_peers_only_where_they_can_use_the_device():
    ra = _run_all()
    on = lambda device, cuda: {n: m for n, m, _ in ra.plan(device, torch_cuda=cuda)}
    assert set(on("cpu", False).values()) == {"cpu"} and on("cpu", True) == on("cpu", False)
    assert set(on("tpu", True).values()) == {"none"}  # TPU: jaxcl rows only
    assert set(on("gpu", False).values()) == {"none"}  # no CUDA for torch: no host-sized peer
    gpu = on("gpu", True)
    assert gpu == {
        "er_stream": "cuda",
        "replay_zoo": "none",  # its PyTorch side has no CUDA version
        "ssd": "cuda",
        "gu_overhead": "cuda",
        "llm_step": "cuda",
        "lora_step": "cuda",
        "rft_step": "cuda",
        "shadow_models": "cuda",
    }
    assert ra.peer_mode("replay_zoo", "gpu", True, peer_on_cpu=True) == "cpu"
    argv = {n: a for n, _, a in ra.plan("gpu", torch_cuda=True)}
    assert (
        argv["er_stream"][-3:] == ["--torch-device", "cuda", "--compile"] and "--compile" in argv["llm_step"]
    )
    for n, _, a in ra.plan("tpu"):  # every peer switched off by the script's own option
        assert ra.PEER_ARGS[n]["none"][0] in a, n
    for n, _, a in ra.plan("cpu"):
        assert not {"--no-torch", "--no-trl", "--torch-device"} & set(a), n


@pytest.mark.parametrize(
    "name", ["ssd", "gu_overhead", "replay_zoo", "llm_step", "lora_step", "shadow_models"]
)
def test_every_peer_option_run_all_passes_exists_in_the_script(name):
    src = open(os.path.join(ROOT, "benchmarks_speed", f"{name}.py")).read()
    src += open(os.path.join(ROOT, "benchmarks_speed", "_unlearn_common.py")).read()
    for opts in (o for o in _run_all().PEER_ARGS[name].values() if o):
        for o in (o for o in opts if o.startswith("--")):
            assert f'"{o}"' in src, (name, o)


def test_run_all_budget_rule_sizes_from_the_row_budget():
    ra = _run_all()
    # pilot: 10 s wall, of which 2 calls of 1 s at k0 = 10; 3 repeats -> 0.4 s per unit of the knob
    size = lambda b, **kw: ra.size_for_budget(b, 10.0, 1.0, 10, 10_000, repeats=3, **kw)
    left = ra.SAFETY * (100.0 - 10.0) - 8.0
    assert size(100.0) == int(left / 0.4)
    assert size(200.0) > size(100.0) > size(50.0)  # more budget, more work
    assert size(200.0, processes=2) < size(200.0)  # a second process halves the share
    assert size(10**7) == 10_000  # clipped at k_max
    assert size(30.0) is None  # even k0 does not fit: the row fails, never overruns
    # predicted cost of the chosen size fits the budget
    k = size(300.0)
    assert 8.0 + 10.0 + (3 + 1) * 1.0 * k / 10 <= 300.0
    assert ra.set_knob(["--seeds", "1", "--steps", "4"], "--steps", 9) == ["--seeds", "1", "--steps", "9"]
    assert ra.set_knob(["--seeds", "1"], "--steps", 9)[-2:] == ["--steps", "9"]


def test_run_all_exits_nonzero_and_names_a_row_that_fails(tmp_path, monkeypatch, capsys):
    ra = _run_all()
    real = ra.run_one
    committed = os.path.join(ROOT, "benchmarks_speed", "results", "ssd_cpu.jsonl")
    good = [json.loads(l) for l in open(committed) if l.strip()][:2]  # a row that succeeds, instantly

    def run_one(name, argv, timeout, cache_dir):
        return (good, None, 0.1) if name == "ssd" else real(name, argv, timeout, cache_dir)

    monkeypatch.setattr(ra, "run_one", run_one)
    monkeypatch.setenv(ra.FAIL_ENV, "gu_overhead")  # the real script, given an unknown option
    out = tmp_path / "all.jsonl"
    rc = ra.main(["--tiny", "--only", "ssd", "gu_overhead", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 1  # one row succeeded, one failed: the run fails
    lines = [l for l in err.splitlines() if l.startswith("FAILED")]
    assert len(lines) == 1 and lines[0].startswith("FAILED gu_overhead: exit 2")
    assert "--fail-on-purpose" in lines[0]
    rows = [json.loads(l) for l in out.read_text().splitlines()]
    assert [bool(r.get("error")) for r in rows] == [False, True] and rows[0]["source"] == "measured"
    monkeypatch.delenv(ra.FAIL_ENV)
    assert ra.main(["--tiny", "--only", "ssd", "--out", str(out)]) == 0


def test_run_all_compiler_estimates_are_rows_never_measurements(tmp_path):
    ra = _run_all()
    r = ra.estimate_row(
        "er_stream", target="tpu-v5e-8", memory_per_chip_bytes=2**26, hbm_bytes=16 * 2**30, step_s=1e-3
    )
    assert r["source"] == "compiler estimate" and r["jaxcl_s"] is None and r["ratio"] is None
    assert "compiler estimate, not measured" in ra.table([r]) and ra.failures([r]) == []
    bad = tmp_path / "est.jsonl"
    bad.write_text(json.dumps({"workload": "x", "target": "tpu-v5e-8"}) + "\n")
    with pytest.raises(Exception, match="line 1: missing memory_per_chip_bytes"):
        ra.read_estimates(str(bad))


def test_run_all_sizes_a_benchmark_from_its_pilot(monkeypatch):
    ra = _run_all()
    committed = os.path.join(ROOT, "benchmarks_speed", "results", "ssd_cpu.jsonl")
    lines = [json.loads(l) for l in open(committed) if l.strip()][:2]
    calls = []

    def run_one(name, argv, timeout, cache_dir):
        calls.append((argv, timeout))
        return lines, None, 10.0

    monkeypatch.setattr(ra, "run_one", run_one)
    rows = ra.run_bench("ssd", ["--repeats", "2"], 200.0, "/tmp", tiny=False, second_process=False)
    (pilot, p_timeout), (real, _) = calls
    assert pilot[-4:] == ["--repeats", "1", "--n-train", "256"] and p_timeout == 100.0
    c0 = ra.call_seconds(ra.ADAPTERS["ssd"](lines), "ssd", 256)
    k = ra.size_for_budget(200.0, 10.0, c0, 256, 20000, repeats=2)
    assert real == ["--repeats", "2", "--n-train", str(k)] and rows[0]["argv"] == real
    assert ra.run_bench("ssd", ["--repeats", "2"], 12.0, "/tmp", tiny=False, second_process=False)[0][
        "error"
    ].startswith("row budget 12 s too small")


def test_llm_step_float32_and_bf16_sides_are_paired_within_their_dtype():
    ra = _run_all()
    line = lambda side, dt, s: {"workload": "llm_train_step", "side": side, "dtype": dt, "median_s": s}
    lines = [
        line("jaxcl", "float32", 2.0),
        line("torch-eager", "float32", 3.0),
        line("jaxcl-bf16", "bfloat16", 1.0),
        line("torch-eager-bf16", "bfloat16", 4.0),
    ]
    rows = {r["workload"]: r for r in ra.ADAPTERS["llm_step"](lines)}
    assert set(rows) == {"llm_train_step", "llm_train_step [jaxcl-bf16]"}
    assert rows["llm_train_step"]["peer"] == "torch-eager" and rows["llm_train_step"]["ratio"] == 1.5
    bf = rows["llm_train_step [jaxcl-bf16]"]
    assert bf["peer"] == "torch-eager-bf16" and bf["ratio"] == 4.0


def test_llm_step_tiny_writes_float32_and_bf16_sides_in_one_process(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    argv = ["--tiny", "--dtype", "float32", "bfloat16", "--no-generate", "--no-variants"]
    rows = {r["side"]: r for r in _tiny(tmp_path, "llm_step.py", *argv)[0]}
    assert list(rows) == ["jaxcl", "torch-eager", "jaxcl-bf16", "torch-eager-bf16"]
    assert [r["dtype"] for r in rows.values()] == ["float32"] * 2 + ["bfloat16"] * 2
    for r in rows.values():
        assert r["tokens_per_s"] > 0 and len(r["loadavg_1min"]) == 2
        assert r["cpu_matmul_peak_gflops"]["float32"] > 0 and r["cpu_matmul_peak_gflops"]["bfloat16"] > 0
    assert rows["jaxcl-bf16"]["ratio_jaxcl_over_this"] == 1.0 and "ratio_over_float32" in rows["jaxcl-bf16"]
    assert "ratio_over_float32" not in rows["jaxcl"]
    # same weights and tokens: the sides agree within a dtype; bf16 is near float32, not equal to it
    loss = {k: r["loss_after_first_call"] for k, r in rows.items()}
    assert loss["jaxcl"] == pytest.approx(loss["torch-eager"], abs=1e-3)
    assert loss["jaxcl-bf16"] == pytest.approx(loss["torch-eager-bf16"], abs=0.05)
    assert 0 < abs(loss["jaxcl-bf16"] - loss["jaxcl"]) < 0.05


def test_lora_step_tiny_writes_four_sides_that_start_at_the_same_loss(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    pytest.importorskip("peft")
    lines = _tiny(tmp_path, "lora_step.py", "--tiny")[0]
    rows = {r["side"]: r for r in lines}
    assert list(rows) == ["jaxcl-lora", "jaxcl-full", "torch-peft-lora", "torch-full"]
    for r in rows.values():
        assert r["steps_per_s"] > 0 and r["tokens_per_s"] > 0 and r["first_call_s"] > 0
        assert len(r["loadavg_1min"]) == 2 and r["git_commit"] and r["device"]["device_kind"]
        assert {"jax", "torch", "peft"} <= set(r["versions"])
        assert r["memory"]["optimizer_state_bytes"] > 0 and r["memory"]["trainable_params"] > 0
    # B = 0 on both LoRA sides: every side's first step is the base model's loss on the same batch
    first = [r["first_loss"] for r in rows.values()]
    assert max(first) - min(first) < 1e-4, first
    # the two LoRA sides train the same adapters (jaxcl's A copied into PEFT) on the same targets
    lo, peft_lo = rows["jaxcl-lora"], rows["torch-peft-lora"]
    assert lo["loss_after_first_call"] == pytest.approx(peft_lo["loss_after_first_call"], abs=1e-4)
    assert lo["lora_targets"] == peft_lo["lora_targets"] and len(lo["lora_targets"]) == 7
    assert lo["memory"]["trainable_params"] == peft_lo["memory"]["trainable_params"]
    assert lo["memory"]["trainable_params"] < rows["jaxcl-full"]["memory"]["trainable_params"]
    assert (
        rows["jaxcl-full"]["memory"]["trainable_params"] == rows["torch-full"]["memory"]["trainable_params"]
    )
    assert lo["memory"]["xla_memory_analysis_bytes"]["temp_argument_output"] > 0
    assert peft_lo["ratio_peer_over_jaxcl"] == pytest.approx(peft_lo["median_s"] / lo["median_s"])
    assert rows["torch-full"]["ratio_peer_over_jaxcl"] == pytest.approx(
        rows["torch-full"]["median_s"] / rows["jaxcl-full"]["median_s"]
    )
    # run_all pairs each jaxcl side with the peer of its own mode
    sys.path.insert(0, os.path.join(ROOT, "benchmarks_speed"))
    import run_all

    pairs = {r["workload"]: r["peer"] for r in run_all.ADAPTERS["lora_step"](lines)}
    assert pairs == {
        "llm_train_lora [jaxcl-lora]": "torch-peft-lora",
        "llm_train_full [jaxcl-full]": "torch-full",
    }


def test_shadow_models_tiny_vmapped_seeds_are_the_sequential_models(tmp_path):
    pytest.importorskip("torch")
    lines, stdout = _tiny(tmp_path, "shadow_models.py", "--tiny")
    rows = {r["side"]: r for r in lines}
    assert list(rows) == ["jaxcl-vmapped", "jaxcl-sequential", "torch-sequential"]
    for r in rows.values():
        assert r["workload"] == "shadow_models" and r["model"] == "mlp-128-64" and r["n_train"] == 1000
        assert (r["seeds"], r["steps"], r["batch"]) == (4, 20, 64)
        assert r["first_call_s"] > 0 and r["min_s"] <= r["median_s"] <= r["max_s"]
        assert r["models_per_minute"] == pytest.approx(r["seeds"] / r["median_s"] * 60)
        assert r["ratio"] == pytest.approx(r["median_s"] / rows["jaxcl-vmapped"]["median_s"])
        assert len(r["loadavg_1min"]) == 2 and r["git_commit"] and r["device"]["device_kind"]
        assert {"jax", "torch"} <= set(r["versions"]) and 0 < r["test_acc_mean"] <= 1
    assert rows["jaxcl-vmapped"]["seed_batching"] == "vmap" and rows["jaxcl-vmapped"]["ratio"] == 1.0
    assert rows["jaxcl-vmapped"]["flops"] > 0 and rows["torch-sequential"]["check"] is None
    # the one vmapped program trains the same models as S one-seed calls: seed i against seed i
    check = rows["jaxcl-vmapped"]["check"]
    assert check == rows["jaxcl-sequential"]["check"] and check["same_models"]
    assert check["max_abs_diff_train_loss"] <= 1e-4 and 0 < check["tol_test_acc"] < 0.01  # one example
    assert check["max_abs_diff_test_acc"] <= check["tol_test_acc"]
    assert rows["jaxcl-vmapped"]["train_loss_mean"] == pytest.approx(
        rows["jaxcl-sequential"]["train_loss_mean"], abs=1e-4
    )
    assert "same models (vmapped seed i vs sequential seed i)" in stdout
    # run_all pairs both jaxcl sides with the PyTorch one
    pairs = {r["workload"]: r["peer"] for r in _run_all().ADAPTERS["shadow_models"](lines)}
    assert pairs == {
        "shadow_models [jaxcl-vmapped]": "torch-sequential",
        "shadow_models [jaxcl-sequential]": "torch-sequential",
    }
