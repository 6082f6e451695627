"""Every speed benchmark in one command, one JSON-lines file and one table.

    python benchmarks_speed/run_all.py --device gpu      # accelerator sizes, inside --budget seconds
    python benchmarks_speed/run_all.py --device tpu      # the same sizes, jaxcl rows only
    python benchmarks_speed/run_all.py --device cpu      # the CPU sizes
    python benchmarks_speed/run_all.py --tiny            # seconds per benchmark: what the test runs

Each benchmark script runs in its own process (``BENCHES`` gives the sizes of each device),
writing its own JSON lines into a temporary file; this script reads them back, normalises them
(``ADAPTERS``: one small function per script) and prints one table: the jaxcl time, the peer's
time (PyTorch / transformers / TRL), their ratio (peer / jaxcl: > 1 means jaxcl is faster),
jaxcl's first call (compilation included) in a cold process and in a second process that finds
the persistent compilation cache warm (``--second-process``), and achieved GFLOP/s against the
matmul peak measured at the start of the same run, where the benchmark counts its FLOPs.

**Which peers run** (``peer_mode``): on ``cpu`` every peer, on the CPU. On ``gpu``, where
PyTorch sees a CUDA device, the peers run on it (``PEER_ARGS[...]['cuda']``: PyTorch on CUDA for
er_stream, ssd, gu_overhead and shadow_models, plus the ``torch.compile`` rows of er_stream and llm_step;
llm_step's, lora_step's and rft_step's peers pick CUDA themselves); a peer with no CUDA version
(replay_zoo's) and every peer where PyTorch sees no GPU is left out *before* the script runs (``--no-torch`` /
``--no-trl``), so no host-sized PyTorch run eats the accelerator's budget (``--peer-on-cpu``
keeps the CPU peers). On ``tpu``: jaxcl rows only.

**The time budget, by construction** (``size_for_budget``): every benchmark gets an equal share
of ``--budget`` (after the matmul peak), ``row_budget = (budget - peak_s) / n_benchmarks``, and
its processes are killed when that share is spent (so the whole run cannot overrun). Its size is
computed from the share, not fixed: a pilot run at the smallest size ``k0`` of the benchmark's
work knob (``KNOBS``: steps per task, training examples, steps or iterations per call) with one
repeat measures the seconds of one call of all sides, ``c0``, and its fixed cost
``fixed = pilot_wall - 2 c0`` (start, data, compilation); time is taken as linear in the knob,
and the knob is the largest ``k <= k_max`` with
``processes * (fixed + (repeats + 1) * c0 * k / k0) <= SAFETY * (row_budget - pilot_wall)``
(``SAFETY = 0.5``; ``processes`` is 2 with ``--second-process``). If even ``k0`` does not fit,
the row fails, naming its budget. ``--tiny`` keeps each script's own tiny sizes (no pilot).

**Failures**: a benchmark that exits non-zero, is killed at its budget or writes no rows is a
failed row; the run prints one ``FAILED <row>: <why>`` line per failed row and exits 1. Setting
``JAXCL_BENCH_FAIL=<name>[,<name>]`` passes those scripts an unknown option, so they fail on
purpose (what the test uses).

**Measured or estimated** (``source``): every row the scripts time has ``source: "measured"``.
Until an accelerator is lent, ``--estimates FILE`` (JSON lines with ``workload``, ``target``,
``memory_per_chip_bytes``, ``hbm_bytes``, ``step_s``; e.g. from the compile check's results)
adds rows with ``source: "compiler estimate"``, no times and no ratio: the compiler's figures,
never shown as a measurement.

The rows go to ``results/run_all_<device>.jsonl`` (appended; one line per row, each with the
versions, the device, the commit and the load average).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

DEVICES = ("cpu", "gpu", "tpu")
# script -> {sizes: argv}; "accel" serves gpu and tpu. The work knob of KNOBS, where present
# here, is replaced by the size computed from the budget.
BENCHES = {
    "er_stream": {
        "tiny": ["--tiny"],
        "cpu": ["--seeds", "1", "16", "--repeats", "2"],
        "accel": ["--seeds", "1", "16", "--repeats", "3"],
    },
    "replay_zoo": {
        "tiny": ["--tiny"],
        "cpu": ["--seeds", "1", "--repeats", "2"],
        "accel": ["--seeds", "1", "16", "--repeats", "3"],
    },
    "ssd": {
        "tiny": ["--tiny"],
        "cpu": ["--repeats", "2"],
        "accel": ["--width", "64", "--batch", "128", "--repeats", "3"],
    },
    "gu_overhead": {
        "tiny": ["--tiny"],
        "cpu": ["--repeats", "2"],
        "accel": ["--width", "64", "--batch", "128", "--repeats", "3"],
    },
    "llm_step": {
        "tiny": ["--tiny", "--repeats", "1"],
        "cpu": ["--repeats", "2", "--seq", "128"],
        "accel": ["--layers", "30", "--batch", "8", "--seq", "512", "--dtype", "bfloat16", "--repeats", "3"],
    },
    "lora_step": {
        "tiny": ["--tiny", "--repeats", "1"],
        "cpu": ["--repeats", "2", "--seq", "128"],
        "accel": ["--layers", "30", "--batch", "8", "--seq", "512", "--dtype", "bfloat16", "--repeats", "3"],
    },
    "rft_step": {
        "tiny": ["--tiny", "--no-trl", "--repeats", "1"],
        "cpu": ["--shape", "small", "--repeats", "2"],
        "accel": ["--shape", "medium", "--layers", "8", "--d-model", "1024", "--batch", "16", "--new", "64"],
    },
    # U-LiRA's shadow models: S seeds in one program vs one after another (MLP, S 16 on the CPU;
    # the study's ResNet-18 recipe, S 4, on an accelerator, which has no PyTorch side)
    "shadow_models": {
        "tiny": ["--tiny"],
        "cpu": ["--repeats", "2"],
        "accel": ["--model", "resnet", "--repeats", "3"],
    },
}
# script -> (option, k0: pilot size, k_max, times are per unit of the knob rather than per call)
KNOBS = {
    "er_stream": ("--steps-per-task", 10, 2000, False),
    "replay_zoo": ("--steps-per-task", 10, 1000, False),
    "ssd": ("--n-train", 256, 20000, False),
    "gu_overhead": ("--steps", 4, 500, False),
    "llm_step": ("--steps", 1, 50, False),
    "lora_step": ("--steps", 1, 50, False),
    "rft_step": ("--iters", 1, 20, True),
    "shadow_models": ("--steps", 10, 500, False),
}
SAFETY = 0.5
# script -> how its peer is left out ("none") or put on CUDA ("cuda"; None: no CUDA version)
PEER_ARGS = {
    "er_stream": {"none": ["--no-torch"], "cuda": ["--torch-device", "cuda", "--compile"]},
    "replay_zoo": {"none": ["--no-torch"], "cuda": None},
    "ssd": {"none": ["--no-torch"], "cuda": ["--torch-device", "cuda"]},
    "gu_overhead": {"none": ["--no-torch"], "cuda": ["--torch-device", "cuda"]},
    "llm_step": {"none": ["--no-torch"], "cuda": ["--compile"]},
    "lora_step": {"none": ["--no-torch"], "cuda": []},
    "rft_step": {"none": ["--no-trl"], "cuda": []},
    "shadow_models": {"none": ["--no-torch"], "cuda": ["--torch-device", "cuda"]},
}
FAIL_ENV = "JAXCL_BENCH_FAIL"


def peer_mode(name: str, device: str, torch_cuda: bool, peer_on_cpu: bool = False) -> str:
    """Where ``name``'s peer runs on ``device``: ``"cpu"``, ``"cuda"`` or ``"none"`` (left out)."""
    if device == "cpu":
        return "cpu"
    if device == "gpu" and torch_cuda and PEER_ARGS[name]["cuda"] is not None:
        return "cuda"
    return "cpu" if device == "gpu" and peer_on_cpu else "none"


