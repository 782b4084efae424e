#!/usr/bin/env bash
# The main job on the embedded defaults: set up (if needed), list the shipped models, evaluate the
# pretrained DFZ and GFZ on the full Fashion-MNIST test set (K=10), then attack both with DeepFool on
# 100 test images and report success rate and robustness rho.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/genrobust models
for m in fmnist-dfz fmnist-gfz; do
  .venv/bin/genrobust evaluate "$m" --split test --samples 10 --seed 0
done
for m in fmnist-dfz fmnist-gfz; do
  .venv/bin/genrobust attack "$m" --attack deepfool --limit 100 --seed 0
done
