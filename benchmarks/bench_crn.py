"""Shared (common random numbers) vs independent noise across classes in the importance-sampled logits.

    .venv/bin/python benchmarks/bench_crn.py [--models fmnist-dfz,fmnist-gfz] [--limit 5000]

Both estimators give every class an unbiased estimate of log p(x, y_c); they differ only in whether the
K noise draws are shared by the classes of an image. Accuracy on the validation split, seed 0.
"""

from __future__ import annotations

import argparse
import math

import torch

from genrobust import data
from genrobust.evaluation import batched_logits
from genrobust.store import ModelStore


def independent_logits(model, images: torch.Tensor, samples: int, seed: int, batch: int = 100) -> torch.Tensor:
    """Fresh noise for every class: one log_weights call per class (a loop kept out of the library)."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    with torch.inference_mode():
        for i in range(0, len(images), batch):
            x = images[i:i + batch]
            cols = [model.log_weights(x, torch.full((len(x), 1), c), samples, gen)[:, 0]
                    for c in range(model.config.num_classes)]
            out.append(torch.logsumexp(torch.stack(cols, 1), -1) - math.log(samples))
    return torch.cat(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="fmnist-dfz,fmnist-gfz")
    ap.add_argument("--limit", type=int, default=5000)
    ap.add_argument("--samples", default="1,10")
    args = ap.parse_args()
    val = data.load("fashion-mnist", "validation", args.limit)
    print(f"validation accuracy on {len(val)} images, seed 0")
    print(f"{'model':<14}{'K':>4}{'independent':>13}{'shared (CRN)':>14}")
    for name in args.models.split(","):
        model, _ = ModelStore().load(name)
        for k in map(int, args.samples.split(",")):
            ind = (independent_logits(model, val.images, k, 0).argmax(-1) == val.labels).float().mean().item()
            crn = (batched_logits(model, val.images, k, 0).argmax(-1) == val.labels).float().mean().item()
            print(f"{name:<14}{k:>4}{ind:>13.4f}{crn:>14.4f}")


if __name__ == "__main__":
    main()
