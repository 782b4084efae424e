"""Seconds per image of every study attack with its defaults, attack plus the study's evaluation (one fresh
evaluation and R = 10 more), on the shipped DFZ and GFZ: the measurements behind the study's per-attack
image counts (genrobust/study/config.py, BENCHMARKS.md "The study's cost").

    .venv/bin/python benchmarks/study_costs.py [--n 20] [--models fmnist-dfz,fmnist-gfz]

Each attack runs on the first N test images (fewer for the slow ones, --slow-n), after a warm-up image.
"""

from __future__ import annotations

import argparse
import time

import torch

from genrobust import data
from genrobust.attacks import make_attack
from genrobust.robustness import run_attack
from genrobust.store import ModelStore
from genrobust.study.config import STUDY_ATTACKS

SLOW = {"truncated-deepfool", "cw", "zoo", "apgd"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20, help="images for the fast attacks")
    ap.add_argument("--slow-n", type=int, default=6, help="images for truncated-deepfool, cw, zoo and apgd")
    ap.add_argument("--models", default="fmnist-dfz,fmnist-gfz")
    ap.add_argument("--attacks", default=",".join(STUDY_ATTACKS))
    args = ap.parse_args()
    store = ModelStore()
    test = data.load("fashion-mnist", "test", limit=max(args.n, args.slow_n) + 1)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| model | attack | n | attack s/image | evaluation s/image | total s/image |")
    print("|---|---|---|---|---|---|")
    for m in args.models.split(","):
        model, _ = store.load(m, "cpu")
        for a in args.attacks.split(","):
            attack = make_attack(a)
            n = args.slow_n if a in SLOW else args.n
            run_attack(model, attack, test.images[-1:], test.labels[-1:], seed=1)  # warm-up
            t0 = time.perf_counter()
            rep, _ = run_attack(model, attack, test.images[:n], test.labels[:n], seed=0)
            total = (time.perf_counter() - t0) / n
            print(f"| {m} | {a} | {n} | {rep.seconds_per_image:.3f} | {total - rep.seconds_per_image:.3f} | "
                  f"{total:.3f} |", flush=True)


if __name__ == "__main__":
    main()
