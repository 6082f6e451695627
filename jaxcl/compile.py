"""Compile a study's programs for an accelerator without one: ``jaxcl compile CONFIG --target T``.

A study that declares its programs (``Study.programs(cfg, mesh) -> [Program]``: the compiled
calls a run makes, with abstract arguments of the config's sizes, sharded on the mesh) is lowered
and compiled for the target's devices without running anything. For a TPU target the devices are
abstract ones of a topology (``jax.experimental.topologies.get_topology_desc``, with ``libtpu``
installed: no TPU needed); ``cpu`` is this machine. Each program gets a row: per-device memory
(arguments, outputs, temporaries, generated code, from XLA's ``memory_analysis``) against the
device's HBM, the FLOPs and bytes of XLA's ``cost_analysis`` and, on a TPU target, the
compiler's time estimate (``optimal_seconds``). These are the compiler's figures, not a run.

XLA's cost model counts a loop body once, not once per iteration: the FLOPs and the estimate of a
program with a ``lax.scan`` over steps are those of one step (plus what is outside the loop), so
the studies declare a one-step program beside each whole run, and the estimate column is read
per step. MaxText's ``train_compile.py`` does the same for its models.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import time
from collections.abc import Callable

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from . import results
from .config import ConfigError

GIB = 1024**3


@dataclasses.dataclass(frozen=True)
class Target:
    """A device kind to compile for: ``topology`` of ``get_topology_desc`` (None: this machine's
    CPU), ``chips`` and HBM per chip (GiB); a device's HBM is the chips' total over the devices
    (v2/v3/v4 chips show two devices each)."""

    name: str
    topology: str | None
    chips: int
    hbm_gib: float
    tflops: float = 0.0  # peak bf16 matmul TFLOP/s per chip (public spec sheets)
    hbm_gbps: float = 0.0  # HBM bandwidth per chip, GB/s
    note: str = ""


TARGETS = {
    t.name: t
    for t in (
        Target("cpu", None, 1, 0.0, note="this machine"),
        Target("tpu-v2-8", "v2:2x2", 4, 16, 45, 700, "Colab's TPU v2-8 runtime"),
        Target("tpu-v3-8", "v3:2x2", 4, 32, 123, 900),
        Target("tpu-v4-8", "v4:2x2x1", 4, 32, 275, 1200),
        Target("tpu-v5e-1", "v5e:1x1", 1, 16, 197, 819, "Colab's TPU v5e-1 runtime"),
        Target("tpu-v5e-4", "v5e:2x2", 4, 16, 197, 819),
        Target("tpu-v5e-8", "v5e:2x4", 8, 16, 197, 819),
        Target("tpu-v6e-1", "v6e:1x1", 1, 32, 918, 1640, "Colab's TPU v6e-1 runtime"),
        Target("tpu-v6e-8", "v6e:2x4", 8, 32, 918, 1640),
    )
}


@dataclasses.dataclass
class Program:
    """One compiled call of a study: ``fn`` (jitted) on ``args`` (``jax.ShapeDtypeStruct`` trees,
    with shardings on a mesh); ``steps``: the training steps one loop iteration of it runs (0: not
    a training step, e.g. an evaluation or a whole run whose estimate is not per step);
    ``called``: False for a program declared for its figures only (the one-step program beside a
    whole run), which a run never calls."""

    name: str
    fn: Callable
    args: tuple
    steps: int = 0
    called: bool = True


LOCAL = "local"  # the devices this process runs on (the check jaxcl run makes first on an accelerator)


def target(name: str) -> Target:
    if name == LOCAL:
        d = jax.devices()[0]
        return Target(f"{d.platform} ({d.device_kind})", LOCAL, jax.device_count(), 0.0)
    if name not in TARGETS:
        raise ConfigError(f"--target {name!r} is not valid; valid: {', '.join(TARGETS)}")
    return TARGETS[name]


def devices(t: Target) -> list:
    """The target's devices: this process's CPU devices, or a TPU topology's abstract devices."""
    if t.topology is None:
        return jax.devices("cpu")
    if t.topology == LOCAL:
        return jax.devices()
    # compiling only: several processes may hold the TPU runtime at once (CI's parallel tests)
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    try:
        from jax.experimental import topologies

        return list(topologies.get_topology_desc(t.topology, platform="tpu").devices)
    except Exception as e:  # no libtpu, or a jax too old for the topology
        raise ConfigError(
            f"--target {t.name}: the TPU compiler is not available here ({str(e).splitlines()[0][:120]}); "
            "install it with pip install 'jax[tpu]' (Python 3.12, the jax version of this environment)"
        ) from None


