#!/usr/bin/env bash
# Sweeps like the paper's experiment.sh: edit the variables at the top; loops over seeds and modes.
# Only calls main.py. Example: SEEDS="1 2 3" MODES="rm" DATASET=mnist JOBS=2 bash experiment.sh
# Every run gets --resume: started again, the sweep skips finished runs and continues killed ones.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PY:-.venv/bin/python}; [ -x "$PY" ] || PY=python3

# CIL CONFIG
MODES=${MODES:-"rm"}                 # finetune rm (every method: see README, methods and settings)
MEM_MANAGE=${MEM_MANAGE:-"default"}  # default, random, reservoir, uncertainty, prototype, class_balanced
SEEDS=${SEEDS:-"1 2 3"}
DATASET=${DATASET:-"mnist"}          # mnist, fashion_mnist, cifar10, cifar100, imagenet or any folder under dataset/
STREAM=${STREAM:-"online"}           # online, offline
EXP=${EXP:-"blurry10"}               # disjoint, blurry10, blurry30, iblurry50_10, siblurry50_10
MEM_SIZE=${MEM_SIZE:-""}             # "" = the dataset's preset (500 for MNIST and CIFAR-10, 2000 for CIFAR-100)
TRANS=${TRANS-"cutmix autoaug"}      # cutmix cutout randaug autoaug ("" for none)
UNCERT_METRIC=${UNCERT_METRIC:-"vr_randaug"}
JOINT_ACC=${JOINT_ACC:-""}           # a number or auto; "" = none: I_last is not computed
COLLECTIONS=${COLLECTIONS:-""}       # e.g. ../shared/collections/mnist to use the paper's split files
OUT_DIR=${OUT_DIR:-"."}              # root of logs/ results/ tensorboard/
EXTRA=${EXTRA:-""}                   # any other main.py flags
JOBS=${JOBS:-1}                      # runs at a time; with more than 1, each run uses THREADS torch threads
THREADS=${THREADS:-1}
ENGINE=${ENGINE:-"local"}            # local (this machine, JOBS at a time) or ray (RAY_ADDRESS's cluster, or a local one)
CPUS_PER_RUN=${CPUS_PER_RUN:-1}      # ENGINE=ray: CPUs (and torch threads) of each run
GPUS_PER_RUN=${GPUS_PER_RUN:-0}      # ENGINE=ray: GPUs of each run; a fraction such as 0.25 packs 4 runs on one GPU
RETRIES=${RETRIES:-2}                # ENGINE=ray: retries (with --resume) of a run that fails or whose worker dies
RAY_CPUS=${RAY_CPUS:-""}             # ENGINE=ray without RAY_ADDRESS: cores of the local Ray ("" = all)

# The model, epochs, batch size, learning rate, optimizer, schedule, task split sizes and top-k are
# the dataset's preset (utils/data/datasets.py, the public scripts' settings), which main.py fills in.
OPT=()
[ -n "$COLLECTIONS" ] && OPT+=(--collections_dir "$COLLECTIONS")
[ -n "$MEM_SIZE" ] && OPT+=(--memory_size "$MEM_SIZE")
[ -n "$JOINT_ACC" ] && OPT+=(--joint_acc "$JOINT_ACC")
[ -n "${N_EPOCH_OVERRIDE:-}" ] && OPT+=(--n_epoch "$N_EPOCH_OVERRIDE")
run_one() {  # MODE SEED
  # shellcheck disable=SC2086
  "$PY" main.py --mode "$1" --mem_manage "$MEM_MANAGE" --exp_name "$EXP" --dataset "$DATASET" \
    --stream_env "$STREAM" --rnd_seed "$2" --transforms $TRANS --uncert_metric "$UNCERT_METRIC" \
    --out_dir "$OUT_DIR" --resume ${OPT[@]+"${OPT[@]}"} $EXTRA
}
FAILED=0
if [ "$ENGINE" = "ray" ]; then
  for MODE in $MODES; do
    for SEED in $SEEDS; do
      # shellcheck disable=SC2086
      printf '%q ' --mode "$MODE" --mem_manage "$MEM_MANAGE" --exp_name "$EXP" --dataset "$DATASET" \
        --stream_env "$STREAM" --rnd_seed "$SEED" --transforms $TRANS --uncert_metric "$UNCERT_METRIC" \
        --out_dir "$OUT_DIR" --resume ${OPT[@]+"${OPT[@]}"} $EXTRA
      echo
    done
  done | "$PY" -m utils.run.sweep --cpus_per_run "$CPUS_PER_RUN" --gpus_per_run "$GPUS_PER_RUN" \
           --retries "$RETRIES" ${RAY_CPUS:+--cpus "$RAY_CPUS"} --python "$PY" || FAILED=$?
  [ "$FAILED" = 2 ] && exit 2
elif [ "$ENGINE" != "local" ]; then
  echo "error: ENGINE must be local or ray (got '$ENGINE')" >&2
  exit 2
fi
[ "$ENGINE" = "ray" ] && MODES=""  # the runs went to Ray
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
"$PY" -m utils.report.summarize "$OUT_DIR/results/$DATASET" --metrics A_last A_last_final || true
echo "TensorBoard: tensorboard --logdir $OUT_DIR/tensorboard/$DATASET"
exit "$FAILED"
