"""Auto-PGD (Croce & Hein, ICML 2020) in L-infinity or L2, with the CE or the DLR loss, and EOT.

Per image: step size eta = 2 eps; x1 = P(x0 + eta s(grad)); then with momentum alpha = 0.75
z = P(x_k + eta s(grad)), x_{k+1} = P(x_k + alpha (z - x_k) + (1 - alpha)(x_k - x_{k-1})), where P projects
onto the eps-ball and [0, 1] and s is the sign (L-infinity) or the normalised gradient (L2). At the
checkpoints w_j = ceil(p_j N) (p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)) eta is
halved and the iterate reset to the best point x_max when either (1) fewer than rho = 0.75 of the steps
since the last checkpoint raised the loss, or (2) neither eta nor the best loss changed since then.
``restarts`` runs start from random points of the ball, each only on the images still robust.

DLR(z, y) = -(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3), pi the classes sorted by logit: invariant to the
shift and scale of the logits, so it suits log p(x, y) (all negative, scale set by 784 pixels). The "best
other" class masks the true one with -inf, never (1 - onehot) z.

APGD-T (``APGDTargeted``, a member of ``autoattack`` standard, not registered on its own) ascends the
targeted DLR -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2) towards each of the top 9 classes t != y by the
clean logits in turn, on the images still robust; success stays untargeted (misclassified, any class).

Stochastic models: the loss and its gradient are averaged over ``eot`` draws (expected CE or expected DLR,
one tiled pass). An image stops as soon as it is robustly adversarial (at least ``accept_fraction`` of
``accept_draws`` = R draws misclassify it, the eot draws counting among the R), and that iterate is
returned; an image never accepted gets x_max, the point of highest expected loss over all
iterations and restarts.

    >>> adv = make_attack("apgd", {"eps": 0.1, "loss": "dlr", "eot": 20})(model, x, y).adversarial
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from genrobust.attacks.base import (FORWARD, AttackOutput, BallParams, BudgetedAttack, LogitsFn, RobustAcceptParams,
                                    expected_gradient, margin)

TINY = 1e-12
MOMENTUM = 0.75  # alpha of the paper
RHO = 0.75  # fraction of improving steps below which the step size halves


class APGDBudget(BallParams, RobustAcceptParams):
    """Budget shared by APGD and the ensembles built from it (with robust acceptance for the early stop)."""

    steps: int = Field(100, ge=1, le=100_000, description="Iterations per restart.")
    restarts: int = Field(1, ge=1, le=100, description="Runs from random starts (later ones on robust images only).")


class APGDParams(APGDBudget):
    loss: Literal["ce", "dlr"] = Field("ce", description="Cross-entropy or the scale-invariant DLR loss.")


def checkpoints(steps: int) -> list[int]:
    """The iterations w_j at which the step size may halve."""
    p = [0.0, 0.22]
    while p[-1] < 1:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    return sorted({math.ceil(q * steps - 1e-9) for q in p[1:] if q <= 1})  # 1e-9: 0.57 * 100 is 57, not 58


def dlr_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    top = logits.sort(-1, descending=True).values
    return -margin(logits, y) / (top[..., 0] - top[..., 2] + TINY)


def dlr_targeted_loss(logits: torch.Tensor, y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Targeted DLR (APGD-T): -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2), pi the classes sorted by logit;
    ascending it raises the target t above the true class y."""
    top = logits.sort(-1, descending=True).values
    z_y = logits.gather(-1, y[..., None]).squeeze(-1)
    z_t = logits.gather(-1, t[..., None]).squeeze(-1)
    third, fourth = min(2, logits.shape[-1] - 1), min(3, logits.shape[-1] - 1)
    return -(z_y - z_t) / (top[..., 0] - (top[..., third] + top[..., fourth]) / 2 + TINY)


