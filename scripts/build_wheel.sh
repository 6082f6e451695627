#!/usr/bin/env bash
# Build the jaxcl wheel: the package with every study config inside (a plain `pip install` of it
# lists them all in `jaxcl list`), for a notebook's install cell on Colab or any machine without
# this checkout. Prints the wheel's path.
#   bash scripts/build_wheel.sh [OUT_DIR]          # default: dist/
# On Colab: upload the wheel (Files pane) and set JAXCL_SOURCE = "/content/<the wheel's name>" in
# the notebook's first code cell.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
mkdir -p "${1:-dist}"
OUT="$(cd "${1:-dist}" && pwd)"
SRC="$(mktemp -d)"
trap 'rm -rf "$SRC"' EXIT
# built from a copy of what the wheel holds (tracked and new files, not ignored ones), so the
# checkout gets no build/ or *.egg-info
PARTS=(pyproject.toml setup.py README.md jaxcl experiments)
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  git ls-files -z -co --exclude-standard -- "${PARTS[@]}" | tar --null -T - -cf - | tar -xf - -C "$SRC"
else
  cp -r "${PARTS[@]}" "$SRC/"
fi
# offline with the installed setuptools when it is new enough, else in an isolated build environment
isolation=()
if "$PYTHON" -c 'import setuptools, sys; sys.exit(int(setuptools.__version__.split(".")[0]) < 68)' 2>/dev/null; then
  isolation=(--no-build-isolation)
fi
"$PYTHON" -m pip wheel -q --disable-pip-version-check --no-deps "${isolation[@]}" -w "$OUT" "$SRC" >&2
ls -t "$OUT"/jaxcl-*.whl | head -1
