#!/usr/bin/env bash
# The tests: install segq with its test extras, then run pytest. The suite starts its own
# Redis, SeaweedFS and Celery worker processes on free loopback ports.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh worker,stack,test
exec "${PYTHON:-python3}" -m pytest "$@"
