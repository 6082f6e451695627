"""The persistent compilation cache: where it lives, that it can be turned off, that two processes
can fill one folder at the same time, and that a later process loads what they compiled."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp

from jaxcl import cache

PROGRAM = r"""
import json, sys
import jax, jax.numpy as jnp
from jaxcl import cache
folder = cache.enable()
with cache.CompileStats() as c:
    for n in (16, 24, 32):  # three distinct programs
        f = jax.jit(lambda x: jnp.tanh(x @ x.T).sum(0) + jnp.cumsum(x, 1).max())
        f(jnp.ones((n, n))).block_until_ready()
print(json.dumps({"folder": folder, **c.summary()}))
"""


def _env(folder):
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    return {**env, cache.ENV: str(folder), "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}


def test_folder_resolution_and_off(monkeypatch, tmp_path):
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
    monkeypatch.delenv(cache.ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache.cache_dir() == str(tmp_path / "jaxcl" / "xla")
    monkeypatch.setenv(cache.ENV, str(tmp_path / "elsewhere"))
    assert cache.cache_dir() == str(tmp_path / "elsewhere")
    for off in ("0", "off", "false"):
        monkeypatch.setenv(cache.ENV, off)
        assert cache.cache_dir() is None
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "jax"))  # jax's own variable wins
    assert cache.cache_dir() == str(tmp_path / "jax")


def test_enable_off_and_unwritable_folder(tmp_path):
    before = (jax.config.jax_compilation_cache_dir, jax.config.jax_enable_compilation_cache)
    try:
        assert cache.enable(False) is None and not jax.config.jax_enable_compilation_cache
        blocker = tmp_path / "file"
        blocker.write_text("not a folder")
        assert cache.enable(str(blocker / "xla")) is None  # warns, the run goes on without a cache
        assert cache.enable(str(tmp_path / "xla")) == str(tmp_path / "xla")
        assert jax.config.jax_compilation_cache_dir == str(tmp_path / "xla")
    finally:
        jax.config.update("jax_compilation_cache_dir", before[0])
        jax.config.update("jax_enable_compilation_cache", before[1])


def test_compile_stats_count_programs():
    with cache.CompileStats() as c:
        jax.jit(lambda x: x * 3.0 + 1.0)(jnp.arange(7.0)).block_until_ready()
        jax.jit(lambda x: jnp.sin(x) - 2.0)(jnp.arange(5.0)).block_until_ready()
    assert c.programs >= 2 and c.compile_s > 0 and c.wall_s >= c.compile_s
    assert "XLA programs: " in c.line()


def test_two_processes_share_one_folder_and_a_third_loads_from_it(tmp_path):
    folder = tmp_path / "xla"
    run = lambda: subprocess.Popen(
        [sys.executable, "-c", PROGRAM],
        env=_env(folder),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    first = [run(), run()]  # at the same time, same programs, one fresh folder
    outs = []
    for p in first:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-2000:]
        outs.append(json.loads(out.strip().splitlines()[-1]))
    assert all(o["folder"] == str(folder) and o["programs"] >= 3 for o in outs)
    entries = [f for f in os.listdir(folder) if not f.startswith(".")]
    assert len(entries) >= 3  # every program of the loop was written
    third = run()
    out, err = third.communicate(timeout=300)
    assert third.returncode == 0, err[-2000:]
    warm = json.loads(out.strip().splitlines()[-1])
    assert warm["cache_hits"] >= 3 and warm["cache_misses"] == 0, warm