def bench_argv(name: str, device: str, tiny: bool, mode: str) -> list[str]:
    """The script's arguments for ``device`` and peer ``mode`` (the work knob not yet set)."""
    argv = list(BENCHES[name]["tiny" if tiny else ("cpu" if device == "cpu" else "accel")])
    argv += PEER_ARGS[name].get(mode) or []
    if name in os.environ.get(FAIL_ENV, "").split(","):
        argv.append("--fail-on-purpose")  # an unknown option: the script exits 2
    return argv


def plan(device: str, *, tiny: bool = False, torch_cuda: bool = False, peer_on_cpu: bool = False, only=None):
    """``[(name, peer mode, argv)]`` for every benchmark to run on ``device``."""
    out = []
    for name in only or BENCHES:
        mode = peer_mode(name, device, torch_cuda, peer_on_cpu)
        out.append((name, mode, bench_argv(name, device, tiny, mode)))
    return out


def size_for_budget(
    row_budget_s: float,
    pilot_wall_s: float,
    pilot_call_s: float,
    k0: int,
    k_max: int,
    *,
    repeats: int,
    processes: int = 1,
) -> int | None:
    """The largest work knob ``k`` in ``[k0, k_max]`` whose predicted cost fits ``SAFETY`` of what
    the pilot left of ``row_budget_s`` (see the module docstring); ``None`` if ``k0`` does not."""
    fixed = max(pilot_wall_s - 2 * pilot_call_s, 0.0)
    left = SAFETY * (row_budget_s - pilot_wall_s) / processes - fixed
    per_unit = (repeats + 1) * pilot_call_s / k0
    if left < per_unit * k0:
        return None
    return min(k_max, math.floor(left / per_unit)) if per_unit > 0 else k_max


