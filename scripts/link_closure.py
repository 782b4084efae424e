"""Give a fresh venv the library's dependency closure without copying it (CI's fast library-only install):
read the requirements of the built wheel (no extras), find their closure among this venv's distributions,
and symlink each one's files (top-level entries and dist-info) into the fresh venv's site-packages. The
service's packages, installed here for the tests, are not in the closure and so are absent there; `pip check`
in the fresh venv then proves the closure satisfies the wheel. `scripts/check_install.sh --full` does a
real `pip install` instead (the install time and size in BENCHMARKS.md).

    python scripts/link_closure.py WHEEL TARGET_SITE_PACKAGES
"""

from __future__ import annotations

import email
import importlib.metadata as md
import sys
import zipfile
from pathlib import Path, PurePosixPath

sys.path.insert(0, str(Path(__file__).parent))
from extra_sizes import closure  # noqa: E402

# the service stack that must stay out (not all of [service]: pillow is also torchvision's requirement)
SERVICE = {"fastapi", "starlette", "uvicorn", "celery", "kombu", "sqlalchemy", "redis"}


def wheel_requirements(wheel: str) -> list[str]:
    with zipfile.ZipFile(wheel) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        reqs = email.message_from_bytes(z.read(meta)).get_all("Requires-Dist") or []
    return [r for r in reqs if "extra ==" not in r]


def top_levels(dist: md.Distribution) -> set[str]:
    names = set()
    for f in dist.files or []:
        parts = PurePosixPath(str(f)).parts
        if parts and parts[0] != ".." and not parts[0].endswith(".pth") and parts[0] != "__pycache__":
            names.add(parts[0])
    return names


def main(wheel: str, target: str) -> None:
    dists = closure(wheel_requirements(wheel))
    dists.pop("genrobust", None)
    leaked = SERVICE & set(dists)
    assert not leaked, f"the library's requirements pull service packages: {sorted(leaked)}"
    dest, linked = Path(target), 0
    for dist in dists.values():
        for name in top_levels(dist):
            src, link = Path(dist.locate_file(name)), dest / name
            if src.exists() and not link.exists():
                link.symlink_to(src.resolve())
                linked += 1
    print(f"linked the library's closure: {len(dists)} distributions ({linked} entries), none of the service's")


if __name__ == "__main__":
    main(*sys.argv[1:3])
