"""Projected Gradient Descent (Madry et al., 2018) in L-infinity or L2.

    >>> adv = make_attack("pgd", {"eps": 0.1, "alpha": 0.01, "steps": 40, "norm": "linf"})(model, x, y).adversarial
"""

import torch
import torch.nn.functional as F
from pydantic import Field

from genrobust.attacks.base import AttackOutput, BallParams, BudgetedAttack, LogitsFn, expected_gradient


class PGDParams(BallParams):
    alpha: float = Field(0.01, gt=0.0, description="Step size.")
    steps: int = Field(40, ge=1, le=100_000)
    random_start: bool = Field(True, description="Start from a uniform point of the ball.")


class PGD(BudgetedAttack):
    """Gradient ascent on the expected CE(logits, y) over the eot draws, projected after every step onto the eps-ball around x and [0, 1]."""

    name = "pgd"
    Params = PGDParams

    def passes(self) -> float:
        return self.params.steps * self.params.eot

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """What the attack ascends, per row (one image under one noise draw); EOT averages it over draws."""
        return F.cross_entropy(logits, y, reduction="none")

    def keep(self, x_adv: torch.Tensor, logits: torch.Tensor, y: torch.Tensor, best):
        """Hook to remember good iterates (``best`` starts as None); plain PGD returns its last one."""
        return best

    def run(self, f: LogitsFn, x: torch.Tensor, y: torch.Tensor, targets) -> AttackOutput:
        p, norm = self.params, self.norm
        # the iterate is kept as a perturbation (delta-space arithmetic, as since the first release)
        delta = torch.zeros_like(x)
        if p.random_start:
            delta = norm.project(norm.random(x.shape, p.eps, f.generator), p.eps)
        delta = (x + delta).clamp(0, 1) - x
        best = None
        for _ in range(p.steps):
            grad, logits = expected_gradient(f, x + delta, lambda z, i: self.loss(z, y[i]), batch_mean=True)
            best = self.keep(x + delta, logits[0], y, best)
            delta = norm.project(delta + p.alpha * norm.unit(grad), p.eps)
            delta = (x + delta).clamp(0, 1) - x
        return AttackOutput(self.finish(f, x + delta, y, best))

    def finish(self, f: LogitsFn, x_adv: torch.Tensor, y: torch.Tensor, best) -> torch.Tensor:
        return x_adv
