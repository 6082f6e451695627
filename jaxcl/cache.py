"""The persistent XLA compilation cache (on by default for ``jaxcl run`` / ``jaxcl sweep`` and the
benchmarks) and a count of what a run compiles.

Short studies and one-shot methods (SSD, a TOFU tiny run) spend most of their time compiling; a
second run of the same programs, in this process or another, should not pay that again. JAX keeps
compiled executables in a folder keyed by the program, its shapes, the jax/XLA versions and the
device, and writes each entry atomically (a temporary file renamed into place), so two processes
may share the folder: the slower writer of the same entry replaces an identical file.

Where the cache lives, first match wins:

* ``JAX_COMPILATION_CACHE_DIR`` (jax's own variable: left untouched),
* ``JAXCL_XLA_CACHE``: ``0`` / ``off`` / ``false`` turns it off, any other value is the folder,
* ``$XDG_CACHE_HOME/jaxcl/xla`` (``~/.cache/jaxcl/xla``).

``jaxcl run --no-xla-cache`` turns it off for one run. The folder grows with every distinct
program; deleting it is always safe.
"""

from __future__ import annotations

import os
import time
import warnings

ENV = "JAXCL_XLA_CACHE"
OFF = ("0", "off", "false", "no", "")
MIN_COMPILE_SECS = 0.2  # programs that compile faster than this are not worth a file


def default_dir() -> str:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "jaxcl", "xla")


def cache_dir() -> str | None:
    """The folder the cache would use, or None when it is turned off."""
    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return os.environ["JAX_COMPILATION_CACHE_DIR"]
    if ENV in os.environ:
        v = os.environ[ENV].strip()
        return None if v.lower() in OFF else os.path.expanduser(v)
    return default_dir()


def enable(path: str | None | bool = None) -> str | None:
    """Turn the persistent cache on (``path``: a folder; None: :func:`cache_dir`; False: off).
    Returns the folder in use, or None. A folder that cannot be created turns the cache off with
    a warning instead of failing the run."""
    import jax

    if path is False:
        jax.config.update("jax_compilation_cache_dir", None)
        jax.config.update("jax_enable_compilation_cache", False)
        return None
    folder = cache_dir() if path is None or path is True else os.path.expanduser(str(path))
    if folder is None:
        jax.config.update("jax_enable_compilation_cache", False)
        return None
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        warnings.warn(
            f"XLA compilation cache off: cannot create {folder} ({e}); set {ENV}=<folder>", stacklevel=2
        )
        return None
    jax.config.update("jax_enable_compilation_cache", True)
    jax.config.update("jax_compilation_cache_dir", folder)
    if not os.environ.get("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"):
        jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECS)
    return folder


class CompileStats:
    """Counts, while active, the XLA programs built (compiled, or loaded from the persistent
    cache: ``cache_hits``) and the seconds spent on them::

        with CompileStats() as c:
            run()
        c.summary()  # {'programs': 12, 'cache_hits': 9, 'compile_s': 3.1, 'wall_s': 20.4}
    """

    def __init__(self):
        self.programs = self.hits = self.misses = 0
        self.compile_s = 0.0
        self.wall_s = 0.0
        self._active = False

    def _on_event(self, name, **kw):
        if not self._active:
            return
        if name == "/jax/compilation_cache/cache_hits":
            self.hits += 1
        elif name == "/jax/compilation_cache/cache_misses":
            self.misses += 1

    def _on_duration(self, name, secs, **kw):
        if self._active and name == "/jax/core/compile/backend_compile_duration":
            self.programs += 1
            self.compile_s += secs

    def __enter__(self):
        from jax import monitoring

        monitoring.register_event_listener(self._on_event)
        monitoring.register_event_duration_secs_listener(self._on_duration)
        self._active, self._t0 = True, time.perf_counter()
        return self

    def __exit__(self, *exc):
        from jax import monitoring

        self._active = False
        self.wall_s = time.perf_counter() - self._t0
        for unregister, fn in (
            (getattr(monitoring, "unregister_event_listener", None), self._on_event),
            (getattr(monitoring, "unregister_event_duration_listener", None), self._on_duration),
        ):
            if unregister is not None:
                try:
                    unregister(fn)
                except (AssertionError, ValueError, KeyError):
                    pass
        return False

    def summary(self) -> dict:
        return {
            "programs": self.programs,
            "cache_hits": self.hits,
            "cache_misses": self.misses,
            "compile_s": round(self.compile_s, 3),
            "wall_s": round(self.wall_s, 3),
        }

    def line(self) -> str:
        s = self.summary()
        return (
            f"XLA programs: {s['programs']} built in {s['compile_s']:.1f} s "
            f"({s['cache_hits']} found in the persistent cache)"
        )
