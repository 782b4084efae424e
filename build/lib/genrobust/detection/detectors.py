"""Detectors of adversarial inputs built on the logits log p(x, y_c) of a latent-variable classifier.

Every detector reduces an image to a *score* and standardises it with statistics of clean training data,

    z = (score - mu_g) / sigma_g            (logit, marginal detectors: low score is suspicious)
    z = -(score - mu_g) / sigma_g           (KL detector: high divergence is suspicious)

where g is the predicted class F(x) (per-class detectors) or a single global group. An image is flagged
when z < -alpha, i.e. its score lies more than alpha standard deviations on the suspicious side of its
class mean. In the study's notation the logit detector rejects x if log p(x, F(x)) < delta_F(x) with

    delta_c = mu_c - alpha * sigma_c,   alpha > 0 for thresholds below the mean.

mu_c, sigma_c come from the correctly classified training images of class c, with their *true* labels
(``fit``); one global alpha (the same for every class) is then chosen so that a fraction ``fpr`` (default
5%) of held-out clean images is flagged (``calibrate``). At test time the predicted label selects the
class statistics, as a deployed detector cannot know the true one. ``z`` also orders images for ROC curves.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from genrobust.device import module_device
from genrobust.errors import GenrobustError
from genrobust.evaluation import batched_logits
from genrobust.models import LatentClassifier

DETECTORS: dict[str, type["Detector"]] = {}
DEFAULT_FPR = 0.05
MIN_SIGMA = 1e-6


class DetectionNotApplicable(GenrobustError):
    """The model's logits carry no density of x (DFX, DBX), so density-based detection means nothing."""


def check_applicable(model: LatentClassifier, model_name: str = "this model") -> None:
    if not model.logits_have_density:
        s = model.structure.name
        raise DetectionNotApplicable(
            f"detection is not applicable to {model_name} ({s}): its logits log p(x, y) contain the constant "
            f"p_D(x) instead of a model of x, so they carry no evidence about how likely the image is; "
            f"use a model whose structure is DFZ, GFZ, GFY, GBZ or GBY"
        )


@dataclass
class Detection:
    """Per-image results. ``score`` and ``threshold`` are in the detector's own units (log p(x, F(x)) for
    the logit detector); ``z`` is the standardised score (flagged when z < -alpha)."""

    is_adversarial: torch.Tensor  # (N,) bool
    score: torch.Tensor  # (N,) float
    threshold: torch.Tensor  # (N,) float, the threshold that applied to each image (its predicted class)
    prediction: torch.Tensor  # (N,) long, F(x)
    z: torch.Tensor  # (N,) float


