"""The attack hierarchy: a typed parameter model per attack, one base class, one registry.

An attack maps (model, images, labels) to adversarial images in [0, 1]. ``model`` is any
``torch.nn.Module`` mapping images in [0, 1] to logits, or a genrobust ``LatentClassifier``, whose
logits are stochastic: the attacker evaluates it with its own noise (a generator seeded from the
attack's seed), never the evaluator's.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import nn

from genrobust.data import check_images, check_labels
from genrobust.errors import GenrobustError, validation_message
from genrobust.models import LatentClassifier

ATTACKS: dict[str, type["Attack"]] = {}


class AttackParams(BaseModel):
    """Parameters every attack shares."""

    model_config = ConfigDict(extra="forbid")

    samples: int = Field(10, ge=1, le=1000, description="K importance samples for the attacker's own evaluations "
                                                         "of a genrobust classifier (ignored for plain modules).")


class LogitsFn:
    """The attacker's view of a model: x -> logits, with the attacker's own noise, counting queries.

    ``seed`` re-seeds the noise for one call, so two calls with the same seed and batch shape use the same
    latent draws per row (common random numbers for finite differences)."""

    def __init__(self, model: nn.Module, samples: int, generator: torch.Generator):
        self.model, self.samples, self.generator = model, samples, generator
        self.latent = isinstance(model, LatentClassifier)
        self.queries = 0
        model.eval()

    # Large query batches (ZOO sends images x coordinates at once) run in chunks: a latent classifier's
    # pass is (rows x 10 classes x K) decoder passes, and moderate chunks stay in cache (BENCHMARKS.md).
    chunk = 64

    def __call__(self, x: torch.Tensor, seed: int | None = None) -> torch.Tensor:
        self.queries += x.shape[0]
        if not self.latent:
            return self.model(x)
        if seed is None:
            return self.model.logits(x, self.samples, self.generator)
        # Re-seeded per chunk: row j of every chunk gets the same noise in calls with the same seed.
        return torch.cat([self.model.logits(x[i:i + self.chunk], self.samples,
                                            torch.Generator(device=x.device).manual_seed(seed))
                          for i in range(0, x.shape[0], self.chunk)])

    def draw_seed(self) -> int:
        return int(torch.randint(0, 2**62, (1,), generator=self.generator, device=self.generator.device))


@dataclass
class AttackOutput:
    adversarial: torch.Tensor  # (N, 1, 28, 28) in [0, 1]
    queries: torch.Tensor | None = None  # (N,) model evaluations per image (black-box attacks)


class Attack(ABC):
    """Base class. Subclasses set ``name``, ``Params`` and ``norm`` and implement ``run``; defining the
    subclass registers it (one file per attack in this package, imported by the package)."""

    name: ClassVar[str]
    Params: ClassVar[type[AttackParams]] = AttackParams
    norm: ClassVar[str] = "l2"  # the norm the attack minimises or bounds
    black_box: ClassVar[bool] = False
    targeted_ok: ClassVar[bool] = False

    def __init_subclass__(cls, register: bool = True, **kwargs):
        super().__init_subclass__(**kwargs)
        if register and "name" in cls.__dict__:
            ATTACKS[cls.name] = cls

    def __init__(self, **params):
        try:
            self.params = self.Params(**params)
        except ValidationError as exc:
            raise GenrobustError(f"invalid parameters for {self.name}: {validation_message(exc)}") from None

    def __call__(self, model: nn.Module, images, labels, seed: int = 0, targets=None) -> AttackOutput:
        x = check_images(images)
        y = check_labels(labels, len(x)).to(x.device)
        if targets is not None:
            if not self.targeted_ok:
                raise GenrobustError(f"{self.name} has no targeted mode")
            targets = check_labels(targets, len(x))
        # Tensors an attack creates (buffers, noise) land on the images' device, so CUDA workers need no
        # per-attack device code. (CI has no GPU: the CUDA path is not exercised by the tests.)
        with torch.device(x.device):
            f = LogitsFn(model, self.params.samples, torch.Generator(device=x.device).manual_seed(seed))
            out = self.run(f, x, y, None if targets is None else targets.to(x.device))
        out.adversarial = out.adversarial.detach().clamp_(0.0, 1.0)
        return out

    @abstractmethod
    def run(self, f: LogitsFn, x: torch.Tensor, y: torch.Tensor, targets: torch.Tensor | None) -> AttackOutput:
        """Adversarial images for clean images x with labels y."""


def make_attack(name: str, params: dict | None = None) -> Attack:
    if name not in ATTACKS:
        raise GenrobustError(f"unknown attack {name!r}; choose one of {', '.join(ATTACKS)}")
    return ATTACKS[name](**(params or {}))


def margin(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Z_y - max_{i != y} Z_i. The true class is masked with -inf, not multiplied by (1 - onehot): logits
    log p(x, y) of generative classifiers are all negative, so a zeroed entry would win the max."""
    real = logits.gather(1, labels[:, None]).squeeze(1)
    other = logits.masked_fill(nn.functional.one_hot(labels, logits.shape[1]).bool(), float("-inf")).amax(1)
    return real - other


def input_gradient(f: LogitsFn, x: torch.Tensor, loss_fn) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradient of loss_fn(logits) (summed over the batch) with respect to x, and the logits."""
    x = x.detach().requires_grad_(True)
    logits = f(x)
    (grad,) = torch.autograd.grad(loss_fn(logits).sum(), x)
    return grad, logits.detach()
