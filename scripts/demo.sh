#!/usr/bin/env bash
# The main job: install segq, start the embedded local stack (Redis, SeaweedFS S3, a worker,
# Flower), segment a demo image with all three tasks and print where the outputs are.
# Extra arguments go to `segq demo` (e.g. --keep to leave the stack running, --hub for the real models).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh worker,stack
exec segq demo "$@"
