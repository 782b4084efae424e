"""Run an attack over a dataset and measure it: success, robustness rho, norms, time, queries.

Every adversarial image is judged by a fresh evaluation of the model with noise independent of the
attacker's (seeded, so results are reproducible): a minimal attack that stops exactly on the decision
boundary then fools a re-sampled stochastic model only about half the time, which is a finding to report.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, Field
from torch import nn
from tqdm import tqdm

from genrobust.attacks import Attack
from genrobust.data import check_images, check_labels
from genrobust.errors import GenrobustError
from genrobust.models import LatentClassifier

EVAL_SEED_OFFSET = 1_000_000_007  # evaluation noise comes from a stream the attack never sees
L0_TOL = 1e-6


class AttackReport(BaseModel):
    """Aggregates over the images, plus per-image arrays (lists, for JSON)."""

    model: str
    attack: str
    params: dict[str, Any]
    seed: int
    eval_samples: int
    n: int
    clean_accuracy: float
    adversarial_accuracy: float
    success_rate: float | None = Field(description="Over the images classified correctly before the attack.")
    robustness: float | None = Field(description="rho = mean ||eta||_2 / ||x||_2 over successful images.")
    mean_l2: float | None
    median_l2: float | None
    mean_linf: float | None
    median_linf: float | None
    mean_l0: float | None
    median_l0: float | None
    seconds: float
    seconds_per_image: float
    queries: int | None = Field(description="Total model evaluations (black-box attacks).")
    per_image: dict[str, list | None] = Field(description="labels, pred_before, pred_after, correct, success, l2, linf, "
                                                   "l0, rel_l2 and queries, one entry per image.")

    def summary(self) -> dict[str, Any]:
        return self.model_dump(exclude={"per_image"})


def predict(model: nn.Module, x: torch.Tensor, samples: int, generator: torch.Generator) -> torch.Tensor:
    with torch.inference_mode():
        if isinstance(model, LatentClassifier):
            return model.eval().logits(x, samples, generator).argmax(1)
        return model(x).argmax(1)


def _stat(values: np.ndarray, fn) -> float | None:
    """None (JSON null) when no image succeeded."""
    return float(fn(values)) if len(values) else None


def run_attack(model: nn.Module, attack: Attack, images, labels, *, seed: int = 0, eval_samples: int = 10,
               batch_size: int = 100, model_name: str = "model", progress: bool = False,
               targets=None) -> tuple[AttackReport, torch.Tensor]:
    """Attack all images in chunks and measure. Returns the report and the adversarial images."""
    x = check_images(images)
    y = check_labels(labels, len(x))
    if batch_size < 1:
        raise GenrobustError(f"batch size must be at least 1, got {batch_size}")
    if eval_samples < 1:
        raise GenrobustError(f"eval samples must be at least 1, got {eval_samples}")
    eval_gen = torch.Generator().manual_seed(seed + EVAL_SEED_OFFSET)
    adv_chunks, query_chunks, seconds = [], [], 0.0
    starts = range(0, len(x), batch_size)
    for i, s in enumerate(tqdm(starts, desc=attack.name, unit="batch", disable=not progress, leave=False)):
        t0 = time.perf_counter()
        out = attack(model, x[s:s + batch_size], y[s:s + batch_size], seed=seed * 100_003 + i,
                     targets=None if targets is None else targets[s:s + batch_size])
        seconds += time.perf_counter() - t0
        adv_chunks.append(out.adversarial)
        query_chunks.append(out.queries)
    adv = torch.cat(adv_chunks)
    pred_before = torch.cat([predict(model, x[s:s + batch_size], eval_samples, eval_gen) for s in starts])
    pred_after = torch.cat([predict(model, adv[s:s + batch_size], eval_samples, eval_gen) for s in starts])

    eta = (adv - x).flatten(1)
    l2, linf = eta.norm(dim=1), eta.abs().amax(1)
    l0 = (eta.abs() > L0_TOL).sum(1).float()
    rel_l2 = l2 / x.flatten(1).norm(dim=1).clamp_min(1e-12)
    correct = pred_before == y
    success = correct & (pred_after != y)
    queries = torch.cat(query_chunks) if query_chunks[0] is not None else None
    s = success.numpy()
    ok = lambda t: t.numpy()[s]  # noqa: E731  statistics over successful images
    report = AttackReport(
        model=model_name, attack=attack.name, params=attack.params.model_dump(mode="json") | {"batch_size": batch_size},
        seed=seed, eval_samples=eval_samples, n=len(x),
        clean_accuracy=correct.float().mean().item(),
        adversarial_accuracy=(pred_after == y).float().mean().item(),
        success_rate=(success.sum() / correct.sum()).item() if correct.any() else None,
        robustness=_stat(ok(rel_l2), np.mean),
        mean_l2=_stat(ok(l2), np.mean), median_l2=_stat(ok(l2), np.median),
        mean_linf=_stat(ok(linf), np.mean), median_linf=_stat(ok(linf), np.median),
        mean_l0=_stat(ok(l0), np.mean), median_l0=_stat(ok(l0), np.median),
        seconds=seconds, seconds_per_image=seconds / len(x),
        queries=int(queries.sum()) if queries is not None else None,
        per_image={
            "labels": y.tolist(), "pred_before": pred_before.tolist(), "pred_after": pred_after.tolist(),
            "correct": correct.tolist(), "success": success.tolist(),
            "l2": l2.tolist(), "linf": linf.tolist(), "l0": l0.tolist(), "rel_l2": rel_l2.tolist(),
            "queries": queries.tolist() if queries is not None else None,
        },
    )
    return report, adv
