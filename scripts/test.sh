#!/usr/bin/env bash
# Set up and run the whole test suite on the default Python (3.11, jax 0.10.x), then the core
# tests on Python 3.12 (jax 0.11.x, what Colab and GPU machines run) when it is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
python3 -m ruff check .
python3 -m ruff format --check .
bash scripts/docs.sh "$(mktemp -d)"
# two workers (one per core of the CI machine): most of the suite's time is compiling small XLA
# programs, which uses one core; tests of one file stay in one worker (module fixtures)
WORKERS="${JAXCL_TEST_WORKERS:-2}"
python3 -m pytest -p no:cacheprovider -n "$WORKERS" --dist loadfile tests "$@"

PY312="${PY312:-/root/.pyenv/versions/3.12.1/bin/python3}"
if [ -x "$PY312" ] && [ -z "${JAXCL_SKIP_312:-}" ]; then
  echo "== core tests on $("$PY312" --version) =="
  VENV=".venv312"
  [ -x "$VENV/bin/python" ] || "$PY312" -m venv "$VENV"
  PYTHON="$VENV/bin/python" bash scripts/setup.sh
  # the core of every level on the newer jax, compiled with XLA's full optimisations as users'
  # runs are (the whole suite ran above with most of them off, for speed): the engine, the wrappers'
  # conformance, replay, metrics, text streams, the language-model losses, the compilation cache
  # and the main job end to end
  JAXCL_TEST_OPTIMIZE=1 "$VENV/bin/python" -m pytest -p no:cacheprovider -n "$WORKERS" --dist loadfile tests/test_engine.py \
    tests/test_conformance.py tests/test_replay.py tests/test_project_losses.py tests/test_metrics.py \
    tests/test_text.py tests/test_probes.py tests/test_lm_scale.py tests/test_grpo.py tests/test_tasks.py tests/test_cache.py tests/test_batching.py \
    "tests/test_cl_study.py::test_main_job_tiny_writes_results_and_plots"
fi
