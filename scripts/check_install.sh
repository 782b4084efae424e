#!/usr/bin/env bash
# The library installs and works alone: build the wheel, install it without extras in a fresh venv, and
# there evaluate a shipped model, run an attack, find no service module imported and `genrobust serve`
# refused with the install line. Prints the wheel's contents check, install time and size, import times.
# By default the library's dependency closure is linked from .venv (scripts/link_closure.py), which keeps CI
# short; `--full` installs the wheel for real with pip (install time and size); `--service` does that and also
# installs genrobust[service] in a second venv, for the size comparison (BENCHMARKS.md).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/genrobust-install.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
DATA=$(realpath "${GENROBUST_DATA_DIR:-./data}")

.venv/bin/python -m pip wheel -q --no-deps --no-build-isolation -w "$WORK/dist" . 2>/dev/null \
  || .venv/bin/python -m pip wheel -q --no-deps -w "$WORK/dist" .
WHEEL=$(ls "$WORK"/dist/genrobust-*.whl)
.venv/bin/python - "$WHEEL" <<'EOF'
import pathlib, sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
shipped = sorted(f"genrobust/pretrained/{p.name}" for p in pathlib.Path("genrobust/pretrained").glob("fmnist-*.safetensors"))
models = sorted(n for n in names if n.startswith("genrobust/pretrained/fmnist-") and n.endswith(".safetensors"))
page = [n for n in names if n.startswith("app/web/")]
assert models == shipped, f"the wheel holds {models}, not the {len(shipped)} shipped models {shipped}"
assert any(n.endswith("index.html") for n in page), "the wheel lacks the page's files"
print(f"wheel: {sys.argv[1].rsplit('/', 1)[-1]}: the {len(models)} shipped models, {len(page)} page files")
EOF

install() {  # venv, requirement -> seconds and MB printed
  local venv=$1 req=$2 t0 t1
  "$PY" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip >/dev/null
  t0=$(date +%s.%N)
  "$venv/bin/python" -m pip install -q "$req" 2>&1 | grep -v "^WARNING: Location" || true
  t1=$(date +%s.%N)
  printf 'install %s: %.0f s, %s in the venv\n' "$(basename "$req" | sed 's/-0.*whl/ (wheel)/')" \
    "$(echo "$t1 - $t0" | bc)" "$(du -sh "$venv" | cut -f1)"
}

link_install() {  # venv: the closure linked from .venv (no copy), the wheel itself installed without deps
  local venv=$1 t0 t1
  "$PY" -m venv "$venv"
  t0=$(date +%s.%N)
  .venv/bin/python scripts/link_closure.py "$WHEEL" "$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
  "$venv/bin/python" -m pip install -q --no-deps "$WHEEL" 2>&1 | grep -v "^WARNING: Location" || true
  "$venv/bin/python" -m pip check  # every requirement of the wheel is met by the linked closure
  t1=$(date +%s.%N)
  printf 'install (wheel, linked closure): %.0f s\n' "$(echo "$t1 - $t0" | bc)"
}

# CI links the dependencies (a real install copies 6 GB of torch: about 4 min); --full installs for real
if [ "${1:-}" = "--full" ] || [ "${1:-}" = "--service" ]; then install "$WORK/lib" "$WHEEL"; else link_install "$WORK/lib"; fi
cd "$WORK"  # not the checkout: the installed package, never the source tree, is imported
GENROBUST_DATA_DIR="$DATA" GENROBUST_MODEL_DIR="$WORK/models" "$WORK/lib/bin/python" - <<'EOF'
import subprocess, sys, time
SERVICE = ("fastapi", "starlette", "uvicorn", "celery", "kombu", "sqlalchemy", "redis", "app", "worker")
for mod in ("genrobust", "genrobust.attacks"):
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", f"import {mod}"], check=True)
    print(f"import {mod}: {time.perf_counter() - t0:.2f} s (a fresh interpreter, start-up included)")

import genrobust, torch
from genrobust import data
from genrobust.attacks import make_attack
from genrobust.evaluation import accuracy
from genrobust.robustness import run_attack
from genrobust.store import ModelStore
assert "site-packages" in genrobust.__file__, genrobust.__file__
model, card = ModelStore().load("fmnist-gfz")
test = data.load("fashion-mnist", "test", 20)
acc = accuracy(model, test.images, test.labels, 10, seed=0)["accuracy"]
report, _ = run_attack(model, make_attack("fgsm", {"eps": 0.1}), test.images, test.labels, seed=0)
loaded = sorted(m for m in sys.modules if m.split(".")[0] in SERVICE)
assert not loaded, f"the library imported service modules: {loaded}"
print(f"library alone: fmnist-gfz on 20 test images: accuracy {acc:.2f}; FGSM eps 0.1 robust accuracy "
      f"{report.robust_accuracy:.2f}; no service module imported")
EOF
set +e
out=$(GENROBUST_DATA_DIR="$DATA" "$WORK/lib/bin/genrobust" serve 2>&1); rc=$?
set -e
[ "$rc" = 2 ] && grep -q "pip install 'genrobust\[service\]'" <<<"$out" \
  || { echo "genrobust serve without the extra: rc $rc, $out"; exit 1; }
echo "genrobust serve without the extra: exit 2, '$out'"

if [ "${1:-}" = "--service" ]; then
  install "$WORK/svc" "genrobust[service] @ file://$WHEEL"
fi
