#!/usr/bin/env bash
# Make Fashion-MNIST available as dataset/fashion_mnist: from the Debian package
# dataset-fashion-mnist when it is installed or installable, else downloaded by torchvision.
set -uo pipefail
cd "$(dirname "$0")/.."
DEB_DIR=/usr/share/datasets/fashion-mnist
if [ ! -f "$DEB_DIR/train-images-idx3-ubyte.gz" ] && [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
  echo "[data] installing the Debian package dataset-fashion-mnist"
  (apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 || \
   (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1)) || \
   echo "[data] could not install dataset-fashion-mnist; falling back to a torchvision download"
fi
if [ -f "$DEB_DIR/train-images-idx3-ubyte.gz" ]; then
  exec .venv/bin/python -m utils.prepare --dataset fashion_mnist --source "$DEB_DIR"
else
  exec .venv/bin/python -m utils.prepare --dataset fashion_mnist
fi