class Detector(ABC):
    """Base class: subclasses set ``name``, ``per_class``, ``reject_above`` and implement ``raw_score``."""

    name: ClassVar[str]
    description: ClassVar[str]
    per_class: ClassVar[bool] = True
    reject_above: ClassVar[bool] = False  # True when large scores are suspicious (KL)

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__:
            DETECTORS[cls.name] = cls

    def __init__(self, model: LatentClassifier, samples: int = 10, seed: int = 0, model_name: str = "this model"):
        check_applicable(model, model_name)
        if samples < 1:
            raise GenrobustError(f"samples (K) must be at least 1, got {samples}")
        self.model, self.samples, self.seed = model, samples, seed
        self.mu: torch.Tensor | None = None
        self.sigma: torch.Tensor | None = None
        self.alpha: float | None = None
        self.info: dict[str, Any] = {}

    # ------------------------------------------------------------------ scores
    @abstractmethod
    def raw_score(self, logits: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
        """The detector's score per image from logits (N, C) and predicted labels (N,)."""

    def fit_extra(self, logits: torch.Tensor, labels: torch.Tensor) -> None:  # noqa: B027 optional hook
        """Statistics a score needs before it can be computed (KL: the mean predictive distributions)."""

    def _groups(self, labels: torch.Tensor) -> torch.Tensor:
        return labels if self.per_class else torch.zeros_like(labels)

    # ------------------------------------------------------------------ device
    def _stats(self) -> dict[str, torch.Tensor]:
        """The fitted statistics; they live on the model's device and move with ``to``."""
        return {k: v for k, v in (("mu", self.mu), ("sigma", self.sigma)) if v is not None}

    def to(self, device: torch.device | str) -> "Detector":
        """Move the model and the fitted statistics to ``device``."""
        self.model.to(device)
        for k, v in self._stats().items():
            setattr(self, k, v.to(device))
        return self

    def _on(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """mu and sigma on the logits' device (a no-op where they already are, e.g. after ``to``)."""
        return self.mu.to(logits.device), self.sigma.to(logits.device)

    def standardise(self, logits: torch.Tensor, pred: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self._require_fitted()
        mu, sigma = self._on(logits)
        score = self.raw_score(logits, pred)
        g = self._groups(pred)
        z = (score - mu[g]) / sigma[g]
        return (-z if self.reject_above else z), score

    # ------------------------------------------------------------------ fitting from logits
    def fit_logits(self, logits: torch.Tensor, labels: torch.Tensor) -> "Detector":
        """Class statistics from training logits and *true* labels, over the correctly classified images.
        A class with fewer than two such images uses the statistics pooled over all of them."""
        logits, labels = logits.float(), labels.long()
        keep = logits.argmax(1) == labels
        if keep.sum() < 2:
            raise GenrobustError("cannot fit a detector: fewer than two training images are classified correctly")
        logits, labels = logits[keep], labels[keep]
        self.fit_extra(logits, labels)
        score = self.raw_score(logits, labels)
        groups = logits.shape[1] if self.per_class else 1
        g = self._groups(labels)
        mu = torch.full((groups,), score.mean().item(), device=logits.device)
        sigma = torch.full((groups,), score.std().clamp_min(MIN_SIGMA).item(), device=logits.device)
        pooled = []
        for c in range(groups):
            s = score[g == c]
            if len(s) >= 2:
                mu[c], sigma[c] = s.mean(), s.std().clamp_min(MIN_SIGMA)
            else:
                pooled.append(c)
        self.mu, self.sigma = mu, sigma
        self.info.update(n_fit=int(keep.sum()), pooled_groups=pooled)
        return self

    def calibrate_logits(self, logits: torch.Tensor, fpr: float = DEFAULT_FPR) -> "Detector":
        """Choose alpha so that a fraction ``fpr`` of these clean (held-out) images is flagged."""
        if not 0.0 < fpr < 1.0:
            raise GenrobustError(f"false-positive rate must be in (0, 1), got {fpr}")
        z, _ = self.standardise(logits.float(), logits.argmax(1))
        # flagged iff z < -alpha: alpha = -(fpr-quantile of z); 'lower' keeps the reached rate <= fpr
        self.alpha = -torch.quantile(z.double(), fpr, interpolation="lower").item()
        self.info.update(n_calibrate=len(z), target_fpr=fpr,
                         calibration_fpr=(z < -self.alpha).double().mean().item())
        return self

    def detect_logits(self, logits: torch.Tensor) -> Detection:
        if self.alpha is None:
            raise GenrobustError(f"{self.name} detector is not calibrated; call fit() or calibrate_logits() first")
        pred = logits.argmax(1)
        z, score = self.standardise(logits.float(), pred)
        g = self._groups(pred)
        sign = 1.0 if self.reject_above else -1.0
        mu, sigma = self._on(logits)
        threshold = mu[g] + sign * self.alpha * sigma[g]
        return Detection(is_adversarial=z < -self.alpha, score=score, threshold=threshold, prediction=pred, z=z)

    # ------------------------------------------------------------------ fitting from images
    def logits_of(self, images: torch.Tensor, seed: int | None = None, progress: bool = False,
                  desc: str = "logits") -> torch.Tensor:
        return batched_logits(self.model, images, self.samples, self.seed if seed is None else seed,
                              progress=progress, desc=desc)

    def fit(self, x: torch.Tensor, y: torch.Tensor, x_heldout: torch.Tensor | None = None, fpr: float = DEFAULT_FPR,
            progress: bool = False) -> "Detector":
        """Fit on clean training images with true labels; calibrate alpha on ``x_heldout`` (default: x)."""
        logits = self.logits_of(x, progress=progress, desc=f"fit {self.name}")
        self.fit_logits(logits, torch.as_tensor(y, device=logits.device))
        held = logits if x_heldout is None else self.logits_of(x_heldout, progress=progress, desc="calibrate")
        return self.calibrate_logits(held, fpr)

    def detect(self, x: torch.Tensor, seed: int | None = None) -> Detection:
        return self.detect_logits(self.logits_of(x, seed))

    # ------------------------------------------------------------------ persistence
    def _require_fitted(self) -> None:
        if self.mu is None:
            raise GenrobustError(f"{self.name} detector is not fitted; call fit() first")

    def extra_state(self) -> dict[str, Any]:
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:  # noqa: B027 optional hook
        pass

    def to_dict(self) -> dict[str, Any]:
        if self.mu is None or self.alpha is None:
            raise GenrobustError(f"{self.name} detector is not fitted and calibrated")
        return {"detector": self.name, "samples": self.samples, "seed": self.seed, "alpha": self.alpha,
                "mu": self.mu.tolist(), "sigma": self.sigma.tolist(), **self.extra_state(), "info": self.info}

    @classmethod
    def from_dict(cls, state: dict[str, Any], model: LatentClassifier, model_name: str = "this model") -> "Detector":
        det = cls(model, samples=int(state["samples"]), seed=int(state["seed"]), model_name=model_name)
        device = module_device(model)  # statistics live where the model computes
        det.mu = torch.tensor(state["mu"], dtype=torch.float32, device=device)
        det.sigma = torch.tensor(state["sigma"], dtype=torch.float32, device=device)
        det.alpha = float(state["alpha"])
        det.info = dict(state.get("info", {}))
        det.load_extra_state(state)
        return det


class LogitDetector(Detector):
    """The study's detector: log p(x, F(x)) against per-class thresholds delta_c = mu_c - alpha sigma_c."""

    name = "logit"
    description = "log p(x, F(x)) below its class threshold mu_c - alpha*sigma_c"

    def raw_score(self, logits, pred):
        return logits.gather(1, pred[:, None]).squeeze(1)


class MarginalDetector(Detector):
    """log p(x) = logsumexp_c log p(x, c) against one global threshold mu - alpha sigma."""

    name = "marginal"
    description = "log p(x) = logsumexp_c log p(x, c) below mu - alpha*sigma (one global threshold)"
    per_class = False

    def raw_score(self, logits, pred):
        return torch.logsumexp(logits, 1)


class KLDetector(Detector):
    """KL(pbar_c || p(y|x)) for the predicted class c, pbar_c the mean p(y|x) of training images of class c
    (Li et al.); flagged when above mu_c + alpha sigma_c."""

    name = "kl"
    description = "KL(pbar_F(x) || p(y|x)) above its class threshold mu_c + alpha*sigma_c"
    reject_above = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.pbar: torch.Tensor | None = None

    def fit_extra(self, logits, labels):
        probs = logits.softmax(1)
        C = logits.shape[1]
        pooled = probs.mean(0)
        self.pbar = torch.stack([probs[labels == c].mean(0) if (labels == c).any() else pooled for c in range(C)])

    def raw_score(self, logits, pred):
        p = self.pbar.to(logits.device)[pred]
        # xlogy: 0 log 0 = 0 where a class never gets probability mass (sharply peaked generative posteriors)
        return (torch.xlogy(p, p) - p * logits.log_softmax(1)).sum(1)

    def _stats(self):
        return super()._stats() | ({"pbar": self.pbar} if self.pbar is not None else {})

    def extra_state(self):
        return {"pbar": self.pbar.tolist()}

    def load_extra_state(self, state):
        self.pbar = torch.tensor(state["pbar"], dtype=torch.float32, device=module_device(self.model))
