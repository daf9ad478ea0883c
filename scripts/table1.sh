#!/usr/bin/env bash
# The paper's Table 1 at this machine's scale, with the GP kernels beside and intervals:
#   CNN-V  kernels (CNTK-V, CNN-GP-V) at V_TRAIN train / V_TEST test images, depths V_DEPTHS;
#   CNN-GAP kernels (CNTK-GAP with and without the paper's "fix", CNN-GP-GAP) at GAP_TRAIN / GAP_TEST,
#   depths GAP_DEPTHS, and the CNN-V kernels on the same images, also with and without fix (the paired
#   GAP vs V comparison at equal fix); every depth and both kinds of one network, and its fix NTK, in one pass;
#   Myrtle-5 and Myrtle-10 (CNTK, CNN-GP) at MYRTLE_TRAIN / MYRTLE_TEST as extra rows;
# kernel regression (no ridge, and a ridge chosen by cross-validation on the training kernel), then
# the report: table1.table.md (accuracies with 95 % intervals, cost per kernel), table1.tests.md
# (McNemar / paired bootstrap: GAP vs V, CNTK vs CNN-GP, depth to depth), table1.paper.md (the
# paper's CIFAR-10 column, apart), table1.png.
#
#   scripts/table1.sh [DATA] [LAUNCHER] [JOBS] [extra hydra overrides...]
#   scripts/table1.sh fashion_mnist                          # this 2-core machine: 140 min (87 min with GAP_TEST=1000)
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
GAP_TRAIN="${GAP_TRAIN:-500}"; GAP_TEST="${GAP_TEST:-2000}"; GAP_DEPTHS="${GAP_DEPTHS:-3,6,11}"
# Myrtle rows (Shankar et al. 2020; pooled, so each depth and kind is its own recursion): CNTK and
# CNN-GP of Myrtle-5 and Myrtle-10; MYRTLE_DEPTHS="" leaves them out
MYRTLE_TRAIN="${MYRTLE_TRAIN:-150}"; MYRTLE_TEST="${MYRTLE_TEST:-500}"; MYRTLE_DEPTHS="${MYRTLE_DEPTHS-5,10}"
PY="${PYTHON:-.venv/bin/python}"
OUT="${OUT:-multirun/table1_${DATA}_$(date +%Y-%m-%d_%H-%M-%S)}"
JOBLIST="$(seq -s, 0 $((JOBS - 1)))"
# jobs on this machine share its cores (threads = cores / jobs by default under local_parallel)
PARALLEL=(); [[ "$LAUNCHER" == local_parallel ]] && PARALLEL=(hydra.launcher.n_jobs="$JOBS")
SOLVES=()

# one gram pass per network fills the stores of every depth (and both kinds where asked, and with
# experiment.also_fix the NTK stores of its fix variant); solve then reads each store by its own
# model.depth, experiment.kind and model.fix_first_last
deepest() { tr , '\n' <<<"$1" | sort -n | tail -1; }
others() { local d="$1" all="$2"; tr , '\n' <<<"$all" | grep -vx "$d" | paste -sd, -; }

block() {  # NAME FIX_NAME N_TRAIN N_TEST DEPTHS KINDS MODEL-OVERRIDES...: one gram pass (tiles over JOBS jobs),
           # then solve; FIX_NAME other than "-": the same pass fills the fix NTK stores, solved as FIX_NAME
    local name="$1" fix="$2" ntr="$3" nte="$4" depths="$5" kinds="$6"; shift 6
    local common=(data="$DATA" data.n_train="$ntr" data.n_test="$nte" dtype=float32 "$@" "${EXTRA[@]}")
    local top; top="$(deepest "$depths")"
    local gram_kind="$kinds"; [[ "$kinds" == ntk,nngp ]] && gram_kind=both
    local also_fix=true; [[ "$fix" == - ]] && also_fix=false
    echo "== gram $name: $OUT/$name/gram" >&2
    "$PY" run.py -m experiment=gram "${common[@]}" model.depth="$top" "experiment.depths=[$(others "$top" "$depths")]" \
        experiment.kind="$gram_kind" experiment.also_fix="$also_fix" experiment.tile=128 \
        experiment.job="$JOBLIST" experiment.num_jobs="$JOBS" \
        hydra/launcher="$LAUNCHER" "${PARALLEL[@]}" hydra.sweep.dir="$OUT/$name/gram"
    echo "== solve $name: $OUT/$name/solve" >&2
    "$PY" run.py -m experiment=solve "${common[@]}" model.depth="$depths" experiment.kind="$kinds" \
        hydra.sweep.dir="$OUT/$name/solve"
    SOLVES+=("$OUT/$name/solve")
    [[ "$fix" == - ]] && return 0
    echo "== solve $fix: $OUT/$fix/solve" >&2
    "$PY" run.py -m experiment=solve "${common[@]}" model.fix_first_last=true model.depth="$depths" experiment.kind=ntk \
        hydra.sweep.dir="$OUT/$fix/solve"
    SOLVES+=("$OUT/$fix/solve")
}

EXTRA=("$@")
block v - "$V_TRAIN" "$V_TEST" "$V_DEPTHS" ntk,nngp model=cnn_v
# the GAP vs V comparisons at equal fix: each readout with and without the paper's fix, on the same
# images; the fix stores (gap_fix, v_small_fix) come from the same gram pass as the unfixed ones
block gap gap_fix "$GAP_TRAIN" "$GAP_TEST" "$GAP_DEPTHS" ntk,nngp model=cnn_gap
block v_small v_small_fix "$GAP_TRAIN" "$GAP_TEST" "$GAP_DEPTHS" ntk,nngp model=cnn_v
for d in ${MYRTLE_DEPTHS//,/ }; do
    block "myrtle$d" - "$MYRTLE_TRAIN" "$MYRTLE_TEST" "$d" ntk,nngp model=myrtle
done
"$PY" -m experiments.harness.table1_report "${SOLVES[@]}" --out "$OUT/report" ${NETWORKS:+--networks "$NETWORKS"}
cat "$OUT/report/table1.table.md" "$OUT/report/table1.tests.md"
