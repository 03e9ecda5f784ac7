#!/usr/bin/env bash
# The GPU benchmark (bench/gpu.py: the article's loop against segq's worker path) on a bare CUDA
# host that has torch, transformers, OpenCV, numpy and Pillow but no network and no PyAV.
#
#   scripts/gpu_bench.sh [--with-scipy]     here, with a package index: download the wheels the
#                                           host lacks into .whl/ (git-ignored)
#   scripts/gpu_bench.sh --run [OPTIONS]    on the host: install what is missing from .whl/ into a
#                                           private folder, then `python -m bench.gpu OPTIONS`;
#                                           with $OUT set, the log and JSON are written there
#
# For example: --run --device cuda (the article against segq at 1080p with Swin-L), or
# --run --device cuda --compile reduce-overhead --compare-compile (segq eager against segq with
# torch.compile, SEGQ_COMPILE; compile time reported apart; Triton needs a C compiler on the host).
# Every option: --run --help.
#
# Wheels: PyAV, and redis (workers.media.video -> segq.media -> segq.jobs imports it; pure Python).
# scipy (which transformers' Mask2Former needs to build the model) only with --with-scipy: it is
# about 36 MB per Python version, and CUDA hosts with torch usually have it. PyAV is pinned to
# one abi3 wheel that serves every Python >= 3.11 (segq needs 3.11+), so .whl/ stays near 35 MB.
#
# Variables: PYTHON (default python3), SEGQ_WHL_PYTHONS (default "3.11 3.12"), SEGQ_AV_VERSION
# (default 18.1.0), SEGQ_BENCH_SITE (install folder, default /tmp/segq-bench-site).
# Nothing is installed into the host's environment: --target goes to the private folder, which
# is put on PYTHONPATH with the repository, and only packages that do not import are installed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
WHL=.whl
PYTHONS="${SEGQ_WHL_PYTHONS:-3.11 3.12}"
AV_VERSION="${SEGQ_AV_VERSION:-18.1.0}"
SITE="${SEGQ_BENCH_SITE:-/tmp/segq-bench-site}"

fetch() {
    local packages=("av==$AV_VERSION" redis)
    if [[ "${1:-}" == "--with-scipy" ]]; then packages+=(scipy); fi
    mkdir -p "$WHL"
    for version in $PYTHONS; do
        echo "gpu_bench: wheels for CPython $version: ${packages[*]}"
        "$PY" -m pip download -q --no-deps --only-binary=:all: --implementation cp --python-version "$version" \
            --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
            -d "$WHL" "${packages[@]}"
    done
    ls -l "$WHL"
    du -sh "$WHL"
}

run() {
    "$PY" - <<'EOF'
import sys
if sys.version_info < (3, 11):
    sys.exit(f"gpu_bench: segq needs Python >= 3.11, this is {sys.version.split()[0]}")
EOF
    export PYTHONPATH="$PWD:$SITE${PYTHONPATH:+:$PYTHONPATH}"
    local missing=() module
    for module in av redis scipy; do
        "$PY" -c "import $module" 2>/dev/null || missing+=("$module")
    done
    if ((${#missing[@]})); then
        echo "gpu_bench: installing ${missing[*]} from $WHL/ into $SITE"
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --find-links "$WHL" --target "$SITE" "${missing[@]}"
    fi
    export PYTHONUNBUFFERED=1
    if [[ -n "${OUT:-}" ]]; then
        mkdir -p "$OUT"
        "$PY" -m bench.gpu "$@" --json "$OUT/gpu_bench.json" 2>&1 | tee "$OUT/gpu_bench.log"
    else
        exec "$PY" -m bench.gpu "$@"
    fi
}

case "${1:-}" in
    --run) shift; run "$@" ;;
    ""|--with-scipy) fetch "$@" ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0" ;;
    *) echo "usage: scripts/gpu_bench.sh [--with-scipy] | --run [bench.gpu options]" >&2; exit 2 ;;
esac
