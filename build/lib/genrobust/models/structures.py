"""The seven factorisations of p(x, y, z), as data: which prior on z, which y-term, which x-term.

Every model is trained on the same ELBO E_q[log p(x,y,z) - log q(z|x,y)] with one amortised q(z|x,y);
a structure only decides which of the terms below enter log p(x,y,z).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

ZPrior = Literal["standard", "y", "x"]  # p(z) = N(0, I) | p(z|y) | p(z|x)
YTerm = Literal["y|x,z", "y|z", "data"]  # p(y|x,z) | p(y|z) | p_D(y), the label frequencies
XTerm = Literal["x|y,z", "x|z", "data"]  # p(x|y,z) | p(x|z) | p_D(x), a constant: no density of x


@dataclass(frozen=True)
class Structure:
    name: str
    factorisation: str
    z_prior: ZPrior
    y_term: YTerm
    x_term: XTerm

    @property
    def kind(self) -> str:
        return "generative" if self.name.startswith("G") else "discriminative"

    @property
    def logits_have_density(self) -> bool:
        """False for DFX and DBX: their 'logits' are log p(y|x) + const, not a density of x."""
        return self.x_term != "data"


STRUCTURES: dict[str, Structure] = {
    s.name: s
    for s in (
        Structure("DFX", "p_D(x) p(z|x) p(y|x,z)", "x", "y|x,z", "data"),
        Structure("DFZ", "p(z) p(x|z) p(y|x,z)", "standard", "y|x,z", "x|z"),
        Structure("DBX", "p_D(x) p(z|x) p(y|z)", "x", "y|z", "data"),
        Structure("GFZ", "p(z) p(y|z) p(x|y,z)", "standard", "y|z", "x|y,z"),
        Structure("GFY", "p_D(y) p(z|y) p(x|y,z)", "y", "data", "x|y,z"),
        Structure("GBZ", "p(z) p(y|z) p(x|z)", "standard", "y|z", "x|z"),
        Structure("GBY", "p_D(y) p(z|y) p(x|z)", "y", "data", "x|z"),
    )
}