def hbm_bytes(t: Target, n_devices: int) -> float:
    """A device's memory: the target's HBM per device, or this machine's RAM for ``cpu``."""
    if t.topology is None or (t.topology == LOCAL and jax.devices()[0].platform == "cpu"):
        return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    if t.topology == LOCAL:  # an accelerator's own figure
        stats = jax.devices()[0].memory_stats() or {}
        return float(stats.get("bytes_limit", float("inf")))
    return t.hbm_gib * GIB * t.chips / n_devices


# XLA's TPU compiler: "the total memory required for HLO temporaries (26.26G) exceeds available HBM"
OOM = re.compile(r"memory required for [\w ]+ \((\d+(?:\.\d+)?)G\) exceeds available HBM")


def out_of_memory(p: Program, need: float, hbm: float, compile_s: float) -> dict:
    """The row of a program the compiler refused for want of HBM: what it said it needs."""
    nan = float("nan")
    return {
        "program": p.name,
        "arguments_bytes": 0,
        "outputs_bytes": 0,
        "temp_bytes": int(need),
        "code_bytes": 0,
        "alias_bytes": 0,
        "total_bytes": int(need),
        "hbm_bytes": int(hbm),
        "fits": False,
        "flops": nan,
        "bytes_accessed": nan,
        "estimate_s": None,
        "roofline_s": None,
        "steps": p.steps,
        "compile_s": compile_s,
        "refused": "the compiler: out of HBM (its figure is the temporaries alone)",
    }


def roofline(t: Target, n_devices: int, cost: dict) -> float | None:
    """``max(FLOPs / peak, bytes accessed / bandwidth)`` of one device, seconds (None on a CPU)."""
    if not t.tflops or "flops" not in cost:
        return None
    per = t.chips / n_devices
    return max(
        cost["flops"] / (t.tflops * 1e12 * per), cost.get("bytes accessed", 0.0) / (t.hbm_gbps * 1e9 * per)
    )


def abstract(tree, mesh=None, spec=P()):
    """``tree`` (arrays or ShapeDtypeStructs) as ShapeDtypeStructs, sharded ``spec`` on ``mesh``
    (replicated by default)."""
    sharding = None if mesh is None else NamedSharding(mesh, spec)
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a), a.dtype, sharding=sharding), tree)


def placed(tree, mesh=None, *, seeds: bool = False):
    """``tree`` as ShapeDtypeStructs placed as a run places a train state
    (:func:`jaxcl.parallel.state_sharding`: large arrays over the mesh's ``model`` axis, FSDP;
    ``seeds``: the leading dimension over ``seeds``); unsharded without a mesh."""
    if mesh is None:
        return abstract(tree)
    from .parallel import state_sharding

    shardings = state_sharding(tree, mesh, seeds=seeds)
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(np.shape(a), a.dtype, sharding=s), tree, shardings)


def seeds_spec(mesh) -> P:
    """The seed axis over the mesh's ``seeds`` axis (replicated without a mesh)."""
    return P("seeds") if mesh is not None and "seeds" in mesh.axis_names else P()


