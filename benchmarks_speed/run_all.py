"""Every speed benchmark in one command, one JSON-lines file and one table.

    python benchmarks_speed/run_all.py --device gpu      # accelerator sizes, inside 8 minutes
    python benchmarks_speed/run_all.py --device cpu      # the CPU sizes (2-core machine: ~8 min)
    python benchmarks_speed/run_all.py --tiny            # seconds per benchmark: what the test runs

Each benchmark script runs in its own process at the sizes of the chosen device (``BENCHES``),
writing its own JSON lines into a temporary file; this script reads them back, normalises them
(``ADAPTERS``: one small function per script, since each script keeps the fields of its
question) and prints one table: the jaxcl time, the peer's time (PyTorch / transformers / TRL),
their ratio (peer / jaxcl: > 1 means jaxcl is faster), jaxcl's first call (compilation included)
in a cold process and in a second process that finds the persistent compilation cache warm
(``--second-process``; the benchmark then runs twice), and achieved GFLOP/s and the fraction of
the matmul peak measured at the start of the same run, where the benchmark counts its FLOPs.

The rows go to ``results/run_all_<device>.jsonl`` (appended; one line per row, each with the
versions, the device, the commit and the load average). A benchmark that fails or runs past the
time left is reported as such in its row; the others still run. On a GPU, the peers of
``llm_step`` and ``rft_step`` run on the GPU too; ``er_stream``, ``ssd`` and ``gu_overhead`` have
CPU-only PyTorch sides, so on a GPU they report jaxcl alone (``--peer-on-cpu`` keeps their CPU
peers, for what that comparison is worth).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

# script -> {device: argv}; sizes chosen so that all of them fit the budget on that device
BENCHES = {
    "er_stream": {
        "tiny": ["--tiny"],
        "cpu": ["--seeds", "1", "16", "--steps-per-task", "20", "--repeats", "2"],
        "gpu": ["--seeds", "1", "16", "--steps-per-task", "500", "--repeats", "3"],
    },
    "replay_zoo": {  # the 16-seed CPU rows take ~20 min: run replay_zoo.py alone for them
        "tiny": ["--tiny"],
        "cpu": ["--seeds", "1", "--steps-per-task", "50", "--repeats", "2"],
        "gpu": ["--seeds", "1", "16", "--steps-per-task", "500", "--repeats", "3"],
    },
    "ssd": {
        "tiny": ["--tiny"],
        "cpu": ["--repeats", "2"],
        "gpu": ["--width", "64", "--n-train", "4096", "--batch", "128", "--repeats", "3"],
    },
    "gu_overhead": {
        "tiny": ["--tiny"],
        "cpu": ["--repeats", "2"],
        "gpu": ["--width", "64", "--batch", "128", "--steps", "20", "--repeats", "3"],
    },
    "llm_step": {
        "tiny": ["--tiny", "--repeats", "1"],
        "cpu": ["--repeats", "2", "--seq", "128"],
        "gpu": ["--layers", "30", "--batch", "8", "--seq", "512", "--dtype", "bfloat16", "--repeats", "3"],
    },
    "rft_step": {
        "tiny": ["--tiny", "--no-trl", "--repeats", "1"],
        "cpu": ["--shape", "small", "--repeats", "2"],
        "gpu": ["--shape", "medium", "--layers", "8", "--d-model", "1024", "--batch", "16", "--new", "64"],
    },
}
CPU_ONLY_PEERS = {"er_stream", "replay_zoo", "ssd", "gu_overhead"}


def _row(workload, *, jaxcl_s=None, peer=None, peer_s=None, first_s=None, flops=None, **extra):
    ratio = peer_s / jaxcl_s if jaxcl_s and peer_s else None
    return {
        "workload": workload,
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
            peer=d["peer"],
            peer_s=d["torch"]["median_s"],
            first_s=d["jaxcl"]["first_call_s"],
        )
        for d in lines
        if "jaxcl" in d and "torch" in d
    ]


PEERS = ("torch", "transformers", "trl")


def _by_side(lines, key="median_s", first="first_s"):
    """Benchmarks that write one line per side (jaxcl variants and PyTorch peers): each jaxcl
    line against each peer line of the same workload."""
    is_peer = lambda d: d.get("side", "").startswith(PEERS)
    out = []
    for j in (d for d in lines if not is_peer(d)):
        name = j["workload"] if j.get("side") in (None, "jaxcl") else f"{j['workload']} [{j['side']}]"
        peers = [p for p in lines if is_peer(p) and p["workload"] == j["workload"]]
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
    "rft_step": _rft_step,
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
    for name in ("torch", "transformers", "trl"):
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
        first = f"{fmt(r['jaxcl_first_s'], '.2f')} / {fmt(r.get('jaxcl_first_warm_s'), '.2f')}"
        out.append(
            f"| {r['workload']} | {fmt(r['jaxcl_s'], '.3f')} | {r['peer'] or '-'} | {fmt(r['peer_s'], '.3f')} "
            f"| {fmt(r['ratio'], '.2f')}x | {first} | {fmt(r.get('gflops'), '.1f')} "
            f"| {fmt(r.get('fraction_of_peak'), '.0%')} |"
        )
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=("cpu", "gpu"), default=None, help="sizes (default: the backend's)")
    ap.add_argument("--tiny", action="store_true", help="the seconds-long sizes (what the test runs)")
    ap.add_argument("--only", nargs="+", choices=sorted(BENCHES), default=None)
    ap.add_argument("--budget", type=float, default=480.0, help="seconds for all benchmarks together")
    ap.add_argument(
        "--second-process",
        action="store_true",
        help="run each benchmark again in a new process to measure the first call with a warm cache",
    )
    ap.add_argument("--peer-on-cpu", action="store_true", help="keep CPU-only PyTorch peers on a GPU")
    ap.add_argument("--out", default=None, help="JSON lines (default results/run_all_<device>.jsonl)")
    a = ap.parse_args(argv)

    import jax

    from jaxcl import report

    device = a.device or ("cpu" if jax.default_backend() == "cpu" else "gpu")
    sizes = "tiny" if a.tiny else device
    out = a.out or os.path.join(HERE, "results", f"run_all_{device}{'_tiny' if a.tiny else ''}.jsonl")
    peak = matmul_peak(device, 256 if a.tiny else None)
    print(
        f"matmul peak on {jax.devices()[0].device_kind}: "
        + ", ".join(f"{k} {v:.0f} GFLOP/s" for k, v in peak.items())
    )
    peak_f = max(peak.values())
    deadline = time.perf_counter() + a.budget
    rows = []
    with tempfile.TemporaryDirectory(prefix="jaxcl-bench-xla-") as cache_dir:
        for name in a.only or BENCHES:
            argv_b = list(BENCHES[name][sizes])
            left = deadline - time.perf_counter()
            if left < 5:
                rows.append(_row(name, error="not run: time budget spent"))
                continue
            lines, err, secs = run_one(name, argv_b, left, cache_dir)
            got = ADAPTERS[name](lines) if lines else []
            if err and not got:
                rows.append(_row(name, error=err))
                print(f"  {name}: {err}")
                continue
            if a.second_process and deadline - time.perf_counter() > 5:
                lines2, err2, _ = run_one(name, argv_b, deadline - time.perf_counter(), cache_dir)
                warm = ADAPTERS[name](lines2) if lines2 else []
                for r, w in zip(got, warm):
                    r["jaxcl_first_warm_s"] = w["jaxcl_first_s"]
            for r in got:
                if device == "gpu" and name in CPU_ONLY_PEERS and not a.peer_on_cpu:
                    r.update(peer=None, peer_s=None, ratio=None)
                if r["flops"] and r["jaxcl_s"]:
                    r["gflops"] = r["flops"] / r["jaxcl_s"] / 1e9
                    r["fraction_of_peak"] = r["gflops"] / peak_f
                r["seconds"] = secs
                if err:
                    r["error_after_rows"] = err
            rows.extend(got)
            print(f"  {name}: {len(got)} rows in {secs:.0f} s")

    meta = {
        "benchmark": "benchmarks_speed/run_all.py",
        "sizes": sizes,
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
    return 0 if any(not r.get("error") for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
