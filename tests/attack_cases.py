"""Fixed attack runs whose outputs are held to a golden file (tests/test_attack_golden.py).

Each case: an attack with parameters, a model (a tiny genrobust GFZ or a deterministic linear module) and
fixed images, labels and seed. Cheap: the whole set runs in a few seconds.
"""

from __future__ import annotations

import torch
from torch import nn

from genrobust.attacks import make_attack
from tests.conftest import tiny_model


class _Linear(nn.Module):
    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w = nn.Parameter(torch.randn(10, 784, generator=g) * 0.05)
        self.b = nn.Parameter(torch.randn(10, generator=g) * 0.1 - 500.0)

    def forward(self, x):
        return x.flatten(1) @ self.w.T + self.b


LATENT = {
    "fgsm": ("fgsm", {"eps": 0.1}),
    "fgsm-eot": ("fgsm", {"eps": 0.1, "eot": 3}),
    "pgd-linf": ("pgd", {"eps": 0.1, "alpha": 0.02, "steps": 4}),
    "pgd-l2-fixed-start": ("pgd", {"eps": 1.0, "alpha": 0.2, "steps": 4, "norm": "l2", "random_start": False}),
    "deepfool": ("deepfool", {"max_iter": 8}),
    "deepfool-inf-eot": ("deepfool", {"max_iter": 6, "p": "inf", "eot": 2, "accept_draws": 3}),
    "truncated-deepfool": ("truncated-deepfool", {"max_iter": 8, "bisection_steps": 4}),
    # early abort and the improvement threshold came later: off, CW is the algorithm the golden file holds
    "cw": ("cw", {"steps": 8, "binary_steps": 2, "abort_early": False, "improve": 0.0}),
    "cw-targeted": ("cw", {"steps": 8, "binary_steps": 2, "kappa": 0.5, "abort_early": False, "improve": 0.0}),
    "zoo": ("zoo", {"steps": 4, "coords": 16}),
    "zoo-eot": ("zoo", {"steps": 3, "coords": 8, "eot": 2, "kappa": 0.1}),
    "apgd-ce": ("apgd", {"steps": 6}),
    "apgd-dlr-l2": ("apgd", {"steps": 6, "loss": "dlr", "norm": "l2", "eps": 1.0, "restarts": 2}),
    "autoattack-rand": ("autoattack", {"version": "rand", "steps": 4, "eot": 2}),
}
PLAIN = {
    "plain-pgd-linf": ("pgd", {"eps": 0.05, "alpha": 0.01, "steps": 5}),
    "plain-deepfool": ("deepfool", {"max_iter": 10}),
    "plain-cw": ("cw", {"steps": 10, "binary_steps": 2, "abort_early": False, "improve": 0.0}),
    "plain-apgd-l2": ("apgd", {"steps": 5, "norm": "l2", "eps": 0.5}),
}
CASES = {**LATENT, **PLAIN}


def run_case(key: str) -> dict[str, torch.Tensor]:
    name, params = CASES[key]
    g = torch.Generator().manual_seed(0)
    x = torch.rand(5, 1, 28, 28, generator=g)
    if key in LATENT:
        model = tiny_model("GFZ")
        params = params | {"samples": 2}
        y = torch.arange(len(x)) % 10
    else:
        model = _Linear()
        with torch.no_grad():
            y = model(x).argmax(1)
    targets = (y + 1) % 10 if key == "cw-targeted" else None
    out = make_attack(name, params)(model, x, y, seed=3, targets=targets)
    result = {"adversarial": out.adversarial}
    if out.queries is not None:
        result["queries"] = out.queries
    return result
