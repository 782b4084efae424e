"""What each install of genrobust brings, read from the installed distributions' metadata (run in a venv
with genrobust[service]): the library's dependency closure and what `[service]` adds on top, in packages
and MB on disk. `python scripts/extra_sizes.py`"""

import importlib.metadata as md
import os

from packaging.requirements import Requirement


def closure(requirements: list[str]) -> dict[str, md.Distribution]:
    seen: dict[str, md.Distribution] = {}
    stack = [Requirement(r) for r in requirements]
    while stack:
        req = stack.pop()
        name = req.name.lower().replace("_", "-")
        if name in seen:
            continue
        try:
            dist = md.distribution(req.name)
        except md.PackageNotFoundError:  # a platform-specific requirement not installed here
            continue
        seen[name] = dist
        for sub in map(Requirement, dist.requires or []):
            if sub.marker is None or any(sub.marker.evaluate({"extra": e}) for e in (sorted(req.extras) or [""])):
                stack.append(sub)
    return seen


def megabytes(dists) -> float:
    total = 0
    for d in dists:
        for f in d.files or []:
            try:
                total += os.path.getsize(d.locate_file(f))
            except OSError:
                pass
    return total / 2**20


def main() -> None:
    reqs = md.requires("genrobust") or []
    core = closure([r for r in reqs if "extra ==" not in r])
    service = closure([r.split(";")[0] for r in reqs if 'extra == "service"' in r])
    added = {k: v for k, v in service.items() if k not in core}
    print(f"pip install genrobust: {len(core)} distributions, {megabytes(core.values()):,.0f} MB")
    print(f"genrobust[service] adds: {len(added)} distributions, {megabytes(added.values()):,.1f} MB: "
          f"{', '.join(sorted(added))}")


if __name__ == "__main__":
    main()
