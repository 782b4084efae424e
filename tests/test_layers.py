"""The layers: the library imports neither the service (app/, worker/) nor its dependencies; `genrobust
serve` without them is refused with the install line. (scripts/check_install.sh does the same in a fresh
venv holding the library alone; CI runs it.)"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from genrobust import cli

REPO = Path(__file__).resolve().parents[1]
SERVICE = {"fastapi", "starlette", "uvicorn", "celery", "kombu", "sqlalchemy", "redis", "app", "worker"}


# Parsed in a fresh interpreter: CPython 3.11.7's AST constructor keeps its recursion depth in shared state,
# and a thread left running by an earlier test (a Celery result backend reconnecting) made ast.parse here
# fail with "SystemError: AST constructor recursion depth mismatch" (python/cpython#106905, fixed in 3.11.8).
_ROOTS = """
import ast, json, sys
from pathlib import Path
out = {}
for p in sorted(Path(sys.argv[1]).rglob("*.py")):
    roots = set()
    for node in ast.walk(ast.parse(p.read_text())):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    out[str(p.relative_to(sys.argv[2]))] = sorted(roots)
print(json.dumps(out))
"""


def _imported_roots(package: Path) -> dict[str, set[str]]:
    """Each module under ``package`` -> the top-level names it imports (absolute imports only)."""
    out = subprocess.run([sys.executable, "-c", _ROOTS, str(package), str(REPO)], capture_output=True, text=True,
                         check=True)
    return {k: set(v) for k, v in json.loads(out.stdout).items()}


def test_no_library_module_imports_the_service_or_its_dependencies():
    offenders = {name: sorted(roots & SERVICE) for name, roots in _imported_roots(REPO / "genrobust").items()}
    assert len(offenders) > 30  # every module was read
    # the one door: `genrobust serve` imports app.main inside the command
    assert {k: v for k, v in offenders.items() if v} == {"genrobust/cli.py": ["app"]}


def test_importing_the_library_loads_no_service_module():
    code = ("import sys, genrobust, genrobust.attacks, genrobust.cli, genrobust.study, genrobust.masking, "
            "genrobust.replicates, genrobust.transfer, genrobust.detection; "
            f"print(sorted(m for m in sys.modules if m.split('.')[0] in {sorted(SERVICE)!r}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "[]"


def _app_main_raises(monkeypatch, exc: ImportError) -> None:
    """`from app.main import serve` fails with ``exc``, as when a dependency is missing or the code is broken."""
    real_import = __builtins__["__import__"] if isinstance(__builtins__, dict) else __builtins__.__import__

    def failing(name, *args, **kw):
        if name == "app.main":
            raise exc
        return real_import(name, *args, **kw)

    monkeypatch.setattr("builtins.__import__", failing)


def test_serve_without_the_service_extra_exits_2_with_the_install_line(monkeypatch, capsys):
    _app_main_raises(monkeypatch, ModuleNotFoundError("No module named 'fastapi'", name="fastapi"))
    assert cli.main(["serve"]) == 2
    assert "pip install 'genrobust[service]'" in capsys.readouterr().err


def test_an_unrelated_import_error_in_the_service_is_not_hidden(monkeypatch):
    _app_main_raises(monkeypatch, ModuleNotFoundError("No module named 'app.typo'", name="app.typo"))
    with pytest.raises(ModuleNotFoundError, match="app.typo"):
        cli.main(["serve"])


def test_the_service_layer_never_imports_the_api():
    roots = _imported_roots(REPO / "worker")
    assert "worker/tasks.py" in roots and "genrobust" in roots["worker/calls.py"]  # the modules were read
    assert {name for name, r in roots.items() if "app" in r} == set()


def test_the_inline_compute_and_job_records_import_no_celery(tmp_path):
    code = ("import sys, worker, worker.jobs, worker.calls, worker.runtime, worker.settings, app.schemas; "
            "assert 'celery' not in sys.modules, 'celery imported'; "
            "import worker.celery as c; assert c.app.conf.task_default_queue == 'genrobust'; print('ok')")
    env = {k: v for k, v in os.environ.items() if not k.startswith("GENROBUST_")} | {"GENROBUST_DATA_DIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, env=env)
    assert out.stdout.strip() == "ok", out.stderr[-2000:]
