#!/usr/bin/env bash
# The GPU checks in one go, on a CUDA machine whose python has the requirements: CUDA-only tests,
# bench_cifar (ours vs DataLoader+PIL), MNIST runs on the GPU (RM, EWC, GDumb; the paper's split
# files), bench_stream (streamed vs in-memory), then the whole test suite with CUDA visible.
# Usage: RM_SHARED=<folder laid out like ../shared> [RM_FASHION_SRC=...] [PY=python3] \
#        bash scripts/gpu_check.sh [LOG_DIR]
# Each step's whole log goes to LOG_DIR/<step>.log (and is appended to $ALL_LOG when set), its tail
# to the terminal. ONLY="step names" runs those steps alone; DEVICE=cpu tries the script without a GPU.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
DEV=${DEVICE:-cuda}
LOGS=${1:-gpu_check}
SHARED=${RM_SHARED:-../shared}
WORK=$(mktemp -d /tmp/gpu_check.XXXX)
mkdir -p "$LOGS"
export PYTHONUNBUFFERED=1

step() {  # step NAME SECONDS CMD...: run with a time limit, log, report its status and wall time
  local name=$1 limit=$2; shift 2
  if [ -n "${ONLY:-}" ] && [[ " $ONLY " != *" $name "* ]]; then return 0; fi
  local t0=$SECONDS
  echo "== $name (limit ${limit}s)"
  timeout "$limit" "$@" >"$LOGS/$name.log" 2>&1
  local rc=$?
  tail -n "${TAIL:-15}" "$LOGS/$name.log"
  echo "== $name: exit $rc in $((SECONDS - t0)) s"
  if [ -n "${ALL_LOG:-}" ]; then
    { echo "== $name: exit $rc in $((SECONDS - t0)) s"; cat "$LOGS/$name.log"; } >>"$ALL_LOG"
  fi
}

nvidia-smi -L || true
$PY -c 'import torch, torchvision; print("torch", torch.__version__, "torchvision", torchvision.__version__, "cuda", torch.cuda.is_available())'
step cuda_tests 120 $PY -m pytest -q -p no:cacheprovider -k "cuda" tests
step bench_cifar 150 $PY benchmarks/bench_cifar.py --device $DEV --workers 8
step bench_cifar_b256 120 $PY benchmarks/bench_cifar.py --device $DEV --workers 8 --batch 256 --steps 100 --warmup 10
if [ -f "$SHARED/datasets/mnist/train-images-idx3-ubyte.gz" ]; then
  step prepare_mnist 120 $PY -m utils.prepare --dataset mnist --source "$SHARED/datasets/mnist" \
    --data_dir "$WORK/dataset" --workers 8
  # the MNIST column's rows as benchmarks/mnist_study.py runs them (presets from the public scripts)
  for m in rm ewc gdumb; do
    aug=(); [ "$m" = rm ] && aug=(cutmix autoaug)
    step "mnist_$m" 300 $PY main.py --mode $m --transforms "${aug[@]}" --dataset mnist --data_dir "$WORK/dataset" \
      --out_dir "$WORK/out" --run_name "gpu_$m" --collections_dir "$SHARED/collections/mnist" --exp_name blurry10 \
      --stream_env online --rnd_seed 1 --device $DEV
  done
  $PY - "$WORK/out/results/mnist" <<'PYEOF' | tee "$LOGS/mnist_runs.txt"
import json, sys
from pathlib import Path
print(f"{'run':<10}{'A_last':>8}{'A_last_final':>14}{'wall s':>8}  phases (s)")
for p in sorted(Path(sys.argv[1]).glob("gpu_*.json")):
    r = json.loads(p.read_text())
    ph = " ".join(f"{k} {v:.1f}" for k, v in r.get("phase_time_s", {}).items())
    print(f"{p.stem:<10}{r['A_last']:>8.2f}{r['A_last_final']:>14.2f}{r['wall_time_s']:>8.1f}  {ph}")
PYEOF
else
  echo "== no MNIST IDX files under $SHARED/datasets/mnist: MNIST runs skipped"
fi
step bench_stream 300 $PY benchmarks/bench_stream.py --device $DEV --root "$WORK/stream" --n 8192 --chunk 1024
# the paper's RM protocols end to end on Fashion-MNIST stand-ins (benchmarks/bench_protocol.py): --quick, then
# CIFAR-10 with 16 of its 256 epochs and --eval_epochs last_task (the full protocol does not fit one check),
# then the reduced ImageNet-shaped run
FASH=${RM_FASHION_SRC:-/usr/share/datasets/fashion-mnist}
step protocol_quick 120 $PY benchmarks/bench_protocol.py --quick --device $DEV --fashion "$FASH" --out "$WORK/protocol_quick"
step protocol_cifar10 300 $PY benchmarks/bench_protocol.py --device $DEV --fashion "$FASH" --out "$WORK/protocol_c10" \
  --only cifar10 --epochs 16 --eval_epochs last_task
step protocol_imagenet 240 $PY benchmarks/bench_protocol.py --device $DEV --fashion "$FASH" --out "$WORK/protocol_in" \
  --only imagenet
for p in quick c10 in; do cp "$WORK/protocol_$p/bench_protocol.json" "$LOGS/protocol_$p.json" 2>/dev/null || true; done
step test_suite 240 env OMP_NUM_THREADS=2 $PY -m pytest -q -p no:cacheprovider -rf -n 8 tests
rm -rf "$WORK"
