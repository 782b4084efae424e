#!/usr/bin/env bash
# The device check (issue: every stage on the device it is given): train, evaluate, every attack, detectors,
# reproduce and the service on one device, one line per step with time and result. On a CUDA machine the
# full check takes a few minutes; on a CPU use a smoke scale, e.g. `bash scripts/device_check.sh --device cpu
# --scale 0.01 --epochs 1`. On the lent GPU machine (no package registry), see ../shared/device/README.md:
#   source .device-kit/svc/env.sh && bash scripts/device_check.sh   (after a lib-kit call)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
exec "$PY" benchmarks/device_check.py "$@"
