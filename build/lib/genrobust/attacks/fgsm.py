"""Fast Gradient Sign Method (Goodfellow et al., 2015), L-infinity.

    >>> from genrobust.attacks import make_attack
    >>> adv = make_attack("fgsm", {"eps": 0.1})(model, images, labels, seed=0).adversarial
"""

import torch
import torch.nn.functional as F
from pydantic import Field

from genrobust.attacks.base import AttackOutput, AttackParams, BudgetedAttack, LogitsFn, expected_gradient
from genrobust.attacks.norms import LINF


class FGSMParams(AttackParams):
    eps: float = Field(0.1, ge=0.0, le=1.0, description="L-infinity size of the step.")


class FGSM(BudgetedAttack):
    """x + eps * sign(grad_x E[CE(logits, y)]), clipped to [0, 1] (expectation over the eot draws)."""

    name = "fgsm"
    Params = FGSMParams
    norm = LINF  # one signed step: L-infinity only

    def passes(self) -> float:
        return self.params.eot

    def run(self, f: LogitsFn, x: torch.Tensor, y: torch.Tensor, targets) -> AttackOutput:
        # expected CE over the eot draws, as a batch mean: at eot = 1 exactly torchattacks' gradient, so
        # bit-identical results given the same noise (BENCHMARKS.md)
        grad, _ = expected_gradient(f, x, lambda z, i: F.cross_entropy(z, y[i], reduction="none"),
                                    batch_mean=True)
        return AttackOutput((x + self.params.eps * grad.sign()).clamp(0.0, 1.0))
