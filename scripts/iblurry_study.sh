#!/usr/bin/env bash
# The i-Blurry-50-10 study of issue 16: every method of the protocol (rm both ways) on MNIST-style folders,
# seeds 1-3, the CLIB scripts' CIFAR-10 settings scaled to mlp400 (memory 500, batch 16, temporary batch 8,
# online_iter 1, eval_period 100, cutmix + autoaug, Adam 3e-4 / SGD 0.05 as the CLIB scripts; rm's and gdumb's
# memory epochs: --n_epoch, the MNIST preset 5, in place of CIFAR's 256). Resumable: a finished run is skipped.
#   DATA_DIR=dataset OUT=study DATASETS="mnist fashion_mnist" SEEDS="1 2 3" JOBS=2 bash scripts/iblurry_study.sh
# then: python -m utils.report.summarize $OUT/results/* --times --plots $OUT/plots
set -euo pipefail
cd "$(dirname "$0")/.."
DATA_DIR=${DATA_DIR:-dataset}
OUT=${OUT:-study}
DATASETS=${DATASETS:-"mnist fashion_mnist"}
SEEDS=${SEEDS:-"1 2 3"}
JOBS=${JOBS:-2}  # processes at once, one torch thread each
PY=${PY:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
VARIANTS=${VARIANTS:-"mir clib ewc++:--as_intended bic der++ gdumb er rm:--as_intended rm"}
for seed in $SEEDS; do
  for ds in $DATASETS; do
    for v in $VARIANTS; do
      mode=${v%%:*}; extra=""; [ "$v" != "$mode" ] && extra=${v#*:}
      echo "--mode $mode $extra --dataset $ds --rnd_seed $seed"
    done
  done
done | xargs -P "$JOBS" -I{} sh -c "OMP_NUM_THREADS=1 $PY main.py {} --exp_name iblurry50_10 --stream_env online \
  --data_dir $DATA_DIR --out_dir $OUT --device cpu --resume > /dev/null 2>&1 || echo 'failed: {}' >&2"
