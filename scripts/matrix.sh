#!/usr/bin/env bash
# Every method in one setting, seeds 1-3 (the method-by-setting table of the README): one run at a time per
# job, one torch thread each; resumable (a finished run is skipped). Examples:
#   EXP=blurry10 ENV=online DATA_DIR=dataset OUT=matrix/blurry10 bash scripts/matrix.sh
#   EXP=iblurry50_10 DATA_DIR=subset OUT=matrix/iblurry bash scripts/matrix.sh   # adds --eval_period 100
# then: python -m utils.report.summarize $OUT/results/mnist
set -euo pipefail
cd "$(dirname "$0")/.."
EXP=${EXP:-blurry10}
ENV=${ENV:-online}
DATASET=${DATASET:-mnist}
DATA_DIR=${DATA_DIR:-dataset}
OUT=${OUT:-matrix/$EXP}
SEEDS=${SEEDS:-"1 2 3"}
JOBS=${JOBS:-1}
PY=${PY:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
METHODS=${METHODS:-"rm finetune ewc rwalk icarl gdumb bic joint er ewc++ mir der++ clib"}
# the paper's MNIST settings (memory 500, batch 16, cutmix + autoaug); i-Blurry adds the CLIB scripts' protocol
FLAGS=${FLAGS:-"--memory_size 500 --batchsize 16 --transforms cutmix autoaug"}
case $EXP in iblurry*) FLAGS="$FLAGS --online_iter 1 --eval_period ${EVAL_PERIOD:-100}" ;; esac
for seed in $SEEDS; do
  for mode in $METHODS; do
    echo "--mode $mode --rnd_seed $seed"
  done
done | xargs -P "$JOBS" -I{} sh -c "OMP_NUM_THREADS=1 $PY main.py {} --dataset $DATASET --exp_name $EXP \
  --stream_env $ENV $FLAGS --data_dir $DATA_DIR --out_dir $OUT --device cpu --resume > /dev/null 2>&1 \
  || echo 'failed: {}' >&2"