def phase_programs(label: str, phase, hp: dict, role: int, params, keys, problem, mesh) -> list[Program]:
    """A :class:`jaxcl.loops.Phase`'s programs over every seed (``params`` / ``keys`` abstract with a
    leading seed axis, ``problem`` abstract): the whole phase, its key folded with ``role`` as a
    run folds it, and one training step (declared for its figures; a run never calls it)."""
    from .parallel import jit_seeds

    run = lambda p, k, pr: phase.run(p, jax.random.fold_in(k, role), pr, hp)  # noqa: E731
    start = lambda p, k, pr: phase.start(p, k, pr, hp)  # noqa: E731
    state = jax.eval_shape(jax.vmap(start, (0, 0, None)), params, keys, problem)
    step = lambda s, pr: phase.one_step(s, pr, hp)  # noqa: E731
    return [
        Program(
            f"{label}: the phase ({phase.phase.steps} steps)",
            jit_seeds(run, (0, 0, None), mesh),
            (params, keys, problem),
        ),
        Program(
            f"{label}: one step",
            jit_seeds(step, (0, None), mesh),
            (abstract(state, mesh, seeds_spec(mesh)), problem),
            steps=1,
            called=False,
        ),
    ]


def compiler_versions() -> str:
    """The versions a compiled program's figures depend on: jax, jaxlib and libtpu (``-`` where
    not installed)."""
    import importlib.metadata as md

    def version(name):
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            return "-"

    return f"jax {jax.__version__} jaxlib {version('jaxlib')} libtpu {version('libtpu')}"


def program_key(lowered, t: Target, n_devices: int) -> str:
    """A compiled program's identity: the sha256 of its lowered text (with its shardings, without
    source locations), the target, the device count and :func:`compiler_versions`. The compiler
    is deterministic: one key, one set of figures."""
    digest = hashlib.sha256(lowered.as_text().encode()).hexdigest()
    return f"{digest} {t.name} x{n_devices} {compiler_versions()}"


def load_fit_cache(path: str) -> dict:
    """A ``seen`` of figures compiled before (:func:`save_fit_cache`), each row marked ``cached``;
    empty when ``path`` does not exist."""
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        data = json.load(f)
    return {k: {**row, "cached": True} for k, row in data["programs"].items()}


def save_fit_cache(path: str, seen: dict, keys) -> None:
    """Write the rows of ``keys`` from ``seen`` (the programs a fit check compiled or found) to
    ``path``: the next check with the same program text, target, devices and versions reads their
    figures instead of compiling (:func:`analyse`)."""
    keep = {"program", "same_as", "cached", "key", "steps"}
    rows = {k: {f: v for f, v in seen[k].items() if f not in keep} for k in sorted(set(keys))}
    for k in rows:
        rows[k]["program"] = seen[k]["program"]
    with open(path, "w") as f:
        json.dump({"schema": "jaxcl-fit-cache/1", "programs": rows}, f, indent=1, sort_keys=True)
        f.write("\n")


FIGURES = ("total_bytes", "temp_bytes", "arguments_bytes", "flops")


def stale(cached: dict, fresh: dict) -> list[str]:
    """The figures in which a cached row differs from a fresh compile of the same key (a NaN
    FLOP count, a compiler that gives none, equals itself): non-empty means the cache is stale."""
    return [
        f for f in FIGURES if cached[f] != fresh[f] and not (cached[f] != cached[f] and fresh[f] != fresh[f])
    ]