class APGD(BudgetedAttack):
    """Auto-PGD: step-size-free projected ascent with momentum on expected CE or DLR, with restarts."""

    name = "apgd"
    Params = APGDParams

    def passes(self) -> float:
        iters = self.params.steps * self.params.restarts
        return iters * self.params.eot + self.accept_passes(iters)

    def _loss(self, logits: torch.Tensor, y: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
        if t is not None:  # APGD-T: the targeted DLR towards t
            return dlr_targeted_loss(logits, y, t)
        if self.params.loss == "ce":
            return F.cross_entropy(logits, y, reduction="none")
        return dlr_loss(logits, y)

    def _evaluate(self, f: LogitsFn, xa: torch.Tensor, y: torch.Tensor, t: torch.Tensor | None = None):
        """Expected-loss gradient, expected loss (n,), and robust acceptance of xa (n,) bool. With targets t
        the loss is the targeted DLR, but acceptance stays untargeted: misclassified, whatever the class."""
        grad, logits = expected_gradient(f, xa, lambda z, i: self._loss(z, y[i], None if t is None else t[i]),
                                         batch_mean=True)
        m, n, C = logits.shape
        loss = self._loss(logits.reshape(m * n, C), y.repeat(m), None if t is None else t.repeat(m)).view(m, n).mean(0)
        # The M eot draws in hand are independent draws of the attacker's noise at xa: they screen the
        # candidates and count towards the R of robust acceptance, so only R - M more are drawn (none when
        # M >= R, as in autoattack rand).
        p, M = self.params, logits.shape[0]
        frac = (logits.argmax(-1) != y).float().mean(0)
        ok = self.enough(frac)
        if f.stochastic and M < p.accept_draws:
            cand = ok.nonzero().squeeze(1)
            more = f.fooled_fraction(xa[cand], y[cand], p.accept_draws - M)
            ok[cand] = self.enough((frac[cand] * M + more * (p.accept_draws - M)) / p.accept_draws)
        return grad, loss, ok

    def attack_once(self, f: LogitsFn, x0: torch.Tensor, y: torch.Tensor, t: torch.Tensor | None = None):
        """One run from a random start: (adversarial, accepted, best expected loss) per image (t: targets of
        the targeted DLR, APGD-T)."""
        p = self.params
        n = len(x0)
        marks = set(checkpoints(p.steps))
        eta = torch.full((n, 1, 1, 1), 2 * p.eps)
        xk = self.random_start(f, x0)
        grad, loss, done = self._evaluate(f, xk, y, t)
        out = xk.clone()
        x_max, f_max, g_max = xk.clone(), loss.clone(), grad.clone()
        x_prev = xk.clone()
        improved = torch.zeros(n)
        last = 0
        eta_last, fmax_last = eta.clone(), f_max.clone()
        act = (~done).nonzero().squeeze(1)
        for k in range(p.steps):
            if len(act) == 0:
                break
            xa, xp, e, ga, x0a = xk[act], x_prev[act], eta[act], grad[act], x0[act]
            z = self.project(x0a, xa + e * self.norm.unit(ga))
            new = z if k == 0 else self.project(x0a, xa + MOMENTUM * (z - xa) + (1 - MOMENTUM) * (xa - xp))
            g_new, l_new, ok = self._evaluate(f, new, y[act], None if t is None else t[act])
            x_prev[act], xk[act], grad[act] = xa, new, g_new
            improved[act] += (l_new > loss[act]).float()
            loss[act] = l_new
            better = l_new > f_max[act]
            bi = act[better]
            x_max[bi], f_max[bi], g_max[bi] = new[better], l_new[better], g_new[better]
            hit = act[ok]
            out[hit], done[hit] = new[ok], True
            if k + 1 in marks:  # checkpoint: halve eta and restart from x_max where progress stalled
                span = k + 1 - last
                stalled = (improved < RHO * span) | ((eta == eta_last).flatten() & (f_max == fmax_last))
                eta_last, fmax_last = eta.clone(), f_max.clone()
                eta[stalled] /= 2
                xk[stalled], grad[stalled], x_prev[stalled] = x_max[stalled], g_max[stalled], x_max[stalled]
                loss[stalled] = f_max[stalled]
                improved.zero_()
                last = k + 1
            act = act[~ok]
        out[~done] = x_max[~done]
        return out, done, f_max

    def attack(self, f: LogitsFn, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor | None = None,
               index: torch.Tensor | None = None):
        """All restarts, each on the images no run has fooled yet: (adversarial, accepted). ``t``: targets of
        the targeted DLR (APGD-T). ``index`` (the images' positions in the attacked batch, AutoAttack's member
        interface) is unused: APGD's acceptance tops its eot draws up with fresh ones, never frozen ones."""
        adv, done, best = self.attack_once(f, x, y, t)
        for _ in range(self.params.restarts - 1):
            live = (~done).nonzero().squeeze(1)
            if len(live) == 0:
                break
            a, d, fm = self.attack_once(f, x[live], y[live], None if t is None else t[live])
            take = d | (fm > best[live])  # a fooled image, else the run with the higher expected loss
            adv[live[take]], best[live[take]], done[live] = a[take], fm[take], d
        return adv, done

    def run(self, f: LogitsFn, x: torch.Tensor, y: torch.Tensor, targets) -> AttackOutput:
        return AttackOutput(self.attack(f, x, y)[0])


class APGDTargetedParams(APGDBudget):
    targets: int = Field(9, ge=1, le=99, description="Target classes: the top ones other than y by the clean "
                                                     "(eot-averaged) logits, one run each.")


class APGDTargeted(APGD, register=False):
    """APGD-T (Croce & Hein 2020), an AutoAttack member, not registered on its own: for each of the top
    ``targets`` classes other than y by the clean logits (averaged over the eot draws), in turn, APGD on the
    targeted DLR towards that class, on the images no earlier target fooled. Success is still untargeted:
    robust acceptance against the true label. An image no target fools keeps the last run's highest-loss
    point."""

    Params = APGDTargetedParams
    name = "apgd-t"  # a label only: ``register=False`` keeps it out of ATTACKS

    def passes(self) -> float:
        return self.params.targets * super().passes() + self.params.eot * FORWARD  # + the clean pass

    def target_order(self, f: LogitsFn, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """(n, targets): the classes other than y, highest clean (eot-averaged) logit first."""
        with torch.no_grad():
            clean = f.draws(x).mean(0)
        clean = clean.masked_fill(F.one_hot(y, clean.shape[-1]).bool(), float("-inf"))
        return clean.argsort(-1, descending=True)[:, :min(self.params.targets, clean.shape[-1] - 1)]

    def attack(self, f: LogitsFn, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor | None = None,
               index: torch.Tensor | None = None):
        order = self.target_order(f, x, y)
        adv, done = x.clone(), torch.zeros(len(x), dtype=torch.bool)
        live = torch.arange(len(x))
        for k in range(order.shape[1]):
            if len(live) == 0:
                break
            a, d = super().attack(f, x[live], y[live], order[live, k])
            adv[live], done[live] = a, d
            live = live[~d]
        return adv, done
