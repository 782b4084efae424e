"""DeepFool for any p > 1 (Moosavi-Dezfooli et al., 2016; the study's Algorithm 1), one implementation
for every norm through the dual norm q = p / (p - 1).

Per iteration, for every class k other than the true one y: w_k = grad f_k - grad f_y, d_k = f_k - f_y on
the logits; l = argmin_k |d_k| / ||w_k||_q; step r = |d_l| / ||w_l||_q^q * |w_l|^(q-1) * sign(w_l), the
smallest L_p step onto the linearised boundary (q = 1 for p = inf gives |d_l| / ||w_l||_1 * sign(w_l)).
Steps accumulate until the image is adversarial; the final perturbation is (1 + overshoot) times their
sum. All images and all classes are processed together; images stop individually.

**The box.** Images live in [0, 1], and a pixel at a bound cannot move past it: w_k loses the components
that would push such a pixel out, so the linearised boundary is the nearest one along moves the box allows,
and the sum of steps is kept inside the box. (Fashion-MNIST's background sits at 0, where a generative
model's gradients are large: unmasked, the clipped steps fell short, and on fmnist-gfz 4 of the first 100
test images never crossed in 200 iterations; masked, none is left and the attack runs 3.5x faster,
BENCHMARKS.md.)

Against a stochastic model: with ``eot`` = M the logits and their gradients are averaged over M draws
(DeepFool linearises the expected logits), and an image stops only when robust acceptance holds (at least
``accept_fraction`` of the image's ``accept_draws`` frozen draws of the attacker's noise misclassify it;
checked only for images the averaged logits already misclassify). Until then, a genrobust classifier's image steps
against the frozen draw farthest from fooled (its logits and Jacobian under that draw's noise): the step
then aims at the boundary still to cross, where re-linearising a draw already past it moves by that draw's
tiny margin. (On the first 50 fmnist-gfz test images this cut the median L2 from 0.341 to 0.327 at equal
fresh success.) Other stochastic modules keep pushing along the chosen class's direction.

    >>> adv = make_attack("deepfool", {"p": 2, "overshoot": 0.02})(model, images, labels).adversarial
    >>> adv_inf = make_attack("deepfool", {"p": "inf"})(model, images, labels).adversarial
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import Field, field_validator

from genrobust.attacks.base import AttackOutput, LogitsFn, MinimalAttack, RobustAcceptParams, margin
from genrobust.attacks.norms import Norm, norm

TINY = 1e-12


class DeepFoolParams(RobustAcceptParams):
    p: float = Field(2.0, gt=1.0, allow_inf_nan=True,  # inf is L-infinity; nan fails gt
                     description="The L_p norm to minimise, p > 1; 'inf' for L-infinity.")
    overshoot: float = Field(0.02, ge=0.0, le=10.0, description="Final perturbation is (1 + overshoot) x the sum.")
    # 200: an image left unfooled should mean robustness, not an exhausted budget (fmnist-gfz, 40 images:
    # unfooled residual 0.10 at 50 iterations, 0 at 200; only the images not yet accepted keep iterating)
    max_iter: int = Field(200, ge=1, le=10_000, description="Iterations before an image is given up.")
    jacobian: Literal["auto", "vmap", "loop"] = Field(
        "auto", description="How the class gradients are computed: auto = one backward over per-class replicas "
                            "for genrobust classifiers and a vmapped backward for other modules; vmap; or "
                            "loop = one backward per class (all three give the same gradients).")

    @field_validator("p", mode="before")
    @classmethod
    def _inf(cls, v):
        return math.inf if isinstance(v, str) and v.strip().lower() in {"inf", "infinity", "linf"} else v


def class_jacobian(f: LogitsFn, x: torch.Tensor, mode: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (n, C) and their gradients for every class, (n, C, D), averaged over f.eot noise draws per
    image (the batch tiled; each draw's noise is shared by all classes), in passes of ``f.grad_rows`` whole
    rows (the latent path's per-class replicas together cost one row's decoder work)."""
    n = x.shape[0]
    m = f.eot if f.stochastic else 1
    xt = x if m == 1 else x.repeat(m, *([1] * (x.dim() - 1)))
    step = f.grad_rows(x.device)
    parts = [_class_jacobian(f, xt[s:s + step], mode) for s in range(0, len(xt), step)]
    logits, jac = (torch.cat(t) for t in zip(*parts))
    return logits.view(m, n, -1).mean(0), jac.view(m, n, *jac.shape[1:]).mean(0)


