#!/usr/bin/env bash
# The main job on a fresh machine: set up, prepare Fashion-MNIST, then run Rainbow Memory
# (blurry10, online, seed 1, the public scripts' MNIST hyper-parameters). Extra arguments go to main.py.
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/setup.sh
bash scripts/get_fashion_mnist.sh
exec .venv/bin/python main.py --mode rm --mem_manage default --dataset fashion_mnist --exp_name blurry10 \
  --stream_env online --rnd_seed 1 --memory_size 500 --n_tasks 5 --n_cls_a_task 2 --n_init_cls 10 \
  --model_name mlp400 --opt_name sgd --sched_name cos --lr 0.05 --batchsize 16 --n_epoch 5 \
  --transforms cutmix autoaug --uncert_metric vr_randaug --init_opt --topk 1 "$@"
