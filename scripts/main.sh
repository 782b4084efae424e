#!/usr/bin/env bash
# The main job on the embedded default: set up (if needed), list the shipped models, then serve the API
# with jobs running in-process on an embedded SQLite broker (no Redis needed). The page at /, docs at /docs.
# Pass serve options through, e.g. `bash scripts/main.sh --host 0.0.0.0 --port 8080`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/genrobust models
host=127.0.0.1 port=8000 prev=
for a in "$@"; do  # the page's address from --host/--port (also --host=H, --port=P)
  case "$prev" in --host) host=$a ;; --port) port=$a ;; esac
  case "$a" in --host=*) host=${a#--host=} ;; --port=*) port=${a#--port=} ;; esac
  prev=$a
done
[ "$host" = 0.0.0.0 ] && host=127.0.0.1
.venv/bin/genrobust serve "$@" &
pid=$!
trap 'kill -INT $pid 2>/dev/null' INT TERM  # a background job ignores Ctrl-C itself: pass it on
# once the service answers, end with the page's address (after the server's own start-up lines)
.venv/bin/python - "http://$host:$port" "$pid" <<'PY' || true
import os, sys, time, urllib.request
url, pid = sys.argv[1], int(sys.argv[2])
for _ in range(600):
    try:
        urllib.request.urlopen(url + "/health", timeout=2)
        break
    except OSError as exc:
        if getattr(exc, "code", None):  # answered (e.g. 503 degraded): it is up
            break
        try:
            os.kill(pid, 0)
        except OSError:
            sys.exit(1)
        time.sleep(0.2)
print(f"\ngenrobust is running: the page (playground, compare, jobs) at {url}/ ; API docs at {url}/docs ; Ctrl-C stops")
PY
rc=0
while kill -0 "$pid" 2>/dev/null; do wait "$pid" && rc=0 || rc=$?; done  # again after an interrupted wait
exit "$rc"