def _class_jacobian(f: LogitsFn, x: torch.Tensor, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    if mode == "auto" and f.latent:
        f.queries += x.shape[0]
        return f.model.logits_and_jacobian(x, f.samples, f.generator)
    x = x.detach().requires_grad_(True)
    logits = f(x)
    n, C = logits.shape
    if mode in ("auto", "vmap"):
        eye = torch.eye(C, dtype=logits.dtype, device=x.device)[:, None, :].expand(C, n, C)
        (jac,) = torch.autograd.grad(logits, x, eye, is_grads_batched=True)  # (C, n, 1, 28, 28)
        jac = jac.transpose(0, 1)
    else:
        rows = [torch.autograd.grad(logits[:, c].sum(), x, retain_graph=c < C - 1)[0] for c in range(C)]
        jac = torch.stack(rows, 1)
    return logits.detach(), jac.reshape(n, C, -1)


class DeepFool(MinimalAttack):
    """Minimal L_p perturbation by iterated linearisation of the decision boundary."""

    name = "deepfool"
    Params = DeepFoolParams

    @property
    def norm(self) -> Norm:
        return norm(self.params.p)

    def passes(self) -> float:
        p = self.params
        return p.max_iter * p.eot + self.accept_passes(p.max_iter)

    def dual_norm(self, w: torch.Tensor) -> torch.Tensor:
        return self.norm.dual_size(w)

    def step(self, w: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        """The minimal L_p step r with w . r = |d| (depends on the norm only through its dual exponent q)."""
        q = self.norm.q
        w_norm = self.dual_norm(w).clamp_min(TINY)
        return ((d.abs() + 1e-4) / w_norm.pow(q))[:, None] * w.abs().pow(q - 1.0) * w.sign()

    def deepfool(self, f: LogitsFn, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The perturbation eta = (1 + overshoot) * sum of steps, (N, 1, 28, 28)."""
        p = self.params
        N = len(x)
        r_tot = torch.zeros(N, x[0].numel(), dtype=x.dtype)
        active = torch.arange(N)
        for _ in range(p.max_iter):
            xa = (x[active] + (1 + p.overshoot) * r_tot[active].view(-1, *x.shape[1:])).clamp(0, 1)
            logits, jac = class_jacobian(f, xa, p.jacobian)
            ya = y[active]
            still = logits.argmax(1) == ya
            # robust acceptance, only for the images the (averaged) logits already misclassify
            crossed = (~still).nonzero().squeeze(1)
            if len(crossed) and f.frozen and p.accept_draws > 1:
                self.accept_or_aim(f, xa, ya, active, crossed, still, logits, jac)
            elif len(crossed):
                still[crossed] = ~self.accepted(f, xa[crossed], ya[crossed], active[crossed], known=~still[crossed])
            if not still.any():
                break
            logits, jac, ya, idx = logits[still], jac[still], ya[still], active[still]
            rows = torch.arange(len(idx))
            w = self.feasible(jac - jac[rows, ya][:, None], xa[still].flatten(1))  # (n, C, D)
            d = logits - logits[rows, ya][:, None]  # (n, C)
            ratio = d.abs() / self.dual_norm(w).clamp_min(TINY)
            ratio[rows, ya] = math.inf
            l = ratio.argmin(1)
            r_tot[idx] += self.step(w[rows, l], d[rows, l])
            # keep x + r_tot in the box: a component past it would have to be undone before the pixel moves back
            x0 = x[idx].flatten(1)
            r_tot[idx] = (x0 + r_tot[idx]).clamp(0, 1) - x0
            active = idx
        return ((1 + p.overshoot) * r_tot).view_as(x)

    @staticmethod
    def feasible(w: torch.Tensor, xa: torch.Tensor) -> torch.Tensor:
        """The directions w (n, C, D) without the components that would push a pixel of xa (n, D) already at
        a bound of [0, 1] out of the box (the module docstring's "The box")."""
        lo, hi = (xa <= 0)[:, None], (xa >= 1)[:, None]
        return w.masked_fill((lo & (w < 0)) | (hi & (w > 0)), 0.0)

    def accept_or_aim(self, f: LogitsFn, xa, ya, active, crossed, still, logits, jac) -> None:
        """Robust acceptance of the ``crossed`` images under their frozen draws (updates ``still``); for the
        rejected ones, replace the attacker's logits and Jacobian by those of a frozen draw that still
        classifies them correctly (the first one found), so the next step aims at a boundary still left to
        cross rather than re-linearising a draw already past it (whose margin, and so whose step, is tiny)."""
        p = self.params
        fooled, fail = f.accept_frozen(xa[crossed], ya[crossed], active[crossed], p.accept_draws,
                                       self.draws_needed())
        still[crossed] = ~fooled
        rejected = crossed[~fooled]
        if len(rejected):
            noise = f.frozen_noise(p.accept_draws, xa.device)[fail[~fooled], active[rejected]]
            f.queries += len(rejected)
            step = f.grad_rows(xa.device)
            for s in range(0, len(rejected), step):
                rows = rejected[s:s + step]
                logits[rows], jac[rows] = f.model.logits_and_jacobian(xa[rows], f.samples, noise=noise[s:s + step])

    def run(self, f: LogitsFn, x: torch.Tensor, y: torch.Tensor, targets) -> AttackOutput:
        return AttackOutput(x + self.deepfool(f, x, y))
