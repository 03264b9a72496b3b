#!/usr/bin/env bash
# Set up and run the test suite (offline). Tests that need ../shared or the Debian package
# dataset-fashion-mnist skip cleanly without them; as root we try to install the package first.
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/setup.sh dev
if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] && [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null; then
  (apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 || \
   (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1)) || true
fi
exec .venv/bin/python -m pytest -q tests "$@"
