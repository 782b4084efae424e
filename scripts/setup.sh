#!/usr/bin/env bash
# Idempotent set-up for a fresh clone: virtualenv, the package with its test extras, and the data.
# Fashion-MNIST comes from ../shared when present (offline machines); otherwise torchvision downloads it
# (MD5-verified) on first use.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
# torch and torchvision come from the package registry together (never mix a local torch wheel with the
# registry's torchvision: torchvision then fails to import).
.venv/bin/python -m pip install -q -e '.[test]'
DATA_DIR=${GENROBUST_DATA_DIR:-./data}
RAW="$DATA_DIR/FashionMNIST/raw"
SHARED=../shared/datasets/FashionMNIST/raw
if [ -d "$SHARED" ] && [ "$(ls "$RAW"/*.gz 2>/dev/null | wc -l)" -lt 4 ]; then
  mkdir -p "$RAW"
  cp "$SHARED"/*.gz "$RAW"/
fi
