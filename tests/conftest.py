import atexit
import os
import shutil
import tempfile

# keep tests deterministic and light on the 2-core CI machine
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
os.environ.setdefault("TQDM_DISABLE", "1")

# The scripts and CLIs the tests start as subprocesses import this checkout's jaxcl, whatever
# the environment's installed copy points at (an editable install of another clone, or none).
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (_ROOT, os.environ.get("PYTHONPATH", "")) if p)

# Compile with most XLA optimisations off (jax_disable_most_optimizations): the suite's time is
# mostly compiling small programs, this cuts its CPU time by about 40 %, and no value a test
# checks depends on it. JAXCL_TEST_OPTIMIZE=1 compiles as users' runs do (scripts/test.sh's Python
# 3.12 run does, so the optimising path is tested too).
if not os.environ.get("JAXCL_TEST_OPTIMIZE"):
    os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")

# One persistent XLA compilation cache for this test session (a fresh folder, so no result depends
# on an earlier run): the many tests and subprocesses that compile the same tiny programs compile
# them once. Set JAXCL_TEST_NO_XLA_CACHE=1 to compile everything afresh.
if not os.environ.get("JAXCL_TEST_NO_XLA_CACHE") and "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _cache = tempfile.mkdtemp(prefix="jaxcl-test-xla-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")


def pytest_collection_modifyitems(session, config, items):
    """The notebooks run last: they run the studies' tiny variants again, and so find most of
    their programs in the session's compilation cache, compiled by the studies' own tests. Their
    two halves are two files (tests/test_notebooks.py, tests/test_notebooks_second_half.py), so
    the two workers of ``--dist loadfile`` run them at once."""
    items.sort(key=lambda item: item.nodeid.startswith("tests/test_notebooks"))
