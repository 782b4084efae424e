#!/usr/bin/env bash
# The main job at this stage: set up (if needed), list the shipped models and evaluate the pretrained
# DFZ and GFZ on the full Fashion-MNIST test set with K=10 importance samples.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/genrobust models
for m in fmnist-dfz fmnist-gfz; do
  .venv/bin/genrobust evaluate "$m" --split test --samples 10 --seed 0
done
