"""Detection rates at the calibrated operating point and ROC curves (scikit-learn's metrics)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from sklearn.metrics import roc_auc_score, roc_curve

from genrobust.detection.detectors import Detection


def detection_rate(adversarial: Detection, success: torch.Tensor | np.ndarray) -> float | None:
    """Fraction of the *successful* adversarial examples that the detector flags (None if none succeeded)."""
    success = torch.as_tensor(np.asarray(success), dtype=torch.bool, device="cpu")
    if not success.any():
        return None
    return adversarial.is_adversarial[success].double().mean().item()


def false_positive_rate(clean: Detection) -> float:
    return clean.is_adversarial.double().mean().item()


def roc(clean: Detection, adversarial: Detection, success=None) -> dict[str, Any] | None:
    """ROC over all thresholds on the standardised score: positives are the (successful) adversarial
    images, negatives the clean ones; suspicion = -z. None when either side is empty."""
    adv_z = adversarial.z if success is None else adversarial.z[torch.as_tensor(np.asarray(success), dtype=torch.bool, device="cpu")]
    if len(adv_z) == 0 or len(clean.z) == 0:
        return None
    labels = np.r_[np.zeros(len(clean.z)), np.ones(len(adv_z))]
    suspicion = -np.r_[clean.z.cpu().numpy(), adv_z.cpu().numpy()]
    fpr, tpr, _ = roc_curve(labels, suspicion)
    return {"fpr": fpr.tolist(), "tpr": tpr.tolist(), "auc": float(roc_auc_score(labels, suspicion)),
            "n_clean": len(clean.z), "n_adversarial": len(adv_z)}
