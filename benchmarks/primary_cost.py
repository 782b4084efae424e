"""What the study's primary endpoint costs, member by member, and what it leaves robust.

Runs the ensemble of `genrobust reproduce` (genrobust.study.primary.Ensemble, the preset's sizes) on the first
N test images of each model, with transfers from the other models named, at every budget; prints per model
and budget each member's images, fooled count and seconds, the robust accuracy with its Wilson interval, and
the seconds per image. The figures size the study's presets (BENCHMARKS.md, "The study's primary endpoint").

    .venv/bin/python benchmarks/primary_cost.py --models fmnist-dfz,fmnist-gfz --n 20 [--preset default]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from genrobust import data
from genrobust.store import ModelStore
from genrobust.study.config import StudyConfig
from genrobust.study.primary import run_model
from genrobust.uncertainty import proportion


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="fmnist-dfz,fmnist-gfz")
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--preset", default="default")
    ap.add_argument("--primary", default="{}", help="Ensemble overrides as JSON")
    ap.add_argument("--json", type=Path, default=None, help="also write the runs here")
    args = ap.parse_args()
    names = [m for m in args.models.split(",") if m]
    config = StudyConfig(models=names, preset=args.preset, primary=json.loads(args.primary))
    ensemble = config.ensemble()
    store = ModelStore()
    out = {}
    with tempfile.TemporaryDirectory() as cache:
        for m in names:
            model, card = store.load(m)
            test = data.load(data.dataset_of(card), "test", limit=args.n)
            sources = [o for o in names if store.card(o).get("kind") != card.get("kind")]
            t0 = time.perf_counter()
            run = run_model(Path(cache), model, m, card, test.images, test.labels, config, ensemble, sources)
            wall = time.perf_counter() - t0
            print(f"\n{m}: {args.n} images, clean (majority of R) {proportion(run.clean_correct)}, "
                  f"wall {wall:.1f} s ({wall / args.n:.2f} s / image)")
            for lv in [*run.linf, *([run.l2] if run.l2 else [])]:
                print(f"  {lv.norm} eps {lv.eps:g}: robust {proportion(lv.robust)}")
                for mem in lv.members:
                    print(f"    {mem.label:32s} images {mem.images:4d}  fooled {mem.fooled:4d}  {mem.seconds:8.1f} s")
            out[m] = run.model_dump(mode="json") | {"wall": wall}
    if args.json:
        args.json.write_text(json.dumps(out))


if __name__ == "__main__":
    main()