def set_knob(argv: list[str], flag: str, value: int) -> list[str]:
    out = list(argv)
    if flag in out:
        out[out.index(flag) + 1] = str(value)
    else:
        out += [flag, str(value)]
    return out


def repeats_of(argv: list[str], default: int = 3) -> int:
    return int(argv[argv.index("--repeats") + 1]) if "--repeats" in argv else default


def call_seconds(rows: list[dict], name: str, k: int) -> float:
    """Seconds of one call of every side at knob ``k`` (each distinct side counted once)."""
    per_unit = KNOBS[name][3]
    times = {r["workload"]: r["jaxcl_s"] for r in rows if r.get("jaxcl_s")}
    peers = {(r["workload"], r["peer"]): r["peer_s"] for r in rows if r.get("peer_s")}
    total = sum(times.values()) + sum(set(peers.values()))
    return total * k if per_unit else total


def torch_sees_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def _row(workload, *, jaxcl_s=None, peer=None, peer_s=None, first_s=None, flops=None, **extra):
    ratio = peer_s / jaxcl_s if jaxcl_s and peer_s else None
    return {
        "workload": workload,
        "source": "measured",
        "jaxcl_s": jaxcl_s,
        "peer": peer,
        "peer_s": peer_s,
        "ratio": ratio,
        "jaxcl_first_s": first_s,
        "flops": flops,
        **extra,
    }


def _er_stream(lines):
    out = []
    for d in lines:
        if "jaxcl" not in d:
            continue
        j, t = d["jaxcl"], d.get("torch") or d.get("sequential") or {}
        out.append(
            _row(
                f"er_stream seeds={d['sizes']['seeds']} steps/task={d['sizes']['steps_per_task']}",
                jaxcl_s=j["median_s"],
                peer=d.get("peer"),
                peer_s=t.get("median_s"),
                first_s=j.get("first_call_s"),
                flops=d.get("flops"),
            )
        )
    return out


def _replay_zoo(lines):
    return [
        _row(
            f"replay_zoo {d['method']} seeds={d['sizes']['seeds']} steps/task={d['sizes']['steps_per_task']}",
            jaxcl_s=d["jaxcl"]["median_s"],
            peer=d["peer"] if "torch" in d else None,
            peer_s=d["torch"]["median_s"] if "torch" in d else None,
            first_s=d["jaxcl"]["first_call_s"],
        )
        for d in lines
        if "jaxcl" in d  # no "torch": the peer was left out (--no-torch)
    ]


PEERS = ("torch", "transformers", "trl")


def _by_side(lines, key="median_s", first="first_s"):
    """Benchmarks that write one line per side (jaxcl variants and PyTorch peers): each jaxcl
    line against each peer line of the same workload."""
    is_peer = lambda d: d.get("side", "").startswith(PEERS)
    out = []
    for j in (d for d in lines if not is_peer(d)):
        name = j["workload"] if j.get("side") in (None, "jaxcl") else f"{j['workload']} [{j['side']}]"
        peers = [  # the same workload in the same dtype (llm_step writes float32 and bf16 sides)
            p
            for p in lines
            if is_peer(p) and p["workload"] == j["workload"] and p.get("dtype") == j.get("dtype")
        ]
        for p in peers or [None]:
            out.append(
                _row(
                    name,
                    jaxcl_s=j[key],
                    peer=p and p["side"],
                    peer_s=p and p[key],
                    first_s=j.get(first) or j.get("first_call_s"),
                    flops=j.get("flops"),
                )
            )
    return out


