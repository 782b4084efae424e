"""Detector-aware PGD: an adaptive white-box attack on the classifier *and* the logit detector.

The logit detector flags x when log p(x, F(x)) < delta_F(x) = mu_c - alpha sigma_c. This attack ascends

    CE(logits, y) - lam * relu((delta_F(x) - log p(x, F(x))) / sigma_F(x) + kappa)

(the hinge in units of the class's standard deviation, so one lam suits every model), projected onto the
eps-ball like PGD, and returns for each image the last iterate that the attacker's own evaluation saw
both misclassified and undetected (the final iterate if there was none). Li et al. call this a white-box
attack on the detector. It needs a fitted logit detector, so it is built from one and is not in the
attack registry:

    >>> det = load_detector(store, "fmnist-gfz", "logit")
    >>> adv = DetectorAwarePGD(det, eps=0.1, lam=1.0)(model, x, y).adversarial
"""

import torch
import torch.nn.functional as F
from pydantic import Field

from genrobust.attacks.base import LogitsFn
from genrobust.attacks.pgd import PGD, PGDParams
from genrobust.errors import GenrobustError


class DetectorAwarePGDParams(PGDParams):
    lam: float = Field(1.0, ge=0.0, description="Weight of the detector hinge (0: plain PGD).")
    kappa: float = Field(0.5, ge=0.0, description="Safety margin above the threshold, in class standard deviations.")


class DetectorAwarePGD(PGD, register=False):
    name = "detector-aware-pgd"
    Params = DetectorAwarePGDParams

    def __init__(self, detector, **params):
        if getattr(detector, "name", None) != "logit" or detector.alpha is None:
            raise GenrobustError("detector-aware PGD needs a fitted and calibrated logit detector")
        super().__init__(**params)
        self.threshold = detector.mu - detector.alpha * detector.sigma  # delta_c
        self.sigma = detector.sigma

    def _hinge_terms(self, logits: torch.Tensor) -> torch.Tensor:
        pred = logits.argmax(1)
        log_joint = logits.gather(1, pred[:, None]).squeeze(1)
        if self.threshold.device != logits.device:  # moved once, on the first step, not at every step
            self.threshold, self.sigma = self.threshold.to(logits.device), self.sigma.to(logits.device)
        return (self.threshold[pred] - log_joint) / self.sigma[pred]  # > 0: detected

    def loss(self, logits, y):
        hinge = F.relu(self._hinge_terms(logits) + self.params.kappa)
        return F.cross_entropy(logits, y, reduction="none") - self.params.lam * hinge

    def _good(self, logits, y):
        return (logits.argmax(1) != y) & (self._hinge_terms(logits) < 0)

    def keep(self, x_adv, logits, y, best):
        """best = (images, found): the last iterate seen misclassified and undetected, per image."""
        good = self._good(logits, y)
        if best is None:
            return x_adv.detach().clone(), good
        images, found = best
        return torch.where(good.view(-1, 1, 1, 1), x_adv.detach(), images), found | good

    def finish(self, f: LogitsFn, x_adv, y, best):
        with torch.no_grad():
            images, found = self.keep(x_adv, f(x_adv), y, best)
        return torch.where(found.view(-1, 1, 1, 1), images, x_adv)
