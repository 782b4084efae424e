"""Projected Gradient Descent (Madry et al., 2018) in L-infinity or L2.

    >>> adv = make_attack("pgd", {"eps": 0.1, "alpha": 0.01, "steps": 40, "norm": "linf"})(model, x, y).adversarial
"""

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from genrobust.attacks.base import Attack, AttackOutput, AttackParams, LogitsFn, expected_gradient

TINY = 1e-12


class PGDParams(AttackParams):
    eps: float = Field(0.1, ge=0.0, description="Radius of the ball (L-infinity or L2).")
    alpha: float = Field(0.01, gt=0.0, description="Step size.")
    steps: int = Field(40, ge=1, le=100_000)
    norm: Literal["linf", "l2"] = "linf"
    random_start: bool = Field(True, description="Start from a uniform point of the ball.")


def _l2(v: torch.Tensor) -> torch.Tensor:
    return v.flatten(1).norm(dim=1).clamp_min(TINY).view(-1, 1, 1, 1)


class PGD(Attack):
    """Gradient ascent on the expected CE(logits, y) over the eot draws, projected after every step onto the eps-ball around x and [0, 1]."""

    name = "pgd"
    Params = PGDParams

    def project(self, delta: torch.Tensor) -> torch.Tensor:
        eps = self.params.eps
        if self.params.norm == "linf":
            return delta.clamp(-eps, eps)
        return delta * (eps / _l2(delta)).clamp(max=1.0)

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """What the attack ascends, per row (one image under one noise draw); EOT averages it over draws."""
        return F.cross_entropy(logits, y, reduction="none")

    def keep(self, x_adv: torch.Tensor, logits: torch.Tensor, y: torch.Tensor, best):
        """Hook to remember good iterates (``best`` starts as None); plain PGD returns its last one."""
        return best

    def run(self, f: LogitsFn, x: torch.Tensor, y: torch.Tensor, targets) -> AttackOutput:
        p = self.params
        delta = torch.zeros_like(x)
        if p.random_start:
            u = torch.rand(x.shape, generator=f.generator) * 2 - 1
            if p.norm == "l2":  # uniform direction, radius eps * U^(1/d)
                r = torch.rand(len(x), 1, 1, 1, generator=f.generator) ** (1 / x[0].numel())
                u = torch.randn(x.shape, generator=f.generator)
                u = u / _l2(u) * r
            delta = self.project(u * p.eps)
        delta = (x + delta).clamp(0, 1) - x
        best = None
        for _ in range(p.steps):
            grad, logits = expected_gradient(f, x + delta, lambda z, i: self.loss(z, y[i]), batch_mean=True)
            best = self.keep(x + delta, logits[0], y, best)
            step = grad.sign() if p.norm == "linf" else grad / _l2(grad)
            delta = self.project(delta + p.alpha * step)
            delta = (x + delta).clamp(0, 1) - x
        return AttackOutput(self.finish(f, x + delta, y, best))

    def finish(self, f: LogitsFn, x_adv: torch.Tensor, y: torch.Tensor, best) -> torch.Tensor:
        return x_adv