def _rft_step(lines):
    out = []
    for d in lines:
        j, t = d.get("jaxcl") or {}, d.get("trl") or {}
        if not j:
            continue
        out.append(
            _row(
                f"rft_step {d.get('shape', '')}",
                jaxcl_s=j["median_s_per_iteration"],
                peer="trl" if t else None,
                peer_s=t.get("median_s_per_iteration"),
                first_s=d.get("jaxcl_first_call_s"),
                flops=d.get("flops_per_iteration"),
            )
        )
    return out


ADAPTERS = {
    "er_stream": _er_stream,
    "replay_zoo": _replay_zoo,
    "ssd": lambda lines: _by_side(lines),
    "gu_overhead": lambda lines: _by_side(lines),
    "llm_step": lambda lines: _by_side(lines),
    # workloads llm_train_lora / llm_train_full: jaxcl-lora against torch-peft-lora, jaxcl-full
    # against torch-full
    "lora_step": lambda lines: _by_side(lines),
    "rft_step": _rft_step,
    # workload shadow_models: jaxcl-vmapped and jaxcl-sequential, each against torch-sequential
    "shadow_models": lambda lines: _by_side(lines),
}


def matmul_peak(device: str, n: int | None = None) -> dict:
    """GFLOP/s of a jitted square matmul (f32; bf16 too on accelerators): the roofline the
    workloads are compared with, measured in this run."""
    import jax
    import jax.numpy as jnp

    n = n or (8192 if device == "gpu" else 1024)
    out = {}
    for dt in (jnp.float32, jnp.bfloat16) if device == "gpu" else (jnp.float32,):
        a = jax.random.normal(jax.random.key(0), (n, n), dt)
        f = jax.jit(lambda x: x @ x)
        f(a).block_until_ready()
        ts = []
        for _ in range(5):
            t0 = time.perf_counter()
            f(a).block_until_ready()
            ts.append(time.perf_counter() - t0)
        out[jnp.dtype(dt).name] = 2 * n**3 / min(ts) / 1e9
    return out


