"""The OpenAPI document a client codes against changes only on purpose: it must equal the committed snapshot
(scripts/openapi_snapshot.py rewrites it; docs/service.md lists each change)."""

import difflib
import importlib.util
import json
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "openapi_snapshot.py"
spec = importlib.util.spec_from_file_location("openapi_snapshot", SCRIPT)
snapshot = importlib.util.module_from_spec(spec)
spec.loader.exec_module(snapshot)


def test_openapi_equals_the_committed_snapshot():
    now, then = snapshot.render(snapshot.current()), snapshot.SNAPSHOT.read_text()
    diff = "".join(difflib.unified_diff(then.splitlines(True), now.splitlines(True), "snapshot", "now", n=2))
    assert now == then, ("the OpenAPI changed; if on purpose, run `python scripts/openapi_snapshot.py`, list the "
                         f"change in docs/service.md and commit both:\n{diff[:4000]}")


def test_the_snapshot_does_not_depend_on_settings_or_the_store(monkeypatch, tmp_path):
    monkeypatch.setenv("GENROBUST_API_KEY", "k")
    monkeypatch.setenv("GENROBUST_MAX_IMAGES", "3")
    monkeypatch.setenv("GENROBUST_MODEL_DIR", str(tmp_path))
    from genrobust.settings import get_settings
    get_settings.cache_clear()
    try:
        assert json.loads(snapshot.render(snapshot.current())) == json.loads(snapshot.SNAPSHOT.read_text())
    finally:
        get_settings.cache_clear()
