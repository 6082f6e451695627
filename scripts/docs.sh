#!/usr/bin/env bash
# Build the documentation (API reference from the docstrings, generated method, study and
# notebook pages) with mkdocs --strict: a broken reference or docstring fails. Output: site/
#   bash scripts/docs.sh [output folder]
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
"$PYTHON" docs/gen.py
"$PYTHON" -m mkdocs build --strict --quiet -d "${1:-site}"
echo "docs built in ${1:-site}/"
