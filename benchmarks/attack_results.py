"""The study's Tables 2-4 on our models: runtime per attack, success rate and robustness rho.

    .venv/bin/python benchmarks/attack_results.py [--models fmnist-dfz,fmnist-gfz] [--n 1000] [--n-slow 50]
                                                  [--json OUT]

FGSM, DeepFool and Truncated-DeepFool run on the first ``--n`` test images; CW and ZOO, which are two
orders of magnitude slower per image, on the first ``--n-slow``. Attacks use their default parameters
(``genrobust attacks``), seed 0; success is judged with fresh noise (K = 10). Each row is the same
computation as ``genrobust attack MODEL --attack A --limit N --json``.
"""

from __future__ import annotations

import argparse
import json

from genrobust import data
from genrobust.attacks import make_attack
from genrobust.robustness import run_attack
from genrobust.store import ModelStore

FAST = ("fgsm", "deepfool", "truncated-deepfool")
SLOW = ("cw", "zoo")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="fmnist-dfz,fmnist-gfz")
    ap.add_argument("--attacks", default=",".join(FAST + SLOW))
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--n-slow", type=int, default=50)
    ap.add_argument("--json")
    args = ap.parse_args()
    test = data.load("fashion-mnist", "test", max(args.n, args.n_slow))
    rows = []
    print(f"{'model':<12}{'attack':<20}{'n':>6}{'s/image':>9}{'success':>9}{'rho':>8}{'med L2':>8}"
          f"{'med Linf':>9}{'clean acc':>10}{'queries/img':>12}")
    for name in args.models.split(","):
        model, _ = ModelStore().load(name)
        for attack_name in args.attacks.split(","):
            n = args.n_slow if attack_name in SLOW else args.n
            report, _ = run_attack(model, make_attack(attack_name), test.images[:n], test.labels[:n], seed=0,
                                   model_name=name, progress=True)
            s = report.summary()
            rows.append(s)
            fmt = lambda v, w=8: f"{v:>{w}.4f}" if v is not None else f"{'-':>{w}}"  # noqa: E731
            q = f"{s['queries'] / n:>12.0f}" if s["queries"] is not None else f"{'-':>12}"
            print(f"{name:<12}{attack_name:<20}{n:>6}{s['seconds_per_image']:>9.3f}{fmt(s['success_rate'], 9)}"
                  f"{fmt(s['robustness'])}{fmt(s['median_l2'])}{fmt(s['median_linf'], 9)}"
                  f"{fmt(s['clean_accuracy'], 10)}{q}", flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=2)


if __name__ == "__main__":
    main()
