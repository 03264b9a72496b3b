#!/usr/bin/env bash
# The GPU checks in one go, on a CUDA machine whose python has the requirements: CUDA-only tests,
# bench_cifar (ours vs DataLoader+PIL), MNIST runs on the GPU (RM, EWC, GDumb; the paper's split
# files), bench_stream (streamed vs in-memory), then the whole test suite with CUDA visible.
# Usage: RM_SHARED=<folder laid out like ../shared> [RM_FASHION_SRC=...] [PY=python3] \
#        bash scripts/gpu_check.sh [LOG_DIR]
# Each step's whole log goes to LOG_DIR/<step>.log (and is appended to $ALL_LOG when set), its tail
# to the terminal. ONLY="step names" runs those steps alone; DEVICE=cpu tries the script without a GPU.
# One session has 15 device minutes (start-up included) and 10 per call: GROUP=issue15_train (about 6 min: compiled
# steps against eager, bench_cifar eager/graphs/bf16/channels_last, CIFAR-10 protocol eager and graphs, MNIST RM with
# graphs) and GROUP=issue15_data (about 5 min: GPU JPEG decoding against 8 and 16 processes, 4 MNIST runs packed
# against one at a time, the ImageNet-shaped protocol with GPU decoding) pick the compiled-step issue's checks;
# GROUP=issue26 (about 6 min) runs er's sample-wise stream on the CIFAR-10 stand-in eager and with graphs.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
DEV=${DEVICE:-cuda}
LOGS=${1:-gpu_check}
SHARED=${RM_SHARED:-../shared}
WORK=$(mktemp -d /tmp/gpu_check.XXXX)
mkdir -p "$LOGS"
export PYTHONUNBUFFERED=1
case "${GROUP:-}" in
  issue15_train) ONLY="graph_tests bench_cifar_graphs bench_cifar_bf16 bench_cifar_cl protocol_c10_eager
                       protocol_c10_graphs prepare_mnist mnist_rm_graphs" ;;
  issue15_data) ONLY="bench_stream_decoders prepare_mnist pack_mnist_1 pack_mnist_4 protocol_in_gpu_decode" ;;
  issue26) ONLY="iblurry_c10_er_off iblurry_c10_er_graphs" ;;
  "") ;;
  *) echo "unknown GROUP '$GROUP' (issue15_train, issue15_data, issue26)"; exit 2 ;;
esac

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
# compiled steps (50 captured steps, each against the eager step; step times) and GPU JPEG decoding (differences)
step graph_tests 240 $PY -m pytest -q -p no:cacheprovider -s -k cuda tests/test_graph_step.py \
  tests/test_device_decode.py
step bench_cifar_graphs 150 $PY benchmarks/bench_cifar.py --device $DEV --workers 8 --autoaug --compile off graphs
step bench_cifar_bf16 90 $PY benchmarks/bench_cifar.py --device $DEV --skip_baseline --autoaug --compile off graphs \
  --amp bf16
step bench_cifar_cl 90 $PY benchmarks/bench_cifar.py --device $DEV --skip_baseline --autoaug --compile off graphs \
  --channels_last
step bench_cifar 150 $PY benchmarks/bench_cifar.py --device $DEV --workers 8
step bench_cifar_b256 120 $PY benchmarks/bench_cifar.py --device $DEV --workers 8 --batch 256 --steps 100 --warmup 10
if [ -f "$SHARED/datasets/mnist/train-images-idx3-ubyte.gz" ]; then
  step prepare_mnist 120 $PY -m utils.prepare --dataset mnist --source "$SHARED/datasets/mnist" \
    --data_dir "$WORK/dataset" --workers 8
  # RM on MNIST with its step as CUDA graphs (target: <= 10 s); then 4 RM runs one at a time and packed 4 at a time
  step mnist_rm_graphs 120 $PY main.py --mode rm --transforms cutmix autoaug --dataset mnist \
    --data_dir "$WORK/dataset" --out_dir "$WORK/out" --run_name gpu_rm_graphs \
    --collections_dir "$SHARED/collections/mnist" --exp_name blurry10 --stream_env online --rnd_seed 1 \
    --device $DEV --compile graphs
  for k in 1 4; do
    step "pack_mnist_$k" 200 env SEEDS="1 2 3 4" MODES=rm DATASET=mnist JOBS=$k THREADS=4 PY=$PY \
      COLLECTIONS="$SHARED/collections/mnist" OUT_DIR="$WORK/pack$k" EXTRA="--data_dir $WORK/dataset --device $DEV" \
      bash experiment.sh
  done
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
# the same CIFAR-10 protocol eager and with CUDA graphs, each phase's first epoch profiled
for c in eager graphs; do
  step "protocol_c10_$c" 240 $PY benchmarks/bench_protocol.py --device $DEV --fashion "$FASH" \
    --out "$WORK/protocol_c10_$c" --only cifar10 --epochs 16 --eval_epochs last_task \
    --compile "$([ $c = eager ] && echo off || echo graphs)" --profile
done
step bench_stream_decoders 300 $PY benchmarks/bench_stream.py --device $DEV --root "$WORK/stream" --n 8192 \
  --chunk 1024 --decoders pool8,pool16,device
step protocol_in_gpu_decode 240 $PY benchmarks/bench_protocol.py --device $DEV --fashion "$FASH" \
  --out "$WORK/protocol_in_dec" --only imagenet --profile \
  --extra="--decode_device $([ "$DEV" = cuda ] && echo cuda || echo cpu) --data_budget_gb 0"
for p in quick c10 in c10_eager c10_graphs in_dec; do
  cp "$WORK/protocol_$p/bench_protocol.json" "$LOGS/protocol_$p.json" 2>/dev/null || true
done
# issue 26: the sample-wise protocol on a GPU, er (i-Blurry-50-10, online_iter 0.1: 5,000 steps) with resnet18 on
# the CIFAR-10 stand-in, eager against its forward + backward as CUDA graphs (one build per new class)
for c in off graphs; do
  step "iblurry_c10_er_$c" 240 $PY benchmarks/bench_protocol.py --device $DEV --fashion "$FASH" \
    --out "$WORK/iblurry_c10_$c" --only cifar10 --compile $c \
    --extra="--mode er --exp_name iblurry50_10 --n_tasks 5 --online_iter 0.1 --eval_period 5000 --transforms cutmix"
done
step test_suite 240 env OMP_NUM_THREADS=2 $PY -m pytest -q -p no:cacheprovider -rf -n 8 tests
rm -rf "$WORK"
