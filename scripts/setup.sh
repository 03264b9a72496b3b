#!/usr/bin/env bash
# Create .venv and install the requirements (idempotent: reinstalls only when they change).
# Usage: bash scripts/setup.sh [dev]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
REQ=requirements.txt
[ "${1:-}" = "dev" ] && REQ=requirements-dev.txt
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $PY"
  "$PY" -m venv .venv
fi
STAMP=.venv/.installed-$(cat requirements.txt "$REQ" | sha1sum | cut -c1-12)
if [ ! -f "$STAMP" ]; then
  echo "[setup] installing $REQ (PyTorch is large: a few minutes the first time)"
  .venv/bin/python -m pip install -q --disable-pip-version-check -r "$REQ"
  touch "$STAMP"
fi
