"""Truncated-DeepFool: DeepFool, then the found perturbation cut back to the shortest misclassified scale.

The study names it as its own DeepFool variant that finds smaller perturbations. Our definition: run
DeepFool to get eta, then bisect on t in (0, 1] for the smallest t at which clip(x + t * eta) is still
misclassified (judged with the attacker's own noise, by robust acceptance: at least accept_fraction of
accept_draws frozen draws, so the bisection sees one fixed noise per image). This cuts back the overshoot and the zig-zag of
the iterations; ||t * eta|| <= ||eta|| by construction. Cost: ``bisection_steps`` x accept_draws extra forward passes.

    >>> adv = make_attack("truncated-deepfool", {"p": 2, "bisection_steps": 10})(model, images, labels).adversarial
"""

import torch
from pydantic import Field

from genrobust.attacks.base import FORWARD, AttackOutput, LogitsFn
from genrobust.attacks.deepfool import DeepFool, DeepFoolParams


class TruncatedDeepFoolParams(DeepFoolParams):
    bisection_steps: int = Field(10, ge=1, le=64, description="Bisection steps on the scale t of eta.")


class TruncatedDeepFool(DeepFool):
    """DeepFool, then bisection on t in (0, 1] for the shortest t * eta that is still misclassified."""

    name = "truncated-deepfool"
    Params = TruncatedDeepFoolParams

    def passes(self) -> float:  # one acceptance test per bisection step
        return super().passes() + self.params.bisection_steps * max(self.params.accept_draws, 1) * FORWARD

    def run(self, f: LogitsFn, x: torch.Tensor, y: torch.Tensor, targets) -> AttackOutput:
        eta = self.deepfool(f, x, y)
        shape = (-1, 1, 1, 1)
        every = torch.arange(len(x))
        with torch.no_grad():
            fooled = self.accepted(f, (x + eta).clamp(0, 1), y, every)
            lo = torch.zeros(len(x))  # not misclassified at lo (t = 0 is the clean image)
            hi = torch.ones(len(x))  # misclassified at hi
            for _ in range(self.params.bisection_steps):
                mid = (lo + hi) / 2
                adv = self.accepted(f, (x + mid.view(shape) * eta).clamp(0, 1), y, every)
                hi = torch.where(adv, mid, hi)
                lo = torch.where(adv, lo, mid)
        t = torch.where(fooled, hi, torch.ones_like(hi))  # images DeepFool did not fool keep their eta
        return AttackOutput(x + t.view(shape) * eta)
