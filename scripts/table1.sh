#!/usr/bin/env bash
# The paper's Table 1 at this machine's scale, with the GP kernels beside and intervals:
#   CNN-V  kernels (CNTK-V, CNN-GP-V) at V_TRAIN train / V_TEST test images, depths V_DEPTHS;
#   CNN-GAP kernels (CNTK-GAP with the paper's "fix", CNN-GP-GAP) at GAP_TRAIN / GAP_TEST, depths
#   GAP_DEPTHS, and CNN-V kernels on the same images (the paired GAP vs V comparison);
# kernel regression (no ridge, and a ridge chosen by cross-validation on the training kernel), then
# the report: table1.table.md (accuracies with 95 % intervals, cost per kernel), table1.tests.md
# (McNemar / paired bootstrap: GAP vs V, CNTK vs CNN-GP, depth to depth), table1.paper.md (the
# paper's CIFAR-10 column, apart), table1.png.
#
#   scripts/table1.sh [DATA] [LAUNCHER] [JOBS] [extra hydra overrides...]
#   scripts/table1.sh fashion_mnist                          # this 2-core machine: about 75 minutes (estimate)
#   V_TRAIN=50000 V_TEST=10000 GAP_TRAIN=50000 GAP_TEST=10000 V_DEPTHS=3,4,6,11,21 GAP_DEPTHS=3,4,6,11,21 \
#       scripts/table1.sh cifar10 slurm 64 hydra.launcher.partition=gpu    # the paper's setting
#
# Every gram step is resumable: rerun the same command after a crash or a preemption.  OUT (default
# multirun/table1_DATA_STAMP) holds the sweeps and report/; NETWORKS=RUN_DIR appends a
# kernel_vs_network run's table of finite CNNs to the report.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
DATA="${1:-fashion_mnist}"; LAUNCHER="${2:-local_parallel}"; JOBS="${3:-2}"
shift $(( $# < 3 ? $# : 3 ))
V_TRAIN="${V_TRAIN:-4000}"; V_TEST="${V_TEST:-2000}"; V_DEPTHS="${V_DEPTHS:-3,4,6,11,21}"
GAP_TRAIN="${GAP_TRAIN:-300}"; GAP_TEST="${GAP_TEST:-1000}"; GAP_DEPTHS="${GAP_DEPTHS:-3,6,11}"
PY="${PYTHON:-.venv/bin/python}"
OUT="${OUT:-multirun/table1_${DATA}_$(date +%Y-%m-%d_%H-%M-%S)}"
JOBLIST="$(seq -s, 0 $((JOBS - 1)))"
# jobs on this machine share its cores (threads = cores / jobs by default under local_parallel)
PARALLEL=(); [[ "$LAUNCHER" == local_parallel ]] && PARALLEL=(hydra.launcher.n_jobs="$JOBS")
SOLVES=()

block() {  # NAME N_TRAIN N_TEST MODEL-OVERRIDES...: gram (tiles over JOBS jobs) then solve, one sweep each
    local name="$1" ntr="$2" nte="$3"; shift 3
    local common=(data="$DATA" data.n_train="$ntr" data.n_test="$nte" dtype=float32 "$@" "${EXTRA[@]}")
    echo "== gram $name: $OUT/$name/gram" >&2
    "$PY" run.py -m experiment=gram "${common[@]}" experiment.tile=128 experiment.job="$JOBLIST" \
        experiment.num_jobs="$JOBS" hydra/launcher="$LAUNCHER" "${PARALLEL[@]}" hydra.sweep.dir="$OUT/$name/gram"
    echo "== solve $name: $OUT/$name/solve" >&2
    "$PY" run.py -m experiment=solve "${common[@]}" hydra.sweep.dir="$OUT/$name/solve"
    SOLVES+=("$OUT/$name/solve")
}

EXTRA=("$@")
block v_ntk_nngp "$V_TRAIN" "$V_TEST" model=cnn_v "model.depth=$V_DEPTHS" experiment.kind=ntk,nngp
block gap_ntk_fix "$GAP_TRAIN" "$GAP_TEST" model=cnn_gap "model.depth=$GAP_DEPTHS" experiment.kind=ntk model.fix_first_last=true
block gap_nngp "$GAP_TRAIN" "$GAP_TEST" model=cnn_gap "model.depth=$GAP_DEPTHS" experiment.kind=nngp
block v_small "$GAP_TRAIN" "$GAP_TEST" model=cnn_v "model.depth=$GAP_DEPTHS" experiment.kind=ntk,nngp
"$PY" -m experiments.harness.table1_report "${SOLVES[@]}" --out "$OUT/report" ${NETWORKS:+--networks "$NETWORKS"}
cat "$OUT/report/table1.table.md" "$OUT/report/table1.tests.md"
