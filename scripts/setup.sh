#!/usr/bin/env bash
# Set up mrgen in ./.venv on a fresh machine (CPU torch from the local wheel; no torchvision).
# On a GPU machine set MRGEN_TORCH to the torch you want, e.g. MRGEN_TORCH="torch==2.13.0" or "torch".
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install --quiet --upgrade pip
# torch first, pinned, so nothing below pulls a multi-GB CUDA build
python -m pip install --quiet "${MRGEN_TORCH:-torch==2.13.0}"
python -m pip install --quiet -e ".[test]"
if python -c "import torchvision" 2>/dev/null; then
  echo "warning: torchvision is installed in .venv; mrgen does not use it (it is broken beside the CPU torch)" >&2
fi
echo "mrgen installed in $(pwd)/.venv"
