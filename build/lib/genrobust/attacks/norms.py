"""Norms as objects: the ball a budgeted attack stays in, the size a minimal attack shrinks.

Each norm owns what attacks used to branch on: the size of a perturbation, the projection onto its
eps-ball, the steepest-ascent step of unit norm and a uniform random point of the ball. Attacks call
``self.norm``; none of them tests which norm it has.

Sizes and steps are per image (over every dimension after the first); the ball is centred at 0 (a
perturbation), clipping to the [0, 1] box is the attack's.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import ClassVar, Literal

import torch

TINY = 1e-12
NormName = Literal["linf", "l2"]  # the norms a budget can be given in


def _per_image(s: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Per-image values (N,) shaped to broadcast against ``like`` (N, ...)."""
    return s.view(-1, *([1] * (like.dim() - 1)))


class Norm(ABC):
    name: ClassVar[str]
    p: float

    @abstractmethod
    def size(self, v: torch.Tensor) -> torch.Tensor:
        """||v||_p per image, shape (N,)."""

    def dual_size(self, w: torch.Tensor) -> torch.Tensor:
        """||w||_q over the last dim, q the dual exponent (1/p + 1/q = 1): the rate at which a unit
        L_p step can change <w, x>."""
        q = self.q
        if q == 1.0:
            return w.abs().sum(-1)
        if math.isinf(q):
            return w.abs().amax(-1)
        return w.abs().pow(q).sum(-1).pow(1.0 / q)

    @property
    def q(self) -> float:
        return 1.0 if math.isinf(self.p) else (math.inf if self.p == 1.0 else self.p / (self.p - 1.0))

    # the ball: only norms with a closed-form projection define these (L-infinity, L2)
    def project(self, delta: torch.Tensor, eps: float) -> torch.Tensor:
        """The point of the eps-ball nearest to delta (delta itself when inside)."""
        raise NotImplementedError(f"no projection onto the L{self.p:g} ball")

    def unit(self, g: torch.Tensor) -> torch.Tensor:
        """The step of unit norm that most increases <g, step>."""
        raise NotImplementedError(f"no steepest step in L{self.p:g}")

    def random(self, shape: torch.Size, eps: float, generator: torch.Generator) -> torch.Tensor:
        """A uniform random point of the eps-ball, on the generator's device."""
        raise NotImplementedError(f"no uniform sampler of the L{self.p:g} ball")

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class LInf(Norm):
    name, p = "linf", math.inf

    def size(self, v):
        return v.flatten(1).abs().amax(1)

    def project(self, delta, eps):
        return delta.clamp(-eps, eps)

    def unit(self, g):
        return g.sign()

    def random(self, shape, eps, generator):
        return eps * (torch.rand(shape, generator=generator, device=generator.device) * 2 - 1)


class L2(Norm):
    name, p = "l2", 2.0

    def size(self, v):
        return v.flatten(1).norm(dim=1)

    def project(self, delta, eps):
        return delta * (eps / _per_image(self.size(delta).clamp_min(TINY), delta)).clamp(max=1.0)

    def unit(self, g):
        return g / _per_image(self.size(g).clamp_min(TINY), g)

    def random(self, shape, eps, generator):
        # a uniform direction at radius eps * U^(1/d): uniform in the ball's volume
        u = torch.randn(shape, generator=generator, device=generator.device)
        r = torch.rand(shape[0], *([1] * (len(shape) - 1)), generator=generator,
                       device=generator.device) ** (1 / math.prod(shape[1:]))
        return eps * (self.unit(u) * r)


class Lp(Norm):
    """Any p > 1 (DeepFool minimises in it): a size and a dual, no ball."""

    name = "lp"

    def __init__(self, p: float):
        if not p > 1.0:
            raise ValueError(f"p must exceed 1, got {p}")
        self.p = float(p)

    def size(self, v):
        return v.flatten(1).abs().amax(1) if math.isinf(self.p) else v.flatten(1).norm(p=self.p, dim=1)

    def __repr__(self):
        return f"Lp({self.p:g})"


LINF, L2NORM = LInf(), L2()
NORMS: dict[str, Norm] = {"linf": LINF, "l2": L2NORM}


def norm(name_or_p: str | float) -> Norm:
    """The norm named ``linf``/``l2``, or L_p for a number p > 1 (inf: L-infinity, 2: L2)."""
    if isinstance(name_or_p, str):
        return NORMS[name_or_p]
    if math.isinf(name_or_p):
        return LINF
    return L2NORM if name_or_p == 2 else Lp(name_or_p)
