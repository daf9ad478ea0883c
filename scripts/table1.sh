#!/usr/bin/env bash
# The paper's Table 1 pipeline: CNTK-V and CNTK-GAP at depths 3, 4, 6, 11, 21, kernel regression,
# our accuracy beside the paper's CIFAR-10 numbers.
#
#   scripts/table1.sh DATA N_TRAIN N_TEST [LAUNCHER] [JOBS_PER_KERNEL] [extra hydra overrides...]
#
#   scripts/table1.sh fashion_mnist 300 300                        # this 2-core machine
#   scripts/table1.sh cifar10 50000 10000 slurm 64 hydra.launcher.partition=gpu   # the paper's setting
#
# Step 1 (gram) computes every kernel matrix in tiles, JOBS_PER_KERNEL Hydra jobs per kernel (with
# local_parallel also the processes at once, each with nproc / JOBS threads), and
# is resumable: rerun the same command after a crash or a preemption.  Step 2 (solve) runs kernel
# regression on each store (ridges from experiment.ridges): accuracy with no ridge (the paper's setting)
# and with the ridge chosen by cross-validation on the training kernel; the table lands in the solve
# sweep folder's table.md (and summary.csv).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
DATA="${1:?usage: scripts/table1.sh DATA N_TRAIN N_TEST [LAUNCHER] [JOBS_PER_KERNEL] [overrides]}"
NTR="${2:?N_TRAIN}"; NTE="${3:?N_TEST}"; LAUNCHER="${4:-local_parallel}"; JOBS="${5:-2}"
shift $(( $# < 5 ? $# : 5 ))
PY="${PYTHON:-.venv/bin/python}"
STAMP="$(date +%Y-%m-%d_%H-%M-%S)"
OUT="multirun/table1_${DATA}_${NTR}x${NTE}_${STAMP}"
JOBLIST="$(seq -s, 0 $((JOBS - 1)))"
# jobs on this machine share its cores (numba and torch threads per job); on a cluster each job uses
# the cores its scheduler granted (threads=0)
THREADS=0; PARALLEL=()
if [[ "$LAUNCHER" == local_parallel ]]; then
    THREADS=$(( $(nproc) / JOBS > 0 ? $(nproc) / JOBS : 1 )); PARALLEL=(hydra.launcher.n_jobs="$JOBS")
fi
COMMON=(data="$DATA" data.n_train="$NTR" data.n_test="$NTE" model=cnn_gap "model.readout=gap,flatten"
        "model.depth=3,4,6,11,21" dtype=float32 "$@")
echo "== gram: $OUT/gram" >&2
"$PY" run.py -m experiment=gram "${COMMON[@]}" experiment.tile=128 experiment.job="$JOBLIST" experiment.num_jobs="$JOBS" \
    threads="$THREADS" hydra/launcher="$LAUNCHER" "${PARALLEL[@]}" hydra.sweep.dir="$OUT/gram"
echo "== solve: $OUT/solve" >&2
"$PY" run.py -m experiment=solve "${COMMON[@]}" hydra.sweep.dir="$OUT/solve"
cat "$OUT/solve/table.md"
