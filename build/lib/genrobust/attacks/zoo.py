"""ZOO (Chen et al., 2017): a black-box attack that sees only output scores.

Minimises ||x - x0||_2^2 + c * f(x) with f = max(log F(x)_y - max_{i != y} log F(x)_i, -kappa) on the
log-probabilities log F = log_softmax(logits) (targeted: f = max(max_{i != t} log F_i - log F_t, -kappa)).
Gradients come only from symmetric finite differences (f(x + h e_i) - f(x - h e_i)) / 2h on
``coords`` randomly chosen pixels per image per iteration, followed by coordinate-wise Adam and a clip to
[0, 1]. The model is only ever called under ``torch.no_grad``: never autograd. All images and all chosen
coordinates of one iteration go to the model in two batched calls (the + and the - side), made with the
same noise seed so each pair differs only by the perturbation. Every image passed to the model counts as
one query.

Against a stochastic model: with ``eot`` = M every finite-difference score is the hinge averaged over M
draws (the + and - sides share each draw's noise; M times the queries), and a new point is accepted only
under robust acceptance: a single-draw check, then ``accept_draws`` more queries for the images it saw
adversarial, of which at least ``accept_fraction`` must be misclassified.

    >>> out = make_attack("zoo", {"steps": 100, "coords": 64})(model, images, labels)
    >>> out.adversarial, out.queries
"""

import torch
import torch.nn.functional as F
from pydantic import Field

from genrobust.attacks.base import (FORWARD, AttackOutput, LogitsFn, MinimalAttack, RobustAcceptParams, crossed,
                                    hinge, margin_score)
from genrobust.attacks.norms import L2NORM


class ZOOParams(RobustAcceptParams):
    c: float = Field(10.0, gt=0.0, description="Weight of the adversarial loss against ||x - x0||^2.")
    kappa: float = Field(0.0, ge=0.0, description="Confidence margin on log-probabilities.")
    steps: int = Field(100, ge=1, le=100_000, description="Iterations; each costs 2 * coords * eot + 1 queries per image "
                                                          "(+ accept_draws when the single-draw check succeeds).")
    coords: int = Field(64, ge=1, le=784, description="Coordinates estimated per image per iteration.")
    h: float = Field(1e-3, gt=0.0, le=0.5, description="Finite-difference step.")
    lr: float = Field(0.05, gt=0.0, le=10.0, description="Coordinate-wise Adam step size.")
    beta1: float = Field(0.9, ge=0.0, lt=1.0)
    beta2: float = Field(0.999, ge=0.0, lt=1.0)
    early_stop: bool = Field(True, description="Stop an image at its first success.")


class ZOO(MinimalAttack):
    """ZOO: finite-difference coordinate Adam on ||x - x0||^2 + c * hinge(log-probability margin)."""

    name = "zoo"
    Params = ZOOParams
    norm = L2NORM
    black_box = True
    targeted_ok = True

    def passes(self) -> float:  # finite differences: 2 * coords * eot + 1 forward queries per iteration
        p = self.params
        return p.steps * (2 * p.coords * p.eot + 1) * FORWARD + self.accept_passes(p.steps)

    def run(self, f: LogitsFn, x: torch.Tensor, y: torch.Tensor, targets) -> AttackOutput:
        p = self.params
        N, D = len(x), x[0].numel()
        ref = targets if targets is not None else y
        targeted = targets is not None
        x0 = x.reshape(N, D)
        xa = x0.clone()
        m, v, t = torch.zeros(N, D), torch.zeros(N, D), torch.zeros(N, D)
        queries = torch.zeros(N, dtype=torch.int64)
        done = torch.zeros(N, dtype=torch.bool)
        best = x0.clone()

        def scores(batch: torch.Tensor, labels: torch.Tensor, seed: int, m: int = 1) -> torch.Tensor:
            """The signed margin of the log-probabilities: < 0 means adversarial. With m > 1, the hinge
            max(score, -kappa) averaged over m draws (the expected loss EOT differentiates)."""
            logp = F.log_softmax(f.draws(batch.view(-1, *x.shape[1:]), m, seed=seed), dim=-1)
            if logp.shape[0] == 1:
                return margin_score(logp[0], labels, targeted)
            return hinge(logp, labels, targeted, p.kappa).mean(0)

        with torch.no_grad():
            for _ in range(p.steps):
                act = (~done).nonzero().squeeze(1)
                if len(act) == 0:
                    break
                n, k = len(act), min(p.coords, D)
                cur = xa[act]
                coords = torch.rand(n, D, generator=f.generator).topk(k, dim=1).indices  # (n, k) distinct
                plus = cur[:, None].repeat(1, k, 1)
                minus = plus.clone()
                rows = torch.arange(n)[:, None]
                sel = torch.arange(k)[None]
                plus[rows, sel, coords] += p.h
                minus[rows, sel, coords] -= p.h
                labels = ref[act].repeat_interleave(k)
                seed = f.draw_seed()
                fp = scores(plus.reshape(n * k, D), labels, seed, f.eot).clamp(min=-p.kappa).view(n, k)
                fm = scores(minus.reshape(n * k, D), labels, seed, f.eot).clamp(min=-p.kappa).view(n, k)
                # the L2 term's gradient is known exactly; only f needs the model
                l2_grad = 2 * (cur.gather(1, coords) - x0[act].gather(1, coords))
                g = l2_grad + p.c * (fp - fm) / (2 * p.h)
                # coordinate-wise Adam on the chosen coordinates only
                mi, vi, ti = m[act].gather(1, coords), v[act].gather(1, coords), t[act].gather(1, coords) + 1
                mi = p.beta1 * mi + (1 - p.beta1) * g
                vi = p.beta2 * vi + (1 - p.beta2) * g * g
                step = p.lr * (mi / (1 - p.beta1**ti)) / ((vi / (1 - p.beta2**ti)).sqrt() + 1e-8)
                new = (cur.gather(1, coords) - step).clamp(0.0, 1.0)
                for buf, val in ((m, mi), (v, vi), (t, ti)):
                    buf[act] = buf[act].scatter(1, coords, val)
                xa[act] = cur.scatter(1, coords, new)
                # check the new point (one query per image)
                score = scores(xa[act], ref[act], f.draw_seed())
                success = crossed(score, p.kappa)
                queries[act] += 2 * k * f.eot + 1
                cand = act[success]
                if f.stochastic and p.accept_draws > 1 and len(cand):  # robust acceptance of the candidates
                    queries[cand] += p.accept_draws
                    ok = self.accepted(f, xa[cand].view(-1, *x.shape[1:]), ref[cand], cand, targeted)
                else:
                    ok = torch.ones(len(cand), dtype=torch.bool)
                hit = cand[ok]
                best[hit] = xa[hit]
                if p.early_stop:
                    done[hit] = True
        return AttackOutput(best.view_as(x), queries)
