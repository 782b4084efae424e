"""Calls into genrobust with JSON-able results, shared by the API (inline requests) and the workers (jobs).

Models come from the per-process cache (``worker.runtime``); everything else is the library's.
"""

from __future__ import annotations

from typing import Any

import torch

from genrobust.attacks import make_attack
from genrobust.data import check_images
from genrobust.detection import load_detector
from genrobust.robustness import labels_for, run_attack
from worker import runtime


def attack(model: str, attack: str, params: dict[str, Any], images, labels: list[int] | None = None,
           seed: int = 0, eval_samples: int = 10) -> dict[str, Any]:
    """An attack on a few images. Without labels the model's own predictions are attacked, so "success"
    means the prediction changed."""
    atk = make_attack(attack, params)
    net = runtime.load_model(model)
    x = check_images(images).to(runtime.device())
    y = labels_for(net, x, labels, seed=seed, samples=eval_samples)
    report, adv = run_attack(net, atk, x, y, seed=seed, eval_samples=eval_samples, model_name=model)
    p = report.per_image
    return {"adversarial_images": adv.squeeze(1).cpu().tolist(), "labels": p["labels"],
            "predictions_before": p["pred_before"], "predictions_after": p["pred_after"],
            "success": p["success"], "l2": p["l2"], "linf": p["linf"], "seconds": report.seconds,
            "queries": p["queries"], "p_misclassified": p.get("p_misclassified"), "summary": report.summary()}


def detect(model: str, detector: str, images: torch.Tensor, seed: int = 0) -> dict[str, Any]:
    """Detection with a fitted detector of the store (cached per process with its model)."""
    det = runtime.cached(f"detector:{detector}", model,
                         lambda st, name: load_detector(st, name, detector, model=runtime.load_model(name)))
    out = det.detect(check_images(images).to(runtime.device()), seed=seed)
    return {"is_adversarial": out.is_adversarial.tolist(), "scores": out.score.tolist(),
            "thresholds": out.threshold.tolist(), "predictions": out.prediction.tolist()}
