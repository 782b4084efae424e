"""Square Attack (Andriushchenko, Croce, Flammarion & Hein, ECCV 2020): score-based black-box random search
in L-infinity or L2.

The score is the margin of the log-probabilities, margin = log p_y - max_{i != y} log p_i (the true class
masked with -inf; on logits it is the same number, log_softmax only shifts them); the attack minimises it and
an image is fooled when it is < 0. Every iteration proposes, per image, a random change of a square window of
side s and keeps it only when the margin falls. s follows the paper's schedule: s = round(sqrt(p * 784)) with
p = p_init halved at iterations 10, 50, 200, 500, 1000, 2000, 4000, 6000 and 8000 of a 10,000-query run,
rescaled to the attack's planned number of evaluations (``rescale_schedule``; AutoAttack runs it unscaled).

- **L-infinity**: start from vertical stripes x + eps * (one random sign per column), then set the window
  to x + eps or x - eps (one random sign per image; the other sign when that one would change no pixel).
  Default p_init 0.8 (the paper's value on MNIST models).
- **L2**: start from the paper's grid of 5 x 5 squares of side 28 // 5, each a signed "bump" (concentric
  squares weighted 1/(k+1)^2, one half of the window positive, the other negative, randomly transposed),
  rescaled to norm eps. An update draws two windows of side s (odd, >= 3): the first gets a new signed bump
  plus its old content, rescaled to hold the mass of both windows (and any slack eps^2 - ||delta||^2), the
  second is zeroed, so ||delta|| stays eps (then the [0, 1] box clips it). Default p_init 0.1 (the paper's
  standard value).

Windows are drawn per image (the reference code draws one position per iteration for the whole batch). The
model is only ever called under ``torch.no_grad``; each iteration sends every live image's candidate to the
model in one batched call, never a loop over images.

**Stochastic models: common random numbers.** Against noise, comparing a candidate's noisy score with a score
stored from an older draw keeps candidates that were merely lucky (the winner's curse: the stored score is the
minimum of many noisy evaluations and drifts below the truth). So every iteration evaluates the candidate
*and the current point* under the same noise (``f.draws(batch, eot, seed=s)`` with one seed for both; a
genrobust classifier then gives both rows of an image the same latent draws, so the comparison sees only the
perturbation). The score is the margin averaged over ``eot`` draws. A deterministic model skips the
re-evaluation of the current point: its stored score is exact. (A plain module with ``stochastic = True``
cannot be seeded; its re-evaluation is then a fresh, unselected estimate.)

**Queries** (``AttackOutput.queries``, per image): every image passed to the model is one query, times the
eot draws (eot collapses to 1 on a deterministic model). The initial point costs eot queries; an iteration
costs eot on a deterministic model and 2 * eot on a stochastic one (the candidate plus the re-evaluation of
the current point: the re-evaluation is a query like any other, so a stochastic model gets about half the
iterations for the same budget). A candidate that lowered the score to < 0 is then put to robust
acceptance under ``accept_draws`` = R draws, frozen per image for a genrobust classifier (their own stream,
the same at every test; fresh for a plain module with ``stochastic = True``),
charged R queries (the most a test can cost; nothing on a deterministic model or at R = 1, where the eot
verdict is final). ``queries`` caps all of these per image and restart: an image stops when it cannot pay
for another iteration, and skips a test it cannot pay for. So the reported queries never exceed
``queries * restarts``.

An image stops as soon as a candidate is robustly accepted, and that candidate is returned; an image never
accepted returns its current point, the lowest-score point of its run (with ``restarts``, later runs start
afresh on the images no run fooled, and the run whose final point scored lower is kept).

    >>> out = make_attack("square", {"eps": 0.1, "queries": 5000})(model, x, y)
    >>> out.adversarial, out.queries
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator

from genrobust.attacks.base import (FORWARD, AttackOutput, BallParams, BudgetedAttack, LogitsFn, RobustAcceptParams,
                                    margin)
from genrobust.attacks.norms import L2NORM

TINY = 1e-12
# iterations of a 10,000-query run after which p halves (the paper's schedule)
HALVINGS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)
P_INIT = {"linf": 0.8, "l2": 0.1}


class SquareParams(BallParams, RobustAcceptParams):
    queries: int = Field(5000, ge=1, le=1_000_000, description="Query budget per image per restart: every image "
                                                               "sent to the model counts, times eot (see the "
                                                               "module docstring).")
    p_init: float | None = Field(None, gt=0.0, le=1.0, description="Initial fraction of the pixels in a square; "
                                                                   "default by norm: linf 0.8, l2 0.1.")
    restarts: int = Field(1, ge=1, le=100, description="Runs from fresh initialisations (later ones on the "
                                                       "images still robust only).")
    rescale_schedule: bool = Field(True, description="Rescale the schedule of square sizes to the budget "
                                                     "(the paper's is for 10,000 queries).")

    @model_validator(mode="after")
    def _defaults(self):
        if self.p_init is None:
            self.p_init = P_INIT[self.norm]
        if self.queries < self.eot:
            raise ValueError(f"queries ({self.queries}) must pay for at least one score, eot = {self.eot} queries")
        return self


def square_fraction(p_init: float, k: int, total: int | None = None) -> float:
    """p at iteration k: p_init halved at each of the paper's HALVINGS passed, k rescaled to a
    10,000-query run when ``total`` (the run's planned evaluations) is given."""
    it = int(k / total * 10000) if total else k
    return p_init / 2 ** sum(it > t for t in HALVINGS)


def bump(a: int, b: int) -> torch.Tensor:
    """An (a, b) window of concentric rectangles around (a // 2, b // 2): an entry at Chebyshev distance d from
    the centre holds sum_{k=d}^{n} 1 / (k + 1)^2, n = max(a // 2, b // 2); unit L2 norm."""
    rows = (torch.arange(a) - a // 2).abs()
    cols = (torch.arange(b) - b // 2).abs()
    dist = torch.maximum(rows[:, None], cols[None, :])
    n = max(a // 2, b // 2)
    tail = (1.0 / torch.arange(1, n + 2, dtype=torch.float32) ** 2).flip(0).cumsum(0).flip(0)
    v = tail[dist]
    return v / v.norm()


def signed_bump(s: int) -> torch.Tensor:
    """The paper's L2 update of side s: a bump on the top s // 2 rows, minus one on the rest; unit norm."""
    v = torch.cat([bump(s // 2, s), -bump(s - s // 2, s)])
    return v / v.norm()


@lru_cache(maxsize=64)
def _cached_bump(s: int, device: torch.device) -> torch.Tensor:
    return signed_bump(s).to(device)


@lru_cache(maxsize=8)
def _coords(h: int, w: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.arange(h, device=device).view(1, 1, h, 1), torch.arange(w, device=device).view(1, 1, 1, w)


def _window(r: torch.Tensor, c: torch.Tensor, s: int, h: int, w: int) -> torch.Tensor:
    """(n, 1, h, w) bool: the s x s window at rows r.., columns c.. of each image."""
    hh, ww = _coords(h, w, r.device)
    r, c = r.view(-1, 1, 1, 1), c.view(-1, 1, 1, 1)
    return (hh >= r) & (hh < r + s) & (ww >= c) & (ww < c + s)


def _patch_index(r: torch.Tensor, c: torch.Tensor, s: int, channels: int):
    """Advanced index of the (n, channels, s, s) windows at rows r.., columns c.."""
    n, span = len(r), torch.arange(s)
    rows, cols = r[:, None] + span, c[:, None] + span
    return (torch.arange(n).view(n, 1, 1, 1), torch.arange(channels).view(1, -1, 1, 1), rows.view(n, 1, s, 1),
            cols.view(n, 1, 1, s))


class Square(BudgetedAttack):
    """Square Attack: random square updates on the eps-ball's boundary, kept when the margin falls.

    The margin is of the log-probabilities, averaged over the eot draws and scored for the candidate and the
    current point under common noise; robust acceptance before an image stops (module docstring)."""

    name = "square"
    Params = SquareParams
    black_box = True

    def passes(self) -> float:
        # an upper bound: the budget caps every query, robust acceptance's included (so nothing is added)
        return self.params.queries * self.params.restarts * FORWARD

    # ---------------------------------------------------------------- the score
    def _score(self, f: LogitsFn, x: torch.Tensor, y: torch.Tensor, seed: int | None = None) -> torch.Tensor:
        """The log-probability margin averaged over the eot draws (seeded: common noise), (n,)."""
        logp = F.log_softmax(f.draws(x, seed=seed), dim=-1)
        return margin(logp, y).mean(0)

    # ---------------------------------------------------------------- proposals
    def _side(self, p: float, h: int) -> int:
        s = round(math.sqrt(p * h * h))
        if self.params.norm == "linf":
            return min(max(s, 1), h)
        s = max(s, 3)
        s += 1 - s % 2  # odd
        while s > h:
            s -= 2
        return s

    def _signs(self, g: torch.Generator, *shape: int) -> torch.Tensor:
        return torch.randint(0, 2, shape, generator=g).float() * 2 - 1

    def _init(self, f: LogitsFn, x0: torch.Tensor) -> torch.Tensor:
        n, C, H, W = x0.shape
        g, eps = f.generator, self.eps
        if self.params.norm == "linf":  # vertical stripes of +-eps
            return (x0 + eps * self._signs(g, n, C, 1, W)).clamp(0.0, 1.0)
        s = H // 5
        off = (H - 5 * s) // 2
        grid = (H - off) // s  # 5 squares a side on 28 x 28
        bumps = _cached_bump(s, x0.device).expand(n, C, grid, grid, s, s)
        flip = torch.rand(n, 1, grid, grid, 1, 1, generator=g) < 0.5
        bumps = torch.where(flip, bumps.transpose(-1, -2), bumps) * self._signs(g, n, C, grid, grid, 1, 1)
        delta = torch.zeros_like(x0)
        delta[:, :, off:off + grid * s, off:off + grid * s] = bumps.permute(0, 1, 2, 4, 3, 5).reshape(
            n, C, grid * s, grid * s)
        return (x0 + eps * L2NORM.unit(delta)).clamp(0.0, 1.0)

    def _propose(self, f: LogitsFn, x0: torch.Tensor, cur: torch.Tensor, s: int) -> torch.Tensor:
        n, C, H, W = x0.shape
        g, eps = f.generator, self.eps
        r, c = torch.randint(0, H - s + 1, (n,), generator=g), torch.randint(0, W - s + 1, (n,), generator=g)
        if self.params.norm == "linf":
            window = _window(r, c, s, H, W)
            sign = self._signs(g, n, C, 1, 1)
            new = torch.where(window, (x0 + eps * sign).clamp(0.0, 1.0), cur)
            same = ((new - cur).abs() < 1e-7).flatten(1).all(1)  # the window would not change: the other sign
            if same.any():
                sign[same] = -sign[same]
                new[same] = torch.where(window[same], (x0[same] + eps * sign[same]).clamp(0.0, 1.0), cur[same])
            return new
        # L2: move the mass of windows 1 and 2 into window 1 (with a new bump), zero window 2
        r2, c2 = torch.randint(0, H - s + 1, (n,), generator=g), torch.randint(0, W - s + 1, (n,), generator=g)
        delta = cur - x0
        idx = _patch_index(r, c, s, C)
        old = delta[idx]
        second = _window(r2, c2, s, H, W)
        both = _window(r, c, s, H, W) | second
        norm_both = (delta * both).pow(2).sum((-2, -1), keepdim=True).sqrt()  # (n, C, 1, 1)
        norm_all = L2NORM.size(delta).view(n, 1, 1, 1)
        shape = _cached_bump(s, x0.device)
        flip = torch.rand(n, 1, 1, 1, generator=g) < 0.5
        new = torch.where(flip, shape.T, shape) * self._signs(g, n, C, 1, 1)
        new = new + old / (old.pow(2).sum((-2, -1), keepdim=True).sqrt() + TINY)
        mass = ((eps**2 - norm_all**2).clamp_min(0.0) / C + norm_both**2).sqrt()
        new = new / new.pow(2).sum((-2, -1), keepdim=True).sqrt().clamp_min(TINY) * mass
        delta = delta.masked_fill(second, 0.0)
        delta[idx] = new
        return (x0 + eps * L2NORM.unit(delta)).clamp(0.0, 1.0)

    # ---------------------------------------------------------------- the search
    def _once(self, f: LogitsFn, x0: torch.Tensor, y: torch.Tensor, index: torch.Tensor):
        """One run on images x0 (``index``: their positions in the attacked batch, for the frozen draws):
        (final points, accepted, their last scores, queries), all per image."""
        p = self.params
        n, H = len(x0), x0.shape[-2]
        c_eval = f.eot  # 1 on a deterministic model
        c_iter = 2 * c_eval if f.stochastic else c_eval
        c_acc = p.accept_draws if f.stochastic and p.accept_draws > 1 else 0
        budget = p.queries
        queries = torch.zeros(n, dtype=torch.int64)
        done = torch.zeros(n, dtype=torch.bool)

        def test(rows: torch.Tensor, points: torch.Tensor, score: torch.Tensor, improved: torch.Tensor) -> None:
            """Robust acceptance of the improved candidates the eot score already sees adversarial."""
            ask = improved & (score < 0) & (queries[rows] + c_acc <= budget)
            t = rows[ask]
            if len(t):
                queries[t] += c_acc
                ok = self.accepted(f, points[ask], y[t], index[t], known=torch.ones(len(t), dtype=torch.bool))
                done[t[ok]] = True

        cur = self._init(f, x0)
        score = self._score(f, cur, y)
        queries += c_eval
        every = torch.arange(n)
        test(every, cur, score, torch.ones(n, dtype=torch.bool))
        iterations = (budget - c_eval) // c_iter
        total = iterations + 1 if p.rescale_schedule else None  # evaluations planned: the start + iterations
        for k in range(iterations):
            act = (~done & (queries + c_iter <= budget)).nonzero().squeeze(1)
            if len(act) == 0:
                break
            s = self._side(square_fraction(p.p_init, k, total), H)
            xa, ya = cur[act], y[act]
            cand = self._propose(f, x0[act], xa, s)
            if f.stochastic:  # common random numbers: candidate and current point under one draw
                seed = f.draw_seed()
                cand_score, cur_score = self._score(f, cand, ya, seed), self._score(f, xa, ya, seed)
            else:
                cand_score, cur_score = self._score(f, cand, ya), score[act]
            queries[act] += c_iter
            better = cand_score < cur_score
            cur[act[better]] = cand[better]
            score[act] = torch.where(better, cand_score, cur_score)
            test(act, cand, cand_score, better)
        return cur, done, score, queries

    def search(self, f: LogitsFn, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor | None = None):
        """All restarts, each on the images no run has accepted yet: (adversarial, accepted, queries)."""
        n = len(x)
        index = torch.arange(n) if index is None else index
        adv, done = x.clone(), torch.zeros(n, dtype=torch.bool)
        best = torch.full((n,), math.inf)
        queries = torch.zeros(n, dtype=torch.int64)
        with torch.no_grad():
            for _ in range(self.params.restarts):
                live = (~done).nonzero().squeeze(1)
                if len(live) == 0:
                    break
                a, d, s, q = self._once(f, x[live], y[live], index[live])
                queries[live] += q
                take = d | (s < best[live])
                adv[live[take]], best[live[take]], done[live] = a[take], s[take], d
        return adv, done, queries

    def attack(self, f: LogitsFn, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor | None = None):
        """(adversarial, accepted): the interface of AutoAttack's members."""
        return self.search(f, x, y, index)[:2]

    def run(self, f: LogitsFn, x: torch.Tensor, y: torch.Tensor, targets) -> AttackOutput:
        adv, _, queries = self.search(f, x, y)
        return AttackOutput(adv, queries)
