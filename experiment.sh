#!/usr/bin/env bash
# Sweeps like the paper's experiment.sh: edit the variables at the top; loops over seeds and modes.
# Only calls main.py. Example: SEEDS="1 2 3" MODES="rm" DATASET=mnist JOBS=2 bash experiment.sh
# Every run gets --resume: started again, the sweep skips finished runs and continues killed ones.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PY:-.venv/bin/python}; [ -x "$PY" ] || PY=python3

# CIL CONFIG
MODES=${MODES:-"rm"}                 # finetune rm (baselines: see README)
MEM_MANAGE=${MEM_MANAGE:-"default"}  # default, random, reservoir, uncertainty
SEEDS=${SEEDS:-"1 2 3"}
DATASET=${DATASET:-"mnist"}          # mnist, fashion_mnist (any prepared folder under dataset/)
STREAM=${STREAM:-"online"}           # online, offline
EXP=${EXP:-"blurry10"}               # disjoint, blurry10, blurry30
MEM_SIZE=${MEM_SIZE:-500}
TRANS=${TRANS-"cutmix autoaug"}      # cutmix cutout randaug autoaug ("" for none)
UNCERT_METRIC=${UNCERT_METRIC:-"vr_randaug"}
JOINT_ACC=${JOINT_ACC:-0.0}
COLLECTIONS=${COLLECTIONS:-""}       # e.g. ../shared/collections/mnist to use the paper's split files
OUT_DIR=${OUT_DIR:-"."}              # root of logs/ results/ tensorboard/
EXTRA=${EXTRA:-""}                   # any other main.py flags
JOBS=${JOBS:-1}                      # runs at a time; with more than 1, each run uses THREADS torch threads
THREADS=${THREADS:-1}

case "$DATASET" in
  mnist|fashion_mnist) MODEL_NAME=mlp400 N_EPOCH=5 BATCHSIZE=16 LR=0.05 OPT_NAME=sgd SCHED_NAME=cos TOPK=1
    N_CLS_A_TASK=2 N_TASKS=5; if [[ "$EXP" == *blurry* ]]; then N_INIT_CLS=10; else N_INIT_CLS=2; fi ;;
  *) echo "experiment.sh: no preset for '$DATASET' (edit this script)"; exit 1 ;;
esac
N_EPOCH=${N_EPOCH_OVERRIDE:-$N_EPOCH}

COLL_FLAG=""; [ -n "$COLLECTIONS" ] && COLL_FLAG="--collections_dir $COLLECTIONS"
run_one() {  # MODE SEED
  # shellcheck disable=SC2086
  "$PY" main.py --mode "$1" --mem_manage "$MEM_MANAGE" --exp_name "$EXP" --dataset "$DATASET" \
    --stream_env "$STREAM" --init_opt --topk "$TOPK" \
    --n_tasks "$N_TASKS" --n_cls_a_task "$N_CLS_A_TASK" --n_init_cls "$N_INIT_CLS" --rnd_seed "$2" \
    --model_name "$MODEL_NAME" --opt_name "$OPT_NAME" --sched_name "$SCHED_NAME" --lr "$LR" \
    --batchsize "$BATCHSIZE" --n_epoch "$N_EPOCH" --memory_size "$MEM_SIZE" \
    --transforms $TRANS --uncert_metric "$UNCERT_METRIC" --joint_acc "$JOINT_ACC" --out_dir "$OUT_DIR" \
    --resume $COLL_FLAG $EXTRA
}
FAILED=0
for MODE in $MODES; do
  for SEED in $SEEDS; do
    echo "=== $MODE seed $SEED ($DATASET $EXP $STREAM, transforms: ${TRANS:-none})"
    if [ "$JOBS" -le 1 ]; then
      run_one "$MODE" "$SEED" || FAILED=1
    else
      while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n || FAILED=1; done
      ( OMP_NUM_THREADS=$THREADS run_one "$MODE" "$SEED" >/dev/null 2>&1 \
          && echo "=== done: $MODE seed $SEED" || { echo "=== FAILED: $MODE seed $SEED (see its log)"; exit 1; } ) &
    fi
  done
done
for pid in $(jobs -p); do wait "$pid" || FAILED=1; done
"$PY" -m utils.summarize "$OUT_DIR/results/$DATASET" --metrics A_last A_last_final || true
echo "TensorBoard: tensorboard --logdir $OUT_DIR/tensorboard/$DATASET"
exit "$FAILED"
