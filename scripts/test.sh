#!/usr/bin/env bash
# Fresh machine -> installed mrgen -> the test suite. Real MRI tests read ../shared/data (or
# $MRGEN_SHARED_DATA) and skip when it is absent.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
# nnU-Net's own integrity check runs on our export when these are present (no torchvision: --no-deps)
python -m pip install --quiet --no-deps -r requirements/nnunet-check.txt
export MRGEN_SHARED_DATA=${MRGEN_SHARED_DATA:-$(cd .. && pwd)/shared/data}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
python -m pytest -q -p no:cacheprovider --timeout=900 "$@"
