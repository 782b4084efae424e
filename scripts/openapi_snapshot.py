"""Write the service's OpenAPI document to tests/service/openapi.json, the snapshot that
tests/service/test_openapi_snapshot.py compares against (issue 24: "OpenAPI unchanged where the values were
already right"). Rerun after a deliberate API change and list the change in docs/service.md ("Changes to the
OpenAPI"); the diff of the snapshot in the commit is the change a client sees.

    python scripts/openapi_snapshot.py          # rewrite the snapshot
    python scripts/openapi_snapshot.py --check  # exit 1 if the API differs from it
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

SNAPSHOT = Path(__file__).resolve().parents[1] / "tests" / "service" / "openapi.json"


def current() -> dict:
    from app.main import create_app

    spec = create_app(embedded_worker=False).openapi()
    spec["info"].pop("version", None)  # a release bump is not an API change
    return spec


def render(spec: dict) -> str:
    return json.dumps(spec, indent=1, sort_keys=True) + "\n"


def main(argv: list[str]) -> int:
    text = render(current())
    if "--check" in argv:
        same = SNAPSHOT.exists() and SNAPSHOT.read_text() == text
        print("OpenAPI matches the snapshot" if same else f"OpenAPI differs from {SNAPSHOT}")
        return 0 if same else 1
    SNAPSHOT.write_text(text)
    print(f"wrote {SNAPSHOT}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
