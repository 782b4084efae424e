"""The attack hierarchy: a typed parameter model per attack, one base class, one registry.

An attack maps (model, images, labels) to adversarial images in [0, 1]. ``model`` is any
``torch.nn.Module`` mapping images in [0, 1] to logits, or a genrobust ``LatentClassifier``, whose
logits are stochastic: the attacker evaluates it with its own noise (a generator seeded from the
attack's seed), never the evaluator's.

Against a stochastic model every attack takes two defences against luck (both cost nothing on a
deterministic module, where they collapse to one draw):

- **EOT** (``eot`` = M, Athalye et al. 2018): each gradient or score is of the loss averaged over M
  independent noise draws. The batch is tiled M times and evaluated as one batch of M·N rows (in
  memory-bounded chunks of whole rows, never a loop over the M draws).
- **Robust acceptance** (minimal-perturbation attacks, ``RobustAcceptParams``): an iterate counts as
  adversarial only when at least ``accept_fraction`` of ``accept_draws`` = R independent draws of the
  attacker's noise misclassify it, so the attacker no longer keeps points that crossed the boundary by
  luck. For a genrobust classifier the R draws are **frozen**: drawn once per image for the whole attack
  (stream ``acceptance``, independent of the gradient noise and of the evaluator), so an attack that tests
  hundreds of iterates and keeps the smallest accepted one minimises under R fixed constraints instead of
  re-rolling R new draws at every test until a lucky set passes. With fraction 1 the accepted point lies
  past all R draws' boundaries, where a fresh draw misclassifies with probability about R / (R + 1).
  Cost: R forward passes per candidate (an iterate a cheaper test already saw misclassified).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable, ClassVar

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import nn

from genrobust import seeding
from genrobust.attacks.norms import NORMS, Norm, NormName
from genrobust.data import check_images, check_labels
from genrobust.errors import GenrobustError, validation_message
from genrobust.models import LatentClassifier, pass_rows
from genrobust.fields import Draws, Samples

ATTACKS: dict[str, type["Attack"]] = {}

# Rows of frozen acceptance noise (draws x images x K) an attack holds at once: 64 MB at D = 64.
FROZEN_ROWS = 2**18


class AttackParams(BaseModel):
    """Parameters every attack shares."""

    # inf/NaN are valid JSON to Python's parser but no valid step, budget or constant
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    samples: Samples = Field(10, description="K importance samples for the attacker's own evaluations "
                                                         "of a genrobust classifier (ignored for plain modules).")
    eot: Draws = Field(1, description="M independent noise draws averaged per gradient or score "
                                                   "(Expectation over Transformation), tiled into one batched "
                                                   "pass; 1 for deterministic models.")


class BallParams(AttackParams):
    """The budget of an attack that maximises a loss within a ball."""

    eps: float = Field(0.1, ge=0.0, description="Radius of the ball (L-infinity or L2).")
    norm: NormName = "linf"


class RobustAcceptParams(AttackParams):
    """Robust acceptance for minimal-perturbation attacks (defaults measured in BENCHMARKS.md)."""

    accept_draws: Draws = Field(10, description="R independent draws of the attacker's noise that "
                                                             "judge an iterate (1 for deterministic models).")
    accept_fraction: float = Field(1.0, gt=0.0, le=1.0, description="An iterate is adversarial only when at least "
                                                                    "this fraction of the R draws misclassify it.")


class LogitsFn:
    """The attacker's view of a model: x -> logits, with the attacker's own noise, counting queries.

    ``seed`` re-seeds the noise for one call, so two calls with the same seed and batch shape use the same
    latent draws per row (common random numbers for finite differences). A plain module is deterministic
    unless it sets ``stochastic = True``; then EOT and robust acceptance re-run it per draw."""

    # Large query batches (ZOO sends images x coordinates at once) run in chunks: a latent classifier's
    # pass is (rows x 10 classes x K) decoder passes, and moderate chunks stay in cache (BENCHMARKS.md).
    # (The model splits a chunk further at large K: genrobust.models.pass_rows.)
    chunk = 64

    def __init__(self, model: nn.Module, samples: int, generator: torch.Generator, eot: int = 1,
                 accept_seed: int | None = None, n_images: int = 0):
        self.model, self.samples, self.generator = model, samples, generator
        self.latent = isinstance(model, LatentClassifier)
        self.stochastic = self.latent or bool(getattr(model, "stochastic", False))
        self.eot = eot if self.stochastic else 1
        self.queries = 0
        # the frozen acceptance draws: seeded by accept_seed, one set per image of the n_images attacked
        self.accept_seed, self.n_images = accept_seed, n_images
        self._frozen: dict[int, torch.Tensor] = {}
        self._hard: torch.Tensor | None = None  # per image: the frozen draw that rejected it last
        model.eval()

    def __call__(self, x: torch.Tensor, seed: int | None = None, noise: torch.Tensor | None = None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """Logits of x with the attacker's noise: from its generator, one seeded by ``seed``, ``generator``,
        or the given ``noise`` rows."""
        self.queries += x.shape[0]
        if not self.latent:
            return self.model(x)
        gen = generator if generator is not None else (
            self.generator if seed is None else torch.Generator(device=x.device).manual_seed(seed))
        if x.shape[0] <= self.chunk or torch.is_grad_enabled():
            return self.model.logits(x, self.samples, gen, noise)
        # each chunk draws its rows of noise from gen in turn (as model.logits does), never all at once
        return torch.cat([self.model.logits(x[i:i + self.chunk], self.samples, gen,
                                            None if noise is None else noise[i:i + self.chunk])
                          for i in range(0, x.shape[0], self.chunk)])

    def draws(self, x: torch.Tensor, m: int | None = None, seed: int | None = None) -> torch.Tensor:
        """Logits under m independent noise draws (default: eot), shape (m, N, C): the batch tiled m times
        (draw-major) and evaluated in chunks of rows, without building the tile (ZOO tiles images x
        coordinates x draws). A deterministic model is evaluated once, (1, N, C)."""
        m = (self.eot if m is None else m) if self.stochastic else 1
        if m == 1:
            return self(x, seed)[None]
        gen = self.generator if seed is None else torch.Generator(device=x.device).manual_seed(seed)
        return self._tiled(x, m, lambda rows, j: self(x[j], generator=gen))

    def _tiled(self, x: torch.Tensor, m: int, evaluate) -> torch.Tensor:
        """(m, N, C): ``evaluate(rows, j)`` on chunks of the rows of x tiled m times (j: their images)."""
        n = x.shape[0]
        rows = torch.arange(m * n, device=x.device)
        step = m * n if torch.is_grad_enabled() else self.chunk
        return torch.cat([evaluate(rows[s:s + step], rows[s:s + step] % n)
                          for s in range(0, m * n, step)]).view(m, n, -1)

    def fooled_fraction(self, x: torch.Tensor, ref: torch.Tensor, draws: int, targeted: bool = False,
                        index: torch.Tensor | None = None) -> torch.Tensor:
        """Fraction of ``draws`` independent draws under which x is misclassified (targeted: classified as
        ref), shape (N,); 0 or 1 for a deterministic model. With ``index`` (each row's image among the
        attack's n_images) and an accept_seed, a genrobust classifier is judged under the frozen
        draws of those images: the same noise for an image at every call, whatever subset it comes in."""
        if len(x) == 0:
            return torch.zeros(0)
        with torch.no_grad():
            if self.frozen and index is not None:
                pred = self.frozen_logits(x, index, draws).argmax(-1)
            else:
                pred = self.draws(x, draws).argmax(-1)
        hit = pred == ref if targeted else pred != ref
        return hit.float().mean(0)

    @property
    def frozen(self) -> bool:
        """Are robust-acceptance draws frozen per image (a genrobust classifier with an accept_seed)?"""
        return self.latent and self.accept_seed is not None

    def frozen_logits(self, x: torch.Tensor, index: torch.Tensor, draws: int) -> torch.Tensor:
        """Logits of x under the frozen acceptance draws of its images (``index``), shape (draws, N, C)."""
        frozen, index, n = self.frozen_noise(draws, x.device), index.to(x.device), len(x)
        with torch.no_grad():
            return self._tiled(x, draws, lambda rows, j: self(x[j], noise=frozen[rows // n, index[j]]))

    def accept_frozen(self, x: torch.Tensor, ref: torch.Tensor, index: torch.Tensor, draws: int, need: int,
                      targeted: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Robust acceptance under the frozen draws of x's images (``index``), draw by draw: (accepted (N,)
        bool, the first draw that failed to be fooled per image (N,), -1 where none did).

        The verdict equals testing all ``draws`` at once (at least ``need`` of them misclassify), but an image
        leaves as soon as it is decided, and each image starts at the draw that rejected it last time (which
        rejects it again most often): a rejection then costs about one forward pass instead of R. Accepted
        images still pay all the draws they need."""
        n = len(x)
        frozen, index = self.frozen_noise(draws, x.device), index.to(x.device)
        if self._hard is None:
            self._hard = torch.zeros(self.n_images, dtype=torch.long, device=x.device)
        start = self._hard[index]
        fooled = torch.zeros(n, dtype=torch.long, device=x.device)
        failed = torch.zeros_like(fooled)
        first_fail = torch.full_like(fooled, -1)
        live = torch.arange(n, device=x.device)
        with torch.no_grad():
            for j in range(draws):
                if len(live) == 0:
                    break
                d = (start[live] + j) % draws
                pred = self(x[live], noise=frozen[d, index[live]]).argmax(-1)
                hit = pred == ref[live] if targeted else pred != ref[live]
                fooled[live] += hit.long()
                failed[live] += (~hit).long()
                miss = live[~hit]
                first_fail[miss] = torch.where(first_fail[miss] < 0, d[~hit], first_fail[miss])
                decided = (fooled[live] >= need) | (failed[live] > draws - need)
                live = live[~decided]
        accepted = fooled >= need
        self._hard[index[~accepted]] = first_fail[~accepted]
        return accepted, first_fail

    def frozen_noise(self, draws: int, device: torch.device) -> torch.Tensor:
        """The attack's acceptance draws, (draws, n_images, 1, K, D), drawn once from accept_seed."""
        if draws not in self._frozen:
            gen = torch.Generator(device=device).manual_seed(self.accept_seed)
            noise = self.model.draw_noise(draws * self.n_images, self.samples, gen, device)
            self._frozen[draws] = noise.view(draws, self.n_images, *noise.shape[1:])
        return self._frozen[draws]

    def grad_rows(self, device: torch.device) -> int:
        """Rows per autograd pass: memory grows with rows x K (genrobust.models.pass_rows)."""
        return pass_rows(self.samples if self.latent else 1, device, grad=True)

    def draw_seed(self) -> int:
        return int(torch.randint(0, 2**62, (1,), generator=self.generator, device=self.generator.device))


@dataclass
class AttackOutput:
    adversarial: torch.Tensor  # (N, 1, 28, 28) in [0, 1]
    queries: torch.Tensor | None = None  # (N,) model evaluations per image (black-box attacks)
    member: torch.Tensor | None = None  # (N,) int64: the ensemble member that fooled each image, -1 none (AutoAttack)


# Units of an attack's cost: one K = 10 gradient pass of one image; a forward pass is half of one.
FORWARD = 0.5
ACCEPT_SHARE = 0.25  # robust acceptance runs on candidates only: at most ~1 iteration in 4 per image


class Attack(ABC):
    """Base class of the two kinds below; an attack subclasses one of them, sets ``name`` and ``Params``
    and implements ``run`` and ``passes``. Defining the subclass registers it (one file per attack in this
    package, imported by the package)."""

    name: ClassVar[str]
    kind: ClassVar[str]  # "budgeted" or "minimal"
    Params: ClassVar[type[AttackParams]] = AttackParams
    black_box: ClassVar[bool] = False
    targeted_ok: ClassVar[bool] = False

    def __init_subclass__(cls, register: bool = True, **kwargs):
        super().__init_subclass__(**kwargs)
        if register and "name" in cls.__dict__:
            ATTACKS[cls.name] = cls

    @property
    @abstractmethod
    def norm(self) -> Norm:
        """The norm the attack bounds (budgeted) or minimises (minimal)."""

    @abstractmethod
    def passes(self) -> float:
        """Model passes per image at the attack's K, in gradient passes (a forward pass: FORWARD); an upper
        bound from the iteration parameters (early-stopping attacks usually finish sooner)."""

    def cost(self, images: int, samples: int | None = None) -> float:
        """Work of attacking ``images`` images at K = ``samples`` (default: the attack's own), in units of one
        K = 10 gradient pass of one image: the service's inline limit, sweep chunking and the study's
        presets all read it."""
        k = self.params.samples if samples is None else samples
        return images * self.passes() * k / 10

    def accept_passes(self, iterations: float) -> float:
        """Passes of robust acceptance over ``iterations`` iterations: R forwards per test, tests on
        candidates only (ACCEPT_SHARE of the iterations)."""
        return iterations * getattr(self.params, "accept_draws", 0) * FORWARD * ACCEPT_SHARE

    def __init__(self, **params):
        try:
            self.params = self.Params(**params)
        except ValidationError as exc:
            raise GenrobustError(f"invalid parameters for {self.name}: {validation_message(exc)}") from None

    def __call__(self, model: nn.Module, images, labels, seed: int = 0, targets=None) -> AttackOutput:
        x = check_images(images)
        y = check_labels(labels, len(x)).to(x.device)
        if targets is not None:
            if not self.targeted_ok:
                raise GenrobustError(f"{self.name} has no targeted mode")
            targets = check_labels(targets, len(x)).to(x.device)
        per = self.images_per_part(model)
        if len(x) <= per:
            return self._attack(model, x, y, seed, targets)
        outs = [self._attack(model, x[s:s + per], y[s:s + per], seeding.derive(seed, "part", i),
                             None if targets is None else targets[s:s + per])
                for i, s in enumerate(range(0, len(x), per))]
        queries = None if outs[0].queries is None else torch.cat([o.queries for o in outs])
        member = None if outs[0].member is None else torch.cat([o.member for o in outs])
        return AttackOutput(torch.cat([o.adversarial for o in outs]), queries, member)

    def images_per_part(self, model: nn.Module) -> float:
        """Images attacked together. An attack holds its frozen acceptance draws for the whole batch (R x
        images x K rows of noise, 256 B each at D = 64); a batch past FROZEN_ROWS goes in parts, each with its
        own seed (stream ``part``). Every default fits in one part."""
        draws = getattr(self.params, "accept_draws", 1)
        if draws == 1 or not isinstance(model, LatentClassifier):
            return math.inf
        return max(1, FROZEN_ROWS // (draws * self.params.samples))

    def _attack(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, seed: int,
                targets: torch.Tensor | None) -> AttackOutput:
        # Tensors an attack creates (buffers, noise) land on the images' device, so CUDA workers need no
        # per-attack device code. (CI has no GPU: the CUDA path is not exercised by the tests.)
        with torch.device(x.device):
            f = LogitsFn(model, self.params.samples, torch.Generator(device=x.device).manual_seed(seed),
                         self.params.eot, accept_seed=seeding.derive(seed, "acceptance"), n_images=len(x))
            out = self.run(f, x, y, targets)
        out.adversarial = out.adversarial.detach().clamp_(0.0, 1.0)
        return out

    @abstractmethod
    def run(self, f: LogitsFn, x: torch.Tensor, y: torch.Tensor, targets: torch.Tensor | None) -> AttackOutput:
        """Adversarial images for clean images x with labels y."""

    def accepted(self, f: LogitsFn, x: torch.Tensor, ref: torch.Tensor, index: torch.Tensor,
                 targeted: bool = False, known: torch.Tensor | None = None) -> torch.Tensor:
        """Robust acceptance (attacks with ``RobustAcceptParams``): is x adversarial under at least
        accept_fraction of the accept_draws frozen draws of its images (``index``: each row's image in the
        attacked batch)? (N,) bool. ``known``: the verdict of logits the caller already has, which is final
        for a deterministic model and for R = 1 (no extra pass: R = 1 is the plain attack, judged by its
        own single draw)."""
        p = self.params
        if known is not None and (not f.stochastic or p.accept_draws == 1):
            return known
        if f.frozen and len(x):
            return f.accept_frozen(x, ref, index, p.accept_draws, self.draws_needed(), targeted)[0]
        return self.enough(f.fooled_fraction(x, ref, p.accept_draws, targeted, index=index))

    def draws_needed(self) -> int:
        """The fewest of the R draws that must misclassify (the count ``enough`` accepts)."""
        r = self.params.accept_draws
        return next(c for c in range(r + 1) if self.enough(torch.tensor(c / r)))

    def enough(self, fooled_fraction: torch.Tensor) -> torch.Tensor:
        """Robust acceptance's verdict on a fraction of draws that misclassify (float tolerance: 9/10 of
        the draws meets a fraction of 0.9)."""
        return fooled_fraction >= self.params.accept_fraction - 1e-9


class BudgetedAttack(Attack, register=False):
    """Maximise a loss within the eps-ball of ``norm`` around x (FGSM, PGD, APGD, Square, AutoAttack).

    The kind owns the ball: projection onto it and the box, and the random start. Its result is always
    inside the ball: a point an algorithm left outside (it should never) is projected back."""

    kind = "budgeted"
    Params = BallParams

    @property
    def norm(self) -> Norm:
        return NORMS[self.params.norm]

    @property
    def eps(self) -> float:
        return self.params.eps

    def project(self, x0: torch.Tensor, xa: torch.Tensor) -> torch.Tensor:
        """xa moved into the eps-ball around x0 and the [0, 1] box (the box only shrinks each coordinate of
        the perturbation, so the result stays in the ball)."""
        return (x0 + self.norm.project(xa - x0, self.eps)).clamp(0.0, 1.0)

    def random_start(self, f: LogitsFn, x0: torch.Tensor) -> torch.Tensor:
        """A uniform random point of the ball around x0 (the attacker's noise), projected into the box."""
        return self.project(x0, x0 + self.norm.random(x0.shape, self.eps, f.generator))

    def _attack(self, model, x, y, seed, targets):
        out = super()._attack(model, x, y, seed, targets)
        outside = self.norm.size(out.adversarial - x) > self.eps * (1 + 1e-5) + 1e-7
        if outside.any():
            out.adversarial[outside] = self.project(x[outside], out.adversarial[outside])
        return out


class MinimalAttack(Attack, register=False):
    """The smallest perturbation, in ``norm``, that robustly fools (DeepFool, Truncated-DeepFool, CW, ZOO).

    The kind owns robust acceptance (``RobustAcceptParams``: an iterate counts only when enough of the
    image's frozen draws misclassify it) and the bookkeeping of the smallest accepted point."""

    kind = "minimal"
    Params = RobustAcceptParams
    norm: ClassVar[Norm]

    @staticmethod
    def keep_smallest(best: torch.Tensor, best_size: torch.Tensor, candidate: torch.Tensor,
                      size: torch.Tensor, ok: torch.Tensor, index: torch.Tensor | None = None) -> None:
        """In place: where ``ok``, ``candidate`` (with its ``size``) replaces the best point so far; ``index``:
        the images the candidate rows belong to (default: every image, in order)."""
        if index is None:
            best_size.copy_(torch.where(ok, size, best_size))
            best[ok] = candidate[ok]
            return
        best_size[index[ok]] = size[ok]
        best[index[ok]] = candidate[ok]


def hinge(logits: torch.Tensor, ref: torch.Tensor, targeted: bool, kappa: float) -> torch.Tensor:
    """The CW/ZOO adversarial loss: max(Z_ref - max other, -kappa) (targeted: max(max other - Z_ref, -kappa)),
    < 0 once the margin is crossed (by kappa when kappa > 0)."""
    return margin_score(logits, ref, targeted).clamp(min=-kappa)


def margin_score(logits: torch.Tensor, ref: torch.Tensor, targeted: bool) -> torch.Tensor:
    """The signed margin behind ``hinge``, unclamped: untargeted Z_ref - max other, targeted max other - Z_ref."""
    return (-1.0 if targeted else 1.0) * margin(logits, ref)


def crossed(score: torch.Tensor, kappa: float) -> torch.Tensor:
    """Has a signed margin score crossed the boundary (by kappa, when kappa > 0)?"""
    return score <= -kappa if kappa > 0 else score < 0


def make_attack(name: str, params: dict | None = None) -> Attack:
    if name not in ATTACKS:
        raise GenrobustError(f"unknown attack {name!r}; choose one of {', '.join(ATTACKS)}")
    return ATTACKS[name](**(params or {}))


def margin(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Z_y - max_{i != y} Z_i over the last dim (any leading dims). The true class is masked with -inf, not
    multiplied by (1 - onehot): logits log p(x, y) of generative classifiers are all negative, so a zeroed
    entry would win the max."""
    labels = labels.expand(logits.shape[:-1])
    real = logits.gather(-1, labels[..., None]).squeeze(-1)
    mask = nn.functional.one_hot(labels, logits.shape[-1]).bool()
    return real - logits.masked_fill(mask, float("-inf")).amax(-1)


def expected_gradient(f: LogitsFn, x: torch.Tensor, loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                      m: int | None = None, batch_mean: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """EOT gradient: d/dx of sum_i mean_draws loss_fn(logits, idx) over m independent draws (default eot),
    and the logits (m, N, C). ``loss_fn(logits_rows, idx)`` gives one loss per row of the tiled batch; idx
    are the rows' image indices (to pick labels). Rows go in passes of ``f.grad_rows`` whole rows.
    ``batch_mean`` also divides by N: for sign or normalised steps the scale is irrelevant, and at eot = 1
    (a batch in one pass) the gradient is then bit-identical to a batch-mean loss such as torchattacks uses."""
    n = x.shape[0]
    m = (f.eot if m is None else m) if f.stochastic else 1
    scale = m * n if batch_mean else m
    x = x.detach()
    rows = m * n
    step = f.grad_rows(x.device)
    grad = torch.zeros_like(x)
    logits_out = []
    for s in range(0, rows, step):
        idx = torch.arange(s, min(s + step, rows)) % n
        xr = x[idx].requires_grad_(True)
        f.queries += len(idx)
        # each pass draws its own rows of the attacker's noise, in turn
        logits = f.model.logits(xr, f.samples, f.generator) if f.latent else f.model(xr)
        (g,) = torch.autograd.grad(loss_fn(logits, idx).sum() / scale, xr)
        grad.index_add_(0, idx, g)
        logits_out.append(logits.detach())
    return grad, torch.cat(logits_out).view(m, n, -1)