def analyse(p: Program, t: Target, n_devices: int, seen: dict | None = None) -> dict:
    """Compile ``p`` for its arguments' devices; its row of memory and cost figures: XLA's time
    estimate where it gives one (``optimal_seconds``; it gives none, a negative value, for some
    programs), and the roofline bound ``max(FLOPs / peak, bytes / HBM bandwidth)`` of a device
    (a lower bound: bf16 peak, perfect overlap). ``seen``: the rows of programs compiled before
    (filled here, keyed by the program's text with its shardings, the target and the devices): a
    program seen before is not compiled again, its row names the first (``same_as``; ``cached``
    where the figures come from :func:`load_fit_cache`). Every row has its ``key``
    (:func:`program_key`)."""
    hbm = hbm_bytes(t, n_devices)
    t0 = time.perf_counter()
    lowered = p.fn.lower(*p.args)
    # two checks of a study share its fine-tuning phases: the figures (and compile time) of the
    # first compile, under this program's name
    key = program_key(lowered, t, n_devices)
    if seen is not None and key in seen:
        return {**seen[key], "program": p.name, "steps": p.steps, "same_as": seen[key]["program"], "key": key}
    try:
        compiled = lowered.compile()
    except Exception as e:  # the TPU compiler refuses a program that cannot fit its HBM
        need = OOM.search(str(e))
        if need is None:
            raise
        return out_of_memory(p, float(need.group(1)) * GIB, hbm, time.perf_counter() - t0)
    compile_s = time.perf_counter() - t0
    m = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = (cost[0] if cost else {}) if isinstance(cost, (list, tuple)) else (cost or {})
    arg, out, temp = m.argument_size_in_bytes, m.output_size_in_bytes, m.temp_size_in_bytes
    code, alias = m.generated_code_size_in_bytes, m.alias_size_in_bytes
    total = arg + out + temp + code - alias
    est = cost.get("optimal_seconds")
    row = {
        "program": p.name,
        "arguments_bytes": int(arg),
        "outputs_bytes": int(out),
        "temp_bytes": int(temp),
        "code_bytes": int(code),
        "alias_bytes": int(alias),
        "total_bytes": int(total),
        "hbm_bytes": int(hbm),
        "fits": bool(total <= hbm),
        "flops": float(cost.get("flops", float("nan"))),
        "bytes_accessed": float(cost.get("bytes accessed", float("nan"))),
        "estimate_s": None if est is None or est < 0 else float(est),
        "roofline_s": roofline(t, n_devices, cost),
        "steps": p.steps,
        "compile_s": compile_s,
        "key": key,
    }
    if seen is not None:
        seen[key] = row
    return row


COLUMNS = [
    ("total_mib", "MiB per device", "float"),
    ("hbm_frac", "of its HBM", "pct"),
    ("arguments_mib", "arguments MiB", "float"),
    ("temp_mib", "temporaries MiB", "float"),
    ("gflop", "GFLOP per call", "float"),
    ("estimate_ms", "XLA estimate (ms)", "float"),
    ("roofline_ms", "roofline bound (ms)", "float"),
    ("compile_s", "compile (s)", "seconds"),
]


def result_rows(analysed: list[dict]) -> dict:
    """The analysed programs as results rows (one value each: a compile has no seeds); the
    estimate is per step for a one-step program, per call otherwise (NaN: the compiler gave
    none, as on a CPU)."""
    out = {}
    for r in analysed:
        est = r["estimate_s"]
        per = {
            "total_mib": r["total_bytes"] / 2**20,
            "hbm_frac": r["total_bytes"] / r["hbm_bytes"],
            "arguments_mib": r["arguments_bytes"] / 2**20,
            "temp_mib": r["temp_bytes"] / 2**20,
            "gflop": r["flops"] / 1e9,
            "estimate_ms": float("nan") if est is None else est * 1e3,
            "roofline_ms": float("nan") if r["roofline_s"] is None else r["roofline_s"] * 1e3,
            "compile_s": r["compile_s"],
        }
        out[r["program"]] = results.row({k: [v] for k, v in per.items()}, analysis=r)
    return out


def check_fits(rows: list[dict], t: Target) -> None:
    """A ConfigError naming the first program that does not fit a device of ``t``."""
    for r in rows:
        if not r["fits"]:
            raise ConfigError(
                f"{r['program']} needs {r['total_bytes'] / GIB:.2f} GiB per device; a {t.name} device has "
                f"{r['hbm_bytes'] / GIB:.2f} GiB: shard the model (--mesh ...,model=N), lower the batch "
                "size or the seeds, or pick a larger target"
            )
