#!/usr/bin/env bash
# Install segq with the given extras into the active Python environment.
# torch goes first, pinned, so that pip does not pull a multi-GB CUDA build as a dependency
# (set SEGQ_TORCH to choose another build, e.g. SEGQ_TORCH="torch --index-url https://download.pytorch.org/whl/cu124").
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-worker,stack}"
PY="${PYTHON:-python3}"
"$PY" -m pip install -q ${SEGQ_TORCH:-torch==2.13.0}
"$PY" -m pip install -q -e ".[${extras}]"