def run_one(
    name: str, argv: list[str], timeout: float, cache_dir: str
) -> tuple[list[dict], str | None, float]:
    """Run one benchmark script; ``(json lines, error or None, seconds)``."""
    with tempfile.NamedTemporaryFile("r", suffix=".jsonl", delete=False) as f:
        path = f.name
    env = {
        **os.environ,
        "JAX_COMPILATION_CACHE_DIR": cache_dir,
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        # the scripts import this checkout's jaxcl even where another install is on the path
        "PYTHONPATH": os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH", "")) if p),
    }
    t0 = time.perf_counter()
    try:
        p = subprocess.run(
            [sys.executable, os.path.join(HERE, f"{name}.py"), *argv, "--out", path],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        err = None if p.returncode == 0 else f"exit {p.returncode}: {p.stderr.strip()[-300:]}"
    except subprocess.TimeoutExpired:
        err = f"stopped after {timeout:.0f} s (time budget)"
    secs = time.perf_counter() - t0
    with open(path) as f:
        lines = [json.loads(s) for s in f if s.strip()]
    os.unlink(path)
    return lines, err, secs


def peer_versions() -> dict:
    """Versions of the peers' libraries, without importing them."""
    from importlib import metadata

    out = {}
    for name in ("torch", "transformers", "trl", "peft"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def fmt(v, spec):
    return "-" if v is None else format(v, spec)


def table(rows: list[dict]) -> str:
    head = "| workload | jaxcl s | peer | peer s | ratio | first call s (cold / warm cache) | GFLOP/s | of peak |"
    out = [head, "|" + "---|" * 8]
    for r in rows:
        if r.get("error"):
            out.append(f"| {r['workload']} | failed: {r['error'][:80]} |||||||")
            continue
        if r.get("source") == "compiler estimate":
            mem = f"{r['memory_per_chip_bytes'] / 2**20:.0f} of {r['hbm_bytes'] / 2**20:.0f} MiB/chip"
            out.append(
                f"| {r['workload']} on {r['target']} | compiler estimate, not measured: {mem}, "
                f"step {fmt(r.get('estimated_step_s'), '.4f')} s |||||||"
            )
            continue
        first = f"{fmt(r['jaxcl_first_s'], '.2f')} / {fmt(r.get('jaxcl_first_warm_s'), '.2f')}"
        out.append(
            f"| {r['workload']} | {fmt(r['jaxcl_s'], '.3f')} | {r['peer'] or '-'} | {fmt(r['peer_s'], '.3f')} "
            f"| {fmt(r['ratio'], '.2f')}x | {first} | {fmt(r.get('gflops'), '.1f')} "
            f"| {fmt(r.get('fraction_of_peak'), '.0%')} |"
        )
    return "\n".join(out)


ESTIMATE_KEYS = ("workload", "target", "memory_per_chip_bytes", "hbm_bytes", "step_s")


def estimate_row(workload, *, target, memory_per_chip_bytes, hbm_bytes, step_s=None, flops=None):
    """A row with the compiler's figures for an accelerator (``source: "compiler estimate"``):
    per-chip memory against the chip's HBM and the compiler's step-time estimate; no measured
    time and no ratio, so it can never be read as a measurement."""
    return {
        "workload": workload,
        "source": "compiler estimate",
        "target": target,
        "memory_per_chip_bytes": memory_per_chip_bytes,
        "hbm_bytes": hbm_bytes,
        "estimated_step_s": step_s,
        "flops": flops,
        "jaxcl_s": None,
        "peer": None,
        "peer_s": None,
        "ratio": None,
        "jaxcl_first_s": None,
    }


def read_estimates(path: str) -> list[dict]:
    """Estimate rows from JSON lines (keys ``ESTIMATE_KEYS``, ``flops`` optional)."""
    from jaxcl.config import ConfigError

    if not os.path.exists(path):
        raise ConfigError(f"--estimates {path}: no such file; give the JSON lines of the compile check")
    out = []
    for i, line in enumerate(open(path), 1):
        if not line.strip():
            continue
        d = json.loads(line)
        missing = [k for k in ESTIMATE_KEYS if k not in d]
        if missing:
            raise ConfigError(
                f"--estimates {path} line {i}: missing {', '.join(missing)}; each line needs {ESTIMATE_KEYS}"
            )
        out.append(estimate_row(**{k: d[k] for k in (*ESTIMATE_KEYS, "flops") if k in d}))
    return out


def failures(rows: list[dict]) -> list[str]:
    """One line per failed row: ``FAILED <workload>: <why>``."""
    out = []
    for r in rows:
        why = r.get("error") or r.get("error_after_rows")
        if why:
            out.append(f"FAILED {r['workload']}: {' '.join(str(why).split())[:300]}")
    return out


def run_bench(name, argv, row_budget, cache_dir, *, tiny, second_process):
    """Pilot (unless tiny), size from the budget, run, optionally a second process: its rows."""
    t_start = time.perf_counter()
    spent = lambda: time.perf_counter() - t_start
    repeats = repeats_of(argv)
    if not tiny and name in KNOBS:
        flag, k0, k_max, _ = KNOBS[name]
        pilot_argv = set_knob(set_knob(argv, flag, k0), "--repeats", 1)
        lines, err, wall = run_one(name, pilot_argv, row_budget / 2, cache_dir)
        got = ADAPTERS[name](lines) if lines else []
        if err or not got:
            return [_row(name, error=f"pilot at {flag} {k0}: {err or 'no rows'}")]
        k = size_for_budget(
            row_budget,
            wall,
            call_seconds(got, name, k0),
            k0,
            k_max,
            repeats=repeats,
            processes=2 if second_process else 1,
        )
        if k is None:
            return [
                _row(
                    name,
                    error=f"row budget {row_budget:.0f} s too small: the pilot at {flag} {k0} took {wall:.0f} s; raise --budget",
                )
            ]
        argv = set_knob(argv, flag, k)
        print(
            f"  {name}: pilot {wall:.0f} s at {flag} {k0}; sized {flag} {k} for a {row_budget:.0f} s row budget"
        )
    lines, err, secs = run_one(name, argv, max(row_budget - spent(), 1.0), cache_dir)
    got = ADAPTERS[name](lines) if lines else []
    if not got:
        return [_row(name, error=err or "the script wrote no rows")]
    if second_process:
        lines2, err2, _ = run_one(name, argv, max(row_budget - spent(), 1.0), cache_dir)
        warm = ADAPTERS[name](lines2) if lines2 else []
        err = err or (err2 and f"second process: {err2}")
        for r, w in zip(got, warm):
            r["jaxcl_first_warm_s"] = w["jaxcl_first_s"]
    for r in got:
        r["seconds"], r["argv"] = secs, argv
        if err:
            r["error_after_rows"] = err
    return got


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--device", choices=DEVICES, default=None, help="sizes and peers (default: the backend's)"
    )
    ap.add_argument("--tiny", action="store_true", help="the seconds-long sizes (what the test runs)")
    ap.add_argument("--only", nargs="+", choices=sorted(BENCHES), default=None)
    ap.add_argument("--budget", type=float, default=480.0, help="seconds for all benchmarks together")
    ap.add_argument(
        "--second-process",
        action="store_true",
        help="run each benchmark again in a new process to measure the first call with a warm cache",
    )
    ap.add_argument(
        "--peer-on-cpu", action="store_true", help="on a GPU, keep the peers that run on the CPU only"
    )
    ap.add_argument("--estimates", default=None, help="JSON lines of compiler estimates to add as rows")
    ap.add_argument("--out", default=None, help="JSON lines (default results/run_all_<device>.jsonl)")
    a = ap.parse_args(argv)

    import jax

    from jaxcl import report
    from jaxcl.config import ConfigError

    backend = jax.default_backend()
    device = a.device or (backend if backend in DEVICES else "gpu")
    if device != "cpu" and backend != device and not a.tiny:
        print(
            f"error: --device {device} but jax's backend is {backend}; run on a {device} machine or use --tiny",
            file=sys.stderr,
        )
        return 2
    try:
        estimates = read_estimates(a.estimates) if a.estimates else []
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = a.out or os.path.join(HERE, "results", f"run_all_{device}{'_tiny' if a.tiny else ''}.jsonl")
    t0 = time.perf_counter()
    # the full-size matmul even with --tiny (well under a second): a 256-wide one reaches a
    # fraction of the roofline, and tiny workloads then showed "134 % of peak"
    peak = matmul_peak(device)
    print(
        f"matmul peak on {jax.devices()[0].device_kind}: "
        + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in peak.items())
    )
    peak_f = max(peak.values())
    todo = plan(
        device,
        tiny=a.tiny,
        torch_cuda=device == "gpu" and torch_sees_cuda(),
        peer_on_cpu=a.peer_on_cpu,
        only=a.only,
    )
    row_budget = (a.budget - (time.perf_counter() - t0)) / len(todo)
    rows = []
    with tempfile.TemporaryDirectory(prefix="jaxcl-bench-xla-") as cache_dir:
        for name, mode, argv_b in todo:
            print(f"  {name}: peer {mode}, row budget {row_budget:.0f} s")
            got = run_bench(name, argv_b, row_budget, cache_dir, tiny=a.tiny, second_process=a.second_process)
            for r in got:
                r["peer_mode"] = mode
                if r.get("flops") and r.get("jaxcl_s"):
                    r["gflops"] = r["flops"] / r["jaxcl_s"] / 1e9
                    r["fraction_of_peak"] = r["gflops"] / peak_f
            rows.extend(got)
    rows.extend(estimates)

    meta = {
        "benchmark": "benchmarks_speed/run_all.py",
        "sizes": "tiny" if a.tiny else device,
        "budget_s": a.budget,
        "row_budget_s": row_budget,
        "matmul_peak_gflops": peak,
        "versions": {**report.versions(), **peer_versions()},
        "device": report.device_info(),
        "git_commit": report.git_commit(),
        "loadavg": list(os.getloadavg()),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "a") as f:
        for r in rows:
            f.write(json.dumps({**meta, **r}) + "\n")
    print(table(rows))
    print(f"wrote {len(rows)} rows to {out}")
    failed = failures(rows)
    for line in failed:
        print(line, file=sys.stderr)
    return 1 if failed or not rows else 0


if __name__ == "__main__":
    sys.exit(main())
