#!/usr/bin/env bash
# Set up and run the whole test suite on the default Python (3.11, jax 0.10.x), then, on Python 3.12
# (jax 0.12, what Colab and accelerators run) with XLA's full optimisations as users' runs compile,
# the checks that numbers depend on. A missing Python 3.12 fails (JAXCL_SKIP_312=1 skips it on
# purpose); skipped tests are listed at the end of each run.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
python3 -m ruff check .
python3 -m ruff format --check .
bash scripts/docs.sh "$(mktemp -d)"
# two workers (one per core of the CI machine): most of the suite's time is compiling small XLA
# programs, which uses one core; tests of one file stay in one worker (module fixtures)
WORKERS="${JAXCL_TEST_WORKERS:-2}"
# the files the optimised Python 3.12 part below runs (every method's golden and mutation, the
# mesh, multi-host and resume subprocesses, the core of every level) run there only, once; the
# studies' tests here run that core on Python 3.11 too
CORE=(tests/test_compile_check.py tests/test_registry.py tests/test_llama.py tests/test_engine.py tests/test_conv.py tests/test_unlearn_ssd.py
  tests/test_checkpoint.py tests/test_parallel.py tests/test_mesh_agreement.py tests/test_multihost.py
  tests/test_conformance.py tests/test_replay.py tests/test_project_losses.py tests/test_metrics.py
  tests/test_text.py tests/test_probes.py tests/test_grpo.py tests/test_grpo_vlm.py tests/test_tasks.py tests/test_cache.py tests/test_batching.py)
TWICE=()
for f in "${CORE[@]}"; do TWICE+=("--ignore=$f"); done
[ -n "${JAXCL_SKIP_312:-}" ] && TWICE=()
python3 -m pytest -p no:cacheprovider -rs --durations=20 -n "$WORKERS" --dist loadfile "${TWICE[@]}" tests "$@"

PY312="${PY312:-/root/.pyenv/versions/3.12.1/bin/python3}"
if [ -n "${JAXCL_SKIP_312:-}" ]; then
  echo "== JAXCL_SKIP_312 is set: the Python 3.12 / optimised part is skipped =="
  exit 0
fi
if [ ! -x "$PY312" ]; then
  echo "error: Python 3.12 not found at $PY312 (set PY312=/path/to/python3.12, or JAXCL_SKIP_312=1 to skip on purpose)" >&2
  exit 1
fi
echo "== Python $("$PY312" --version | cut -d' ' -f2), XLA optimisations on =="
VENV=".venv312"
[ -x "$VENV/bin/python" ] || "$PY312" -m venv "$VENV"
PYTHON="$VENV/bin/python" EXTRAS="dev,torch,tpu" bash scripts/setup.sh
# compiled as users' runs are (the suite above ran with most optimisations off, for speed): every
# golden and its mutation check, the PyTorch / transformers parity checks, bit-exact resume,
# CLI == API, 1-vs-8-device and multi-host agreement, and the core of every level
JAXCL_TPU_COMPILER=required JAXCL_TEST_OPTIMIZE=1 "$VENV/bin/python" -m pytest -p no:cacheprovider -rs --durations=20 -n "$WORKERS" --dist loadfile "${CORE[@]}" \
  "tests/test_cl_study.py::test_main_job_tiny_writes_results_and_plots" \
  "tests/test_cl_study.py::test_cli_python_api_and_no_checkpoint_give_the_same_numbers"
