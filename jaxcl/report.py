"""Helpers every study shares: run metadata, tables, results.json, the output folder."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import platform
import subprocess
import sys
import tempfile
from collections.abc import Iterator

import numpy as np


def versions() -> dict:
    import flax
    import jax
    import jaxlib
    import optax

    return {
        "python": sys.version.split()[0],
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "flax": flax.__version__,
        "optax": optax.__version__,
        "numpy": np.__version__,
    }


def device_info() -> dict:
    import jax

    d = jax.devices()[0]
    return {
        "platform": d.platform,
        "device_kind": d.device_kind,
        "n_devices": jax.device_count(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
    }


def git_commit() -> str:
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        return (
            subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5
            ).stdout.strip()
            or "unknown"
        )
    except Exception:
        return "unknown"


def fmt(mean: float, std: float, pct: bool = True) -> str:
    if pct:
        return f"{100 * mean:6.1f} ± {100 * std:4.1f}"
    return f"{mean:7.3f} ± {std:5.3f}"


def table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    line = lambda r: "| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), sep] + [line(r) for r in rows])


def to_jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray) or hasattr(obj, "__array__"):
        return np.asarray(obj).tolist()
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    return obj


def _umask() -> int:
    """The process's umask, read without changing it (Linux); 0o022 when unknown."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    return 0o022


def write_json(path: str, obj) -> str:
    """Write ``obj`` as JSON to ``path`` atomically and return ``path``.

    The text goes to a temporary file with a unique name in the same folder, is flushed to disk
    (fsync), then renamed over ``path``: readers see the old file or the new one, never half a
    file, and concurrent writers cannot mix their output (the last rename wins). The temporary
    file is removed when anything fails.
    """
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".results-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            os.fchmod(f.fileno(), 0o666 & ~_umask())  # mkstemp makes 0600; keep open()'s modes
            json.dump(to_jsonable(obj), f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


class OutputDirError(ValueError):
    """The output folder cannot be used (a file, not writable, or in use by another run)."""


LOCK_NAME = ".jaxcl.lock"


def prepare_out_dir(path: str) -> str:
    """Create the output folder ``path`` (and its parents) and check that it is writable.

    Call it at the start of a run, before any compilation, so that a bad ``--out`` fails in
    seconds rather than after training. Returns the absolute path. Raises :class:`OutputDirError`
    when ``path`` is an existing file, cannot be created, or no file can be written in it.
    """
    full = os.path.abspath(os.path.expanduser(path))
    if os.path.exists(full) and not os.path.isdir(full):
        raise OutputDirError(
            f"output folder {full} exists and is a file, not a folder; pass --out to a writable folder"
        )
    try:
        os.makedirs(full, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=full, prefix=".jaxcl-probe-", suffix=".tmp")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise OutputDirError(
            f"output folder {full} cannot be created or written ({e.strerror or e}); "
            f"pass --out to a writable folder"
        ) from e
    return full


def in_out_dir(out: str | None, fn):
    """``fn()`` with the output folder ``out`` prepared (:func:`prepare_out_dir`: a bad folder
    fails before any compilation) and locked for the run (:func:`lock_out_dir`); just ``fn()``
    when ``out`` is None. What every study runner's ``run`` and ``sweep`` do around their work."""
    if not out:
        return fn()
    prepare_out_dir(out)
    with lock_out_dir(out):
        return fn()


@contextlib.contextmanager
def lock_out_dir(path: str) -> Iterator[str]:
    """Hold an exclusive lock on the output folder ``path`` for the duration of a run.

    Takes a non-blocking ``flock`` on ``<path>/.jaxcl.lock`` and writes this process's pid into
    it; yields the lock file's path and releases the lock on exit. Raises
    :class:`OutputDirError` naming the other process's pid when another live process holds it.
    A lock file left by a killed run does not block: the kernel drops a dead process's lock.
    """
    lock_path = os.path.join(prepare_out_dir(path), LOCK_NAME)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            raise OutputDirError(
                f"another jaxcl run (pid {holder}) is writing to {os.path.dirname(lock_path)}; "
                f"wait for it or pass another --out"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        os.fsync(fd)
        try:
            yield lock_path
        finally:
            os.ftruncate(fd, 0)  # the next run (or a reader) sees no stale pid
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def timed_jit(fn, *args, cache: dict | None = None, key=None):
    """``(outputs, compile seconds, run seconds)`` of ``jax.jit(fn)(*args)``; with ``cache``, the
    program compiled for ``key`` is kept there and reused (0 compile seconds) by later calls."""
    import time

    import jax

    t0 = time.perf_counter()
    if cache is not None and key in cache:
        compiled = cache[key]
    else:
        compiled = jax.jit(fn).lower(*args).compile()
        if cache is not None:
            cache[key] = compiled
    t1 = time.perf_counter()
    out = jax.block_until_ready(compiled(*args))
    return out, t1 - t0, time.perf_counter() - t1
