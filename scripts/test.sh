#!/usr/bin/env bash
# Set up (if needed) and run the test suite. This is the command .ci/run calls.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/check_install.sh  # the wheel, installed alone in a fresh venv, works without the service
exec .venv/bin/python -m pytest -q --durations=15 "$@"  # the slowest tests: where CI time goes
