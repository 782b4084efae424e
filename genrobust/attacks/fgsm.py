"""Fast Gradient Sign Method (Goodfellow et al., 2015), L-infinity.

    >>> from genrobust.attacks import make_attack
    >>> adv = make_attack("fgsm", {"eps": 0.1})(model, images, labels, seed=0).adversarial
"""

import torch
import torch.nn.functional as F
from pydantic import Field

from genrobust.attacks.base import Attack, AttackOutput, AttackParams, LogitsFn, input_gradient


class FGSMParams(AttackParams):
    eps: float = Field(0.1, ge=0.0, le=1.0, description="L-infinity size of the step.")


class FGSM(Attack):
    """x + eps * sign(grad_x CE(logits, y)), clipped to [0, 1]."""

    name = "fgsm"
    Params = FGSMParams
    norm = "linf"

    def run(self, f: LogitsFn, x: torch.Tensor, y: torch.Tensor, targets) -> AttackOutput:
        # batch-mean loss, as torchattacks uses: the same gradient up to a positive scale, so the same
        # signs, and bit-identical results to the peer given the same noise (BENCHMARKS.md)
        grad, _ = input_gradient(f, x, lambda z: F.cross_entropy(z, y))
        return AttackOutput((x + self.params.eps * grad.sign()).clamp(0.0, 1.0))
