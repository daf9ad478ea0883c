#!/usr/bin/env bash
# Every GPU check and benchmark of the suite in one command, for a short lease on a GPU machine that
# already has torch, triton and numba (no install step; nothing is fetched):
#   bash benchmarks/gpu_session.sh [OUT_DIR]
# 1. benchmarks/gpu_kernels.py --check --sweep: the conformance suite on CUDA, the triton backend
#    against planes / reference in float64 and float32, then entries/s per backend and num_warps;
# 2. benchmarks/empirical_ntk.py --methods and --large on CUDA: the empirical NTK's methods against a
#    per-sample autograd loop, and large widths against the exact kernel (time, peak GPU memory).
# Each step has its own time limit, so one that hangs does not cost the others; logs go to OUT_DIR.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${1:-${OUT:-/tmp/gpu_session}}"
mkdir -p "$OUT_DIR"
export PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"
step() {  # step NAME SECONDS CMD...
    local name=$1 secs=$2; shift 2
    echo "=== $name (limit ${secs}s): $*"
    timeout "$secs" "$@" 2>&1 | tee "$OUT_DIR/$name.log"
    echo "=== $name: exit ${PIPESTATUS[0]}"
}
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  "$PY" -c 'import sys, torch, triton, numba; print(sys.version.split()[0], "torch", torch.__version__, "triton", triton.__version__, "numba", numba.__version__, "cuda", torch.cuda.is_available())'
} 2>&1 | tee "$OUT_DIR/env.log"
step gpu_kernels "${GPU_KERNELS_S:-300}" "$PY" benchmarks/gpu_kernels.py --check --sweep --budget-s "${GPU_BUDGET_S:-220}"
step entk_methods "${ENTK_S:-60}" "$PY" benchmarks/empirical_ntk.py --methods --device cuda --n 128 --width 512 --size 32 --skip gram
step entk_large "${ENTK_S:-60}" "$PY" benchmarks/empirical_ntk.py --large --device cuda
