#!/usr/bin/env bash
# The main job on the embedded default: set up (if needed), list the shipped models, then serve the API
# with jobs running in-process on an embedded SQLite broker (no Redis needed). Docs at /docs.
# Pass serve options through, e.g. `bash scripts/main.sh --host 0.0.0.0 --port 8080`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/genrobust models
echo "starting the service (API docs at http://127.0.0.1:8000/docs unless --host/--port say otherwise); Ctrl-C stops"
exec .venv/bin/genrobust serve "$@"
