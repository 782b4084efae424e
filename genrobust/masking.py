"""Gradient-masking checks: does a model's robust accuracy come from the model or from attacks that fail?

A defence whose gradients are zero, shattered or drowned in noise looks robust to gradient attacks without
being robust (Athalye, Carlini & Wagner 2018; Carlini et al. 2019, "On Evaluating Adversarial
Robustness"). Six checks, each a pass or a flag with its numbers:

- (a) **unbounded budgets**: robust accuracy at L-infinity eps = 0.5 (PGD and APGD; an image counts as
  robust only if both leave it robust) and at L2 eps = 28, the diagonal of the [0, 1] box, so every image
  is reachable (APGD in L2), is at most ``tolerance`` (1) image;
- (b) **more budget never helps the model**: APGD with more steps (10 / 100 / 1,000), more EOT draws (1 /
  5 / 20 / 50; stochastic models only) and more restarts never raises robust accuracy beyond noise;
- (c) **iterative <= single step**: PGD (and APGD where it ran) leave no more images robust than FGSM at
  every eps of the grid, beyond noise;
- (d) **white-box <= black-box and transfer**: the gradient attacks at the check eps (an image is robust
  only if PGD and APGD, and with ``autoattack`` AutoAttack 'rand', all leave it robust) leave no more images
  robust than Square (query-only) or a transfer attack from another stored model, beyond noise; a part
  whose attack is not installed, or without a source, is "not run" and says so;
- (e) **robust accuracy falls with eps**: along the grid (eps = 0, the clean model, first) no step up in
  eps raises robust accuracy beyond noise (FGSM and PGD), and the largest eps lowers it below the clean
  point beyond noise;
- (f) **minimal attacks succeed**: DeepFool (L2) and CW with large iteration budgets leave at most
  ``tolerance`` correctly classified images robust (the residual: robust under both; each attack's own is
  shown too).

"Robust" is run_attack's per-image outcome: a strict majority of R = ``eval_draws`` fresh evaluations
classify the adversarial correctly (p_misclassified < 0.5). "Beyond noise" compares two attacks on the
same images: the exact one-sided McNemar test on the discordant pairs (b = robust under the stronger attack
but fooled by the weaker, c = the reverse; p = P(Binomial(b + c, 1/2) >= b), scipy's binomtest); p <
``alpha`` (0.05) flags. Holm-adjusted p-values across a check's comparisons are reported beside (a flag
whose Holm p is not below alpha says so: it may be chance among many comparisons).

Every attack runs once over all the images it needs (one run_attack per attack and budget); runs that
coincide are shared (the APGD run at the check eps with ``apgd_steps`` steps is a rung of the step ladder
and the white-box side of (c) and (d)). Each run is seeded from (seed, its attack and parameters) through
``genrobust.seeding``, so distinct runs have independent attacker and evaluator streams and a shared run
is one run. Tensors follow the model's device.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from typing import Any, Callable, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator
from scipy import stats
from statsmodels.stats.multitest import multipletests
from torch import nn
from tqdm import tqdm

from genrobust import seeding
from genrobust import uncertainty as unc
from genrobust.attacks import ATTACKS, make_attack
from genrobust.data import check_images, check_labels
from genrobust.device import module_device
from genrobust.errors import GenrobustError
from genrobust.models import LatentClassifier
from genrobust.robustness import run_attack
from genrobust.fields import Draws, Samples, Seed

Letter = Literal["a", "b", "c", "d", "e", "f"]
LETTERS: tuple[str, ...] = ("a", "b", "c", "d", "e", "f")
Status = Literal["pass", "flag", "not run"]
PresetName = Literal["default", "quick", "gpu"]
L2_DIAGONAL = 28.0  # ||1 - 0||_2 over 784 pixels: an L2 ball of this radius holds the whole box
_MASKING_KEY = 0x6D61736B  # "mask": the sub-stream of the attacker stream that roots every masking run

CHECKS: dict[str, tuple[str, str]] = {
    "a": ("unbounded budgets", "Robust accuracy at L∞ ε = 0.5 (PGD, APGD) and at L2 ε = 28, the whole box "
                               "(APGD), is at most the tolerance (1 image)."),
    "b": ("more budget never helps", "More APGD steps, more EOT draws and more restarts never raise robust "
                                     "accuracy beyond noise (exact one-sided McNemar)."),
    "c": ("iterative ≤ single step", "PGD (and APGD where it ran) leave no more images robust than FGSM at any "
                                     "ε of the grid, beyond noise."),
    "d": ("white-box ≤ black-box", "The gradient attacks at the check ε leave no more images robust than Square "
                                   "(query-only) or a transfer attack from another model, beyond noise."),
    "e": ("falls with ε", "Robust accuracy (FGSM, PGD) never rises beyond noise from one ε of the grid to the "
                          "next, and falls below the clean point beyond noise by the largest ε."),
    "f": ("minimal attacks succeed", "DeepFool and CW with large iteration budgets leave at most the tolerance "
                                     "(1) of the correctly classified images robust (the residual)."),
}

# Measured on fmnist-gfz, this project's 2-core CPU, 2 threads (seconds per image, the first 8-48 test images;
# README "Gradient-masking checks"): evaluating one run (1 + 1 + R = 10 fresh passes at K = 10) 0.20-0.22; a
# gradient step 0.020 (PGD, 48 images); FGSM 0.04-0.11; APGD 100 steps at eps 0.1 0.96 (robust accuracy 0.10:
# most images stop early); APGD at L∞ 0.5 0.27; APGD at L2 28 0.11; DeepFool 200 iterations 2.9; CW 40
# iterations 4.0 (2 images). From these ``default`` is estimated at about 17 min per model: (a), (c), (e) on 60
# images about 5.5 min, (b) on 30 about 5.5 min, (d) on 30 about 2 min (Square at 500 queries and the
# transfer estimated from a forward pass, 0.017 s), (f) on 10 about 3.5 min. ``quick`` is about a quarter
# of it; ``gpu`` is not measured (no GPU here).
PRESETS: dict[str, dict[str, Any]] = {
    "default": {"images": {"a": 60, "b": 30, "c": 60, "d": 30, "e": 60, "f": 10},
                "steps": [10, 100, 1000], "eot": [1, 5, 20, 50], "restarts": [1, 5], "ladder_steps": 10,
                "apgd_steps": 100, "pgd_steps": 10, "deepfool_iter": 500, "cw_steps": 50, "cw_binary_steps": 3,
                "batch_size": 100, "params": {"square": {"queries": 500}}},
    "quick": {"images": {"a": 20, "b": 10, "c": 20, "d": 10, "e": 20, "f": 4},
              "steps": [10, 100], "eot": [1, 5, 20], "restarts": [1, 3], "ladder_steps": 10,
              "apgd_steps": 100, "pgd_steps": 10, "deepfool_iter": 200, "cw_steps": 30, "cw_binary_steps": 3,
              "batch_size": 100, "params": {"square": {"queries": 200}}},
    "gpu": {"images": {"a": 10_000, "b": 1000, "c": 10_000, "d": 1000, "e": 10_000, "f": 1000},
            "steps": [10, 100, 1000], "eot": [1, 5, 20, 50], "restarts": [1, 5, 10], "ladder_steps": 100,
            "apgd_steps": 100, "pgd_steps": 100, "deepfool_iter": 1000, "cw_steps": 100, "cw_binary_steps": 5,
            "batch_size": 1000, "params": {}, "autoattack": True},
}


def _ladder(v: list[int]) -> list[int]:
    if len(v) < 2:
        raise ValueError("a ladder needs at least two rungs")
    return sorted(set(v))


class MaskingConfig(BaseModel):
    """What the checks run: image counts per check, budgets, ladders, attack parameters, seed. The defaults
    are the ``default`` preset; ``MaskingConfig.from_preset(name, limit=N)`` gives the others."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    preset: PresetName = Field("default", description="The preset the sizes came from (recorded in the report).")
    images: dict[Letter, int] = Field(default_factory=lambda: dict(PRESETS["default"]["images"]),
                                      description="Test images (the first N) per check.")
    eps: float = Field(0.1, gt=0.0, le=1.0, description="L∞ budget of the budgeted checks (b, d).")
    eps_grid: list[float] = Field(default_factory=lambda: [0.05, 0.1, 0.2, 0.3, 0.5],
                                  description="L∞ budgets of checks (c) and (e) (eps = 0 is added for (e)).")
    large_eps: float = Field(0.5, gt=0.0, le=1.0, description="L∞ budget of check (a).")
    l2_eps: float = Field(L2_DIAGONAL, gt=0.0, le=L2_DIAGONAL, description="L2 budget of check (a) (28: the box).")
    steps: list[int] = Field(default_factory=lambda: [10, 100, 1000], description="APGD steps ladder (b).")
    eot: list[int] = Field(default_factory=lambda: [1, 5, 20, 50], description="APGD EOT-draws ladder (b).")
    restarts: list[int] = Field(default_factory=lambda: [1, 5], description="APGD restarts ladder (b).")
    ladder_steps: int = Field(10, ge=1, le=100_000, description="APGD steps of the EOT and restart ladders.")
    apgd_steps: int = Field(100, ge=1, le=100_000, description="APGD steps in checks (a), (c) and (d).")
    pgd_steps: int = Field(10, ge=1, le=100_000, description="PGD steps on the ε grid (step 2.5 ε / steps).")
    deepfool_iter: int = Field(500, ge=1, le=10_000, description="DeepFool's max_iter in check (f).")
    cw_steps: int = Field(50, ge=1, le=100_000, description="CW Adam steps per binary-search step in (f).")
    cw_binary_steps: int = Field(3, ge=1, le=50, description="CW binary-search steps in (f).")
    params: dict[str, dict[str, Any]] = Field(
        default_factory=lambda: {"square": {"queries": 500}},
        description="Per-attack parameter overrides (e.g. {'apgd': {'samples': 5}, 'square': {'queries': 500}}); "
                    "the checks' budgets (eps, norm, steps, eot, restarts, max_iter) win.")
    autoattack: bool = Field(False, description="Add AutoAttack 'rand' (APGD-CE then APGD-DLR, eot 20: white-box) "
                                                "to the white-box side of (d); 'standard' holds Square, so it is "
                                                "not used.")
    transfer_source: str | None = Field(None, description="Stored model the transfer attack of (d) starts from.")
    transfer_attack: str = Field("apgd", description="The attack run on the transfer source.")
    seed: Seed = 0
    eval_samples: Samples = Field(10, description="K of the fresh evaluations.")
    eval_draws: Draws = Field(10, description="R fresh evaluations behind each robust outcome.")
    batch_size: int = Field(100, ge=1, le=100_000, description="Images per run_attack batch.")
    alpha: float = Field(0.05, gt=0.0, lt=1.0, description="Level of the one-sided McNemar tests.")
    tolerance: int = Field(1, ge=0, description="Images allowed to stay robust in (a) and (f).")

    @field_validator("steps", "eot", "restarts")
    @classmethod
    def _ladders(cls, v: list[int]) -> list[int]:
        if any(r < 1 for r in v):
            raise ValueError("every rung must be at least 1")
        return _ladder(v)

    @field_validator("images")
    @classmethod
    def _images(cls, v: dict[str, int]) -> dict[str, int]:
        for k, n in v.items():
            if n < 1:
                raise ValueError(f"images.{k}: at least 1 image, got {n}")
        return {k: v.get(k, PRESETS["default"]["images"][k]) for k in LETTERS}

    @field_validator("params")
    @classmethod
    def _params(cls, v: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        unknown = sorted(set(v) - set(ATTACKS))
        if unknown:
            raise ValueError(f"params: unknown attack(s) {', '.join(unknown)}; choose from {', '.join(ATTACKS)}")
        return v

    @field_validator("transfer_attack")
    @classmethod
    def _transfer_attack(cls, v: str) -> str:
        if v not in ATTACKS or ATTACKS[v].black_box:
            raise ValueError(f"transfer_attack: a white-box attack, one of "
                             f"{', '.join(a for a, c in ATTACKS.items() if not c.black_box)}; got {v!r}")
        return v

    @field_validator("eps_grid")
    @classmethod
    def _grid(cls, v: list[float]) -> list[float]:
        v = sorted(set(v))
        if not v or v[0] <= 0 or v[-1] > 1:
            raise ValueError("eps_grid: at least one budget, each in (0, 1]")
        return v

    @classmethod
    def from_preset(cls, name: str = "default", limit: int | None = None, **overrides) -> "MaskingConfig":
        """The preset's sizes, every image count capped at ``limit``, then ``overrides``."""
        if name not in PRESETS:
            raise GenrobustError(f"unknown masking preset {name!r}; choose one of {', '.join(PRESETS)}")
        fields = {k: (dict(v) if isinstance(v, dict) else v) for k, v in PRESETS[name].items()}
        if limit is not None:
            if limit < 1:
                raise GenrobustError(f"--limit must be at least 1, got {limit}")
            fields["images"] = {k: min(n, limit) for k, n in fields["images"].items()}
        return cls(preset=name, **{**fields, **overrides})

    def n(self, letter: str) -> int:
        return self.images[letter]


# ------------------------------------------------------------------------------------------ statistics
class Rate(BaseModel):
    """Robust accuracy of one attack (or a worst case over several) with its Wilson 95% interval."""

    label: str
    robust: int
    n: int
    value: float | None
    low: float | None
    high: float | None

    def text(self) -> str:
        if self.value is None:
            return f"{self.label}: – (n 0)"
        return f"{self.label}: {self.value:.3f} [{self.low:.3f}, {self.high:.3f}] ({self.robust}/{self.n})"


def robust_rate(label: str, flags: np.ndarray) -> Rate:
    flags = np.asarray(flags, dtype=bool)
    e = unc.proportion(flags)
    return Rate(label=label, robust=int(flags.sum()), n=len(flags), value=e.value, low=e.low, high=e.high)


class Paired(BaseModel):
    """Two attacks on the same images: the one expected to leave fewer images robust (``stronger``: more
    budget, iterative, white-box, larger eps) against the other (``weaker``)."""

    stronger: str
    weaker: str
    n: int
    stronger_ra: float | None
    weaker_ra: float | None
    b: int = Field(description="Images robust under the stronger attack but fooled by the weaker.")
    c: int = Field(description="Images fooled by the stronger attack but robust under the weaker.")
    p_higher: float = Field(description="Exact one-sided McNemar p that the stronger attack's robust accuracy "
                                        "is the higher: P(Binomial(b + c, 1/2) >= b).")
    p_lower: float = Field(description="The other side: that it is the lower, P(Binomial(b + c, 1/2) >= c).")
    p_holm: float | None = Field(None, description="p_higher after Holm across the check's comparisons.")
    beyond_noise: bool = Field(description="p_higher < alpha: the stronger attack did worse beyond noise.")

    def text(self) -> str:
        return (f"{self.stronger} {_f(self.stronger_ra)} vs {self.weaker} {_f(self.weaker_ra)}: b {self.b}, "
                f"c {self.c}, p {_p(self.p_higher)}")


def mcnemar(stronger: np.ndarray, weaker: np.ndarray) -> tuple[int, int, float, float]:
    """Exact one-sided McNemar tests on paired robust outcomes: (b, c, p that ``stronger`` leaves more images
    robust, p that it leaves fewer). b = robust under stronger only, c = robust under weaker only; under the
    null both are equally likely among the b + c discordant images (scipy's exact binomial test)."""
    s, w = np.asarray(stronger, dtype=bool), np.asarray(weaker, dtype=bool)
    if s.shape != w.shape:
        raise GenrobustError(f"paired outcomes need the same images, got {s.shape} and {w.shape}")
    b, c = int((s & ~w).sum()), int((~s & w).sum())
    if b + c == 0:
        return b, c, 1.0, 1.0
    return (b, c, float(stats.binomtest(b, b + c, 0.5, alternative="greater").pvalue),
            float(stats.binomtest(c, b + c, 0.5, alternative="greater").pvalue))


def paired(stronger_label: str, stronger: np.ndarray, weaker_label: str, weaker: np.ndarray,
           alpha: float) -> Paired:
    b, c, p_hi, p_lo = mcnemar(stronger, weaker)
    n = len(stronger)
    return Paired(stronger=stronger_label, weaker=weaker_label, n=n,
                  stronger_ra=float(np.mean(stronger)) if n else None, weaker_ra=float(np.mean(weaker)) if n else None,
                  b=b, c=c, p_higher=p_hi, p_lower=p_lo, beyond_noise=p_hi < alpha)


def _holm(comps: list[Paired]) -> None:
    if comps:
        adjusted = multipletests([c.p_higher for c in comps], method="holm")[1]
        for c, p in zip(comps, adjusted):
            c.p_holm = float(p)


def _f(v: float | None) -> str:
    return "–" if v is None else f"{v:.3f}"


def _p(p: float) -> str:
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


# ---------------------------------------------------------------------------------------------- report
class CheckResult(BaseModel):
    letter: Letter
    name: str
    tests: str = Field(description="What the check tests.")
    status: Status
    key_numbers: str = Field(description="The numbers behind the status, in one line.")
    rates: list[Rate] = Field(default_factory=list)
    comparisons: list[Paired] = Field(default_factory=list)
    explanation: str = Field(description="What the status means; for a flag, also what to try.")
    notes: list[str] = Field(default_factory=list, description="Parts not run and why, borderline findings.")


class RunRecord(BaseModel):
    label: str
    attack: str
    params: dict[str, Any]
    n: int
    seconds: float = Field(description="Wall seconds of the run, attack and evaluation.")
    robust_accuracy: Rate | None
    error: str | None = None


class MaskingReport(BaseModel):
    model: str
    preset: str
    device: str
    stochastic: bool
    seconds: float
    config: dict[str, Any]
    checks: list[CheckResult]
    runs: list[RunRecord]

    @property
    def flagged(self) -> list[str]:
        return [c.letter for c in self.checks if c.status == "flag"]

    def check(self, letter: str) -> CheckResult:
        return next(c for c in self.checks if c.letter == letter)

    def rows(self) -> list[list[str]]:
        """check, status, key numbers, explanation: one row per check (the CLI's table, the study's)."""
        return [[f"({c.letter}) {c.name}", c.status, c.key_numbers,
                 c.explanation + (" " + " ".join(c.notes) if c.notes else "")] for c in self.checks]


# ------------------------------------------------------------------------------------------------- runs
@dataclass
class _Run:
    label: str
    name: str
    params: dict[str, Any]
    n: int
    optional: bool


class _Runs:
    """Runs the checks ask for. In the planning pass (``planning``) every request is recorded and answered
    with placeholder outcomes; ``execute`` then runs each distinct (attack, parameters) once on the most
    images any check asked of it; in the second pass every check reads the first n of those outcomes."""

    def __init__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, config: MaskingConfig, model_name: str):
        self.model, self.x, self.y, self.config, self.model_name = model, x, y, config, model_name
        self.planning = True
        self.wanted: dict[str, _Run] = {}
        self.flags: dict[str, np.ndarray | None] = {}
        self.errors: dict[str, str] = {}
        self.records: list[RunRecord] = []

    @staticmethod
    def key(name: str, params: dict[str, Any]) -> str:
        return json.dumps([name, params], sort_keys=True, default=str)

    def robust(self, label: str, name: str, params: dict[str, Any], n: int,
               optional: bool = False) -> np.ndarray | None:
        """Per-image robust outcomes (p_misclassified < 0.5) of the first n images; None when an optional
        run failed (its error in ``error``)."""
        attack = make_attack(name, params)  # validated; the key holds every parameter, defaults filled in
        full = attack.params.model_dump(mode="json")
        k = self.key(name, full)
        n = min(n, len(self.x))
        if self.planning:
            run = self.wanted.get(k)
            if run is None:
                self.wanted[k] = _Run(label, name, params, n, optional)
            else:
                run.n = max(run.n, n)
            return np.zeros(n, dtype=bool)
        flags = self.flags[k]
        return None if flags is None else flags[:n]

    def error(self, name: str, params: dict[str, Any]) -> str | None:
        return self.errors.get(self.key(name, make_attack(name, params).params.model_dump(mode="json")))

    def execute(self, progress: bool | Callable[[float], None]) -> None:
        self.planning = False
        runs = list(self.wanted.items())
        bar = tqdm(runs, desc=f"{self.model_name}: masking checks", unit="run", disable=progress is not True)
        for i, (k, run) in enumerate(bar):
            bar.set_postfix_str(f"{run.label} ({run.n} images)")
            t0 = time.perf_counter()
            try:
                report, _ = run_attack(self.model, make_attack(run.name, run.params), self.x[:run.n], self.y[:run.n],
                                       seed=seeding.derive(self.config.seed, "attacker", _MASKING_KEY, _hash(k)),
                                       eval_samples=self.config.eval_samples, eval_draws=self.config.eval_draws,
                                       batch_size=self.config.batch_size, model_name=self.model_name,
                                       progress=progress is True)
            except GenrobustError as exc:
                if not run.optional:
                    raise
                self.flags[k], self.errors[k] = None, str(exc)
                self.records.append(RunRecord(label=run.label, attack=run.name, params=run.params, n=run.n,
                                              seconds=round(time.perf_counter() - t0, 3), robust_accuracy=None,
                                              error=str(exc)))
            else:
                flags = np.asarray(report.per_image["p_misclassified"]) < 0.5
                self.flags[k] = flags
                self.records.append(RunRecord(label=run.label, attack=run.name, params=report.params, n=run.n,
                                              seconds=round(time.perf_counter() - t0, 3),
                                              robust_accuracy=robust_rate(run.label, flags)))
            if callable(progress):
                progress((i + 1) / len(runs))
        bar.close()


def _hash(key: str) -> int:
    return int(hashlib.sha256(key.encode()).hexdigest()[:15], 16)


# ------------------------------------------------------------------------------------------ the checks
class _Ctx:
    """What every check needs: the runs, the config, what the model is, and the attacks at hand."""

    def __init__(self, runs: _Runs, config: MaskingConfig, stochastic: bool, model_name: str):
        self.runs, self.config, self.stochastic, self.model_name = runs, config, stochastic, model_name

    def params(self, name: str, budget: dict[str, Any]) -> dict[str, Any]:
        """The attack's parameters: its overrides (validated by the attack), then the check's budget, which
        wins (budget keys the attack does not take are left out)."""
        fields = ATTACKS[name].Params.model_fields
        return {**self.config.params.get(name, {}), **{k: v for k, v in budget.items() if k in fields}}

    # the attacks, with a label each
    def clean(self, n: int) -> np.ndarray:
        return self.runs.robust("clean (no attack)", "fgsm", {"eps": 0.0}, n)

    def fgsm(self, eps: float, n: int) -> np.ndarray:
        return self.runs.robust(f"FGSM ε={eps:g}", "fgsm", self.params("fgsm", {"eps": eps}), n)

    def pgd(self, eps: float, n: int) -> np.ndarray:
        s = self.config.pgd_steps
        return self.runs.robust(f"PGD ε={eps:g} ({s} steps)", "pgd", self.params(
            "pgd", {"eps": eps, "norm": "linf", "steps": s, "alpha": round(2.5 * eps / s, 12)}), n)

    def apgd_params(self, eps: float, norm: str = "linf", steps: int | None = None, **kw) -> dict[str, Any]:
        base = {"eot": 1, "restarts": 1, **self.config.params.get("apgd", {})}
        return {**base, **self.params("apgd", {"eps": eps, "norm": norm,
                                              "steps": steps or self.config.apgd_steps, **kw})}

    def apgd_label(self, p: dict[str, Any]) -> str:
        norm = "L∞" if p["norm"] == "linf" else "L2"
        extra = ((f", eot {p['eot']}" if p["eot"] > 1 else "")
                 + (f", {p['restarts']} restarts" if p["restarts"] > 1 else ""))
        return f"APGD {norm} ε={p['eps']:g} ({p['steps']} steps{extra})"

    def apgd(self, n: int, eps: float, norm: str = "linf", steps: int | None = None, **kw) -> tuple[str, np.ndarray]:
        p = self.apgd_params(eps, norm, steps, **kw)
        label = self.apgd_label(p)
        return label, self.runs.robust(label, "apgd", p, n)


def _check(letter: str, status: str, key_numbers: str, explanation: str, rates=(), comparisons=(),
           notes=()) -> CheckResult:
    name, tests = CHECKS[letter]
    return CheckResult(letter=letter, name=name, tests=tests, status=status, key_numbers=key_numbers,
                       rates=list(rates), comparisons=list(comparisons), explanation=explanation, notes=list(notes))


def _beyond(comps: list[Paired]) -> list[Paired]:
    return [c for c in comps if c.beyond_noise]


def _holm_note(flagged: list[Paired], alpha: float) -> str:
    if flagged and all(c.p_holm is not None and c.p_holm >= alpha for c in flagged):
        return (f" After Holm across the check's comparisons no p stays below {alpha:g}, so this may be chance "
                "among many comparisons: rerun with more images or another --seed before trusting it.")
    return ""


def check_a(ctx: _Ctx) -> CheckResult:
    cfg = ctx.config
    n, tol = cfg.n("a"), cfg.tolerance
    pgd = ctx.pgd(cfg.large_eps, n)
    apgd_label, apgd = ctx.apgd(n, cfg.large_eps)
    l2_label, l2 = ctx.apgd(n, cfg.l2_eps, norm="l2")
    linf = pgd & apgd
    rates = [robust_rate(f"PGD ε={cfg.large_eps:g}", pgd), robust_rate(apgd_label, apgd),
             robust_rate(f"L∞ ε={cfg.large_eps:g}, robust under both", linf), robust_rate(l2_label, l2)]
    key = (f"L∞ ε={cfg.large_eps:g}: {int(linf.sum())}/{n} robust; L2 ε={cfg.l2_eps:g}: {int(l2.sum())}/{n} robust "
           f"(tolerance {tol})")
    bad = [f"{int(linf.sum())} of {n} images stay robust at L∞ ε = {cfg.large_eps:g}"] if linf.sum() > tol else []
    if l2.sum() > tol:
        bad.append(f"{int(l2.sum())} of {n} stay robust at L2 ε = {cfg.l2_eps:g}"
                   + (", a ball that holds the whole [0, 1] box" if cfg.l2_eps >= L2_DIAGONAL else ""))
    if not bad:
        return _check("a", "pass", key, f"{int(linf.sum())} and {int(l2.sum())} of {n} images stay robust at these "
                      f"budgets (tolerance {tol}): the attacks reach the decision boundary when the budget allows it.",
                      rates)
    return _check("a", "flag", key, "; ".join(bad) + ". No classifier is robust at such budgets (they allow turning "
                  "an image into another class's image), so the attacks are not finding the boundary: a sign of "
                  "gradient masking (zero, shattered or noise-dominated gradients, e.g. a quantiser or a random "
                  "transform in front) or of an attacker that does not average the model's noise. Try: more steps "
                  "and restarts, EOT (params apgd.eot) on a stochastic model, a query-only attack (Square), BPDA "
                  "through a non-differentiable layer.", rates)


def check_b(ctx: _Ctx) -> CheckResult:
    cfg = ctx.config
    n = cfg.n("b")
    comps: list[Paired] = []
    notes: list[str] = []
    rates: list[Rate] = []

    def ladder(rungs: list[tuple[str, np.ndarray]]) -> None:
        rates.extend(robust_rate(lab, f) for lab, f in rungs)
        pairs = [(rungs[i], rungs[i - 1]) for i in range(1, len(rungs))]
        if len(rungs) > 2:
            pairs.append((rungs[-1], rungs[0]))
        comps.extend(paired(s[0], s[1], w[0], w[1], cfg.alpha) for s, w in pairs)

    ladder([ctx.apgd(n, cfg.eps, steps=s) for s in cfg.steps])
    if ctx.stochastic:
        ladder([ctx.apgd(n, cfg.eps, steps=cfg.ladder_steps, eot=m) for m in cfg.eot])
    else:
        notes.append("EOT ladder not run: the model is deterministic, so every EOT rung is the same attack.")
    ladder([ctx.apgd(n, cfg.eps, steps=cfg.ladder_steps, restarts=r) for r in cfg.restarts])
    _holm(comps)
    worst = min(comps, key=lambda c: c.p_higher)
    key = (f"APGD at ε={cfg.eps:g}, n {n}: steps {'/'.join(map(str, cfg.steps))} RA "
           f"{'/'.join(_f(r.value) for r in rates[:len(cfg.steps)])}; {len(comps)} comparisons, smallest p "
           f"{_p(worst.p_higher)} ({worst.stronger} vs {worst.weaker})")
    up = _beyond(comps)
    if not up:
        return _check("b", "pass", key, "No larger budget left more images robust beyond noise (exact one-sided "
                      f"McNemar, p ≥ {cfg.alpha:g} for every comparison).", rates, comps, notes)
    text = "; ".join(f"{c.stronger} left {c.b - c.c} more images robust than {c.weaker} (b {c.b}, c {c.c}, p "
                     f"{_p(c.p_higher)})" for c in up)
    return _check("b", "flag", key, f"{text}. A larger budget should never help the model: the attack's loss is "
                  "misleading it (masked or noisy gradients, a step size that breaks at some budgets) or the "
                  "attacker's noise does not average out. Try: the higher-budget attack's settings elsewhere, more "
                  "EOT draws, restarts, a black-box attack; look at the loss along the iterations."
                  + _holm_note(up, cfg.alpha), rates, comps, notes)


def check_c(ctx: _Ctx) -> CheckResult:
    cfg = ctx.config
    n = cfg.n("c")
    comps, rates = [], []
    for eps in cfg.eps_grid:
        f, p = ctx.fgsm(eps, n), ctx.pgd(eps, n)
        rates += [robust_rate(f"FGSM ε={eps:g}", f), robust_rate(f"PGD ε={eps:g}", p)]
        comps.append(paired(f"PGD ε={eps:g}", p, f"FGSM ε={eps:g}", f, cfg.alpha))
        if eps in (cfg.eps, cfg.large_eps):  # APGD runs there for (a), (b) and (d): compare it too
            label, a = ctx.apgd(n, eps)
            rates.append(robust_rate(label, a))
            comps.append(paired(label, a, f"FGSM ε={eps:g}", f, cfg.alpha))
    _holm(comps)
    worst = min(comps, key=lambda c: c.p_higher)
    key = (f"{len(comps)} comparisons over ε {', '.join(f'{e:g}' for e in cfg.eps_grid)}, n {n}; smallest p "
           f"{_p(worst.p_higher)} ({worst.stronger} vs {worst.weaker})")
    up = _beyond(comps)
    if not up:
        return _check("c", "pass", key, "At every ε the iterative attacks left no more images robust than FGSM "
                      "beyond noise.", rates, comps)
    text = "; ".join(f"{c.stronger} {_f(c.stronger_ra)} vs {c.weaker} {_f(c.weaker_ra)} (b {c.b}, c {c.c}, p "
                     f"{_p(c.p_higher)})" for c in up)
    return _check("c", "flag", key, f"{text}. An iterative attack can take FGSM's step and more, so doing worse "
                  "than one signed step means the local gradient misleads it (gradient masking: a loss surface "
                  "that curves away within the ball) or its step size is too small for the budget. Try: a larger "
                  "PGD step or APGD, random restarts, EOT on a stochastic model, Square." + _holm_note(up, cfg.alpha),
                  rates, comps)


def check_d(ctx: _Ctx) -> CheckResult:
    cfg = ctx.config
    n = cfg.n("d")
    apgd_label, apgd = ctx.apgd(n, cfg.eps)
    pgd = ctx.pgd(cfg.eps, n)
    white = apgd & pgd
    rates = [robust_rate(apgd_label, apgd), robust_rate(f"PGD ε={cfg.eps:g}", pgd)]
    members = [apgd_label, "PGD"]
    if cfg.autoattack:
        p = ctx.params("autoattack", {"eps": cfg.eps, "norm": "linf", "version": "rand", "steps": cfg.apgd_steps})
        aa = ctx.runs.robust(f"AutoAttack rand ε={cfg.eps:g}", "autoattack", p, n)
        white = white & aa
        rates.append(robust_rate(f"AutoAttack rand ε={cfg.eps:g}", aa))
        members.append("AutoAttack rand")
    white_label = f"white-box ε={cfg.eps:g} (robust under {', '.join(members[:-1])} and {members[-1]})"
    rates.append(robust_rate(white_label, white))
    comps, notes, ran = [], [], []
    if "square" in ATTACKS:
        p = ctx.params("square", {"eps": cfg.eps, "norm": "linf"})
        sq = ctx.runs.robust(f"Square ε={cfg.eps:g}", "square", p, n, optional=True)
        if sq is None:
            notes.append(f"Square not run: {ctx.runs.error('square', p)}.")
        else:
            rates.append(robust_rate(f"Square ε={cfg.eps:g}", sq))
            comps.append(paired(white_label, white, f"Square ε={cfg.eps:g}", sq, cfg.alpha))
            ran.append("Square")
    else:
        notes.append("Square not run: the square attack is unavailable in this installation.")
    source = cfg.transfer_source
    if "transfer" not in ATTACKS:
        notes.append("Transfer not run: the transfer attack is unavailable in this installation.")
    elif source is None or source == ctx.model_name:
        notes.append("Transfer not run: no other stored model to transfer from (MaskingConfig.transfer_source).")
    else:
        fields = ATTACKS[cfg.transfer_attack].Params.model_fields
        budget = {"eps": cfg.eps, "norm": "linf", "steps": cfg.apgd_steps if cfg.transfer_attack == "apgd" else None}
        inner = {**cfg.params.get(cfg.transfer_attack, {}),
                 **{k: v for k, v in budget.items() if k in fields and v is not None}}
        p = {**cfg.params.get("transfer", {}), "source": source, "attack": cfg.transfer_attack, "params": inner}
        label = f"transfer from {source} ({cfg.transfer_attack}) ε={cfg.eps:g}"
        try:
            tr = ctx.runs.robust(label, "transfer", p, n, optional=True)
        except GenrobustError as exc:  # parameters the transfer attack refuses (e.g. an unknown source)
            tr, err = None, str(exc)
        else:
            err = ctx.runs.error("transfer", p) if tr is None else None
        if tr is None:
            notes.append(f"Transfer not run: {err}.")
        else:
            rates.append(robust_rate(label, tr))
            comps.append(paired(white_label, white, label, tr, cfg.alpha))
            ran.append("transfer")
    if not comps:
        return _check("d", "not run", f"white-box {_f(float(white.mean()) if n else None)} (n {len(white)}); no "
                      "black-box or transfer attack to compare with", "not run: " + " ".join(notes), rates, notes=notes)
    _holm(comps)
    key = "; ".join(f"{c.weaker}: {_f(c.weaker_ra)}, white-box {_f(c.stronger_ra)} (b {c.b}, c {c.c}, p "
                    f"{_p(c.p_higher)})" for c in comps) + f"; n {n}"
    up = _beyond(comps)
    if not up:
        return _check("d", "pass", key, f"The gradient attacks left no more images robust than {' or '.join(ran)} "
                      "beyond noise.", rates, comps, notes)
    text = "; ".join(f"{c.weaker} fooled {c.b - c.c} more images than the white-box attacks (p {_p(c.p_higher)})"
                     for c in up)
    return _check("d", "flag", key, f"{text}. An attack without gradients (or with another model's) should never "
                  "beat the model's own gradients: they are uninformative here (masked, shattered or "
                  "noise-dominated). Trust the lower robust accuracy. Try: BPDA through non-differentiable parts, "
                  "EOT, a larger query budget to see how low it goes." + _holm_note(up, cfg.alpha),
                  rates, comps, notes)


def check_e(ctx: _Ctx) -> CheckResult:
    cfg = ctx.config
    n = cfg.n("e")
    clean = ctx.clean(n)
    comps, rates, falls, flat = [], [robust_rate("clean (ε=0)", clean)], [], []
    for name, run in (("FGSM", ctx.fgsm), ("PGD", ctx.pgd)):
        curve = [("clean (ε=0)", clean)] + [(f"{name} ε={e:g}", run(e, n)) for e in cfg.eps_grid]
        rates += [robust_rate(lab, f) for lab, f in curve[1:]]
        comps += [paired(curve[i][0], curve[i][1], curve[i - 1][0], curve[i - 1][1], cfg.alpha)
                  for i in range(1, len(curve))]
        fall = paired(curve[-1][0], curve[-1][1], "clean (ε=0)", clean, cfg.alpha)
        falls.append(fall)
        # no fall: not significantly below the clean point while more than the tolerance stay robust (a curve
        # already at the floor has fallen, whatever the n)
        if fall.p_lower >= cfg.alpha and curve[-1][1].sum() > cfg.tolerance:
            flat.append(fall)
    _holm(comps)
    up = _beyond(comps)
    key = (f"clean {_f(float(clean.mean()) if n else None)}; at ε={cfg.eps_grid[-1]:g}: "
           + ", ".join(f"{c.stronger.split(' ')[0]} {_f(c.stronger_ra)} (fall p {_p(c.p_lower)})" for c in falls)
           + f"; {len(comps)} steps up in ε, smallest p of a rise {_p(min(c.p_higher for c in comps))}; n {n}")
    if not up and not flat:
        how = "; ".join(f"{c.stronger.split(' ')[0]} " + (f"fell below the clean point beyond noise (p {_p(c.p_lower)})"
                        if c.p_lower < cfg.alpha else f"reached the floor ({round(c.stronger_ra * c.n)} of {c.n} "
                        f"robust, tolerance {cfg.tolerance})") for c in falls)
        return _check("e", "pass", key, f"Robust accuracy never rose beyond noise as ε grew; by ε = "
                      f"{cfg.eps_grid[-1]:g} {how}.", rates, comps + falls)
    parts = [f"{c.stronger} left more images robust than {c.weaker} (b {c.b}, c {c.c}, p {_p(c.p_higher)})"
             for c in up]
    parts += [f"{c.stronger} did not lower robust accuracy below the clean {_f(c.weaker_ra)} beyond noise "
              f"({_f(c.stronger_ra)}, p {_p(c.p_lower)})" for c in flat]
    return _check("e", "flag", key, "; ".join(parts) + ". A larger ball contains the smaller one, so robust accuracy "
                  "can only fall as ε grows; a rise, or no fall at all, means the attack does not use its budget: "
                  "its gradient is zero or misleading (a quantiser in front, for one, gives FGSM a zero sign). Try: "
                  "PGD with random restarts, a query-only attack (Square), BPDA." + _holm_note(up, cfg.alpha),
                  rates, comps + falls)


def check_f(ctx: _Ctx) -> CheckResult:
    cfg = ctx.config
    n, tol = cfg.n("f"), cfg.tolerance
    clean = ctx.clean(n)
    df_label = f"DeepFool L2 ({cfg.deepfool_iter} iterations)"
    cw_label = f"CW L2 ({cfg.cw_steps} steps × {cfg.cw_binary_steps})"
    df = ctx.runs.robust(df_label, "deepfool", ctx.params("deepfool", {"p": 2.0, "max_iter": cfg.deepfool_iter}), n)
    cw = ctx.runs.robust(cw_label, "cw", ctx.params("cw", {"steps": cfg.cw_steps,
                                                           "binary_steps": cfg.cw_binary_steps}), n)
    both = clean & df & cw
    rates = [robust_rate("clean (correct under a majority of R)", clean),
             robust_rate(f"residual of {df_label}", df[clean]), robust_rate(f"residual of {cw_label}", cw[clean]),
             robust_rate("residual of both (robust under DeepFool and CW)", both[clean])]
    k, m = int(both.sum()), int(clean.sum())
    key = (f"residual {k}/{m} correctly classified images (DeepFool {int((df & clean).sum())}, CW "
           f"{int((cw & clean).sum())}; tolerance {tol}); {rates[-1].text().split(': ', 1)[1]}")
    notes = [f"{lab} alone leaves {int((f & clean).sum())} images robust."
             for lab, f in ((df_label, df), (cw_label, cw))
             if (f & clean).sum() > tol]
    if k <= tol:
        return _check("f", "pass", key, "The minimal attacks fooled every correctly classified image (up to the "
                      "tolerance), judged by fresh evaluations.", rates, notes=notes)
    return _check("f", "flag", key, f"{k} correctly classified images stay robust under both unbounded minimal "
                  "attacks. With no budget an attack must always succeed, so these images are where the gradients "
                  "lead nowhere (zero or noise-dominated gradients) or, for a stochastic model, where the noise "
                  "keeps the attacks' acceptance test from being met. Try: more iterations, EOT (deepfool.eot, "
                  "cw.eot), CW with a larger c or lr, a decision-based attack.", rates, notes=notes)


CHECK_FUNCTIONS: dict[str, Callable[[_Ctx], CheckResult]] = {
    "a": check_a, "b": check_b, "c": check_c, "d": check_d, "e": check_e, "f": check_f}


def is_stochastic(model: nn.Module) -> bool:
    """A genrobust classifier (sampled z) or a module that declares ``stochastic = True``."""
    return isinstance(model, LatentClassifier) or bool(getattr(model, "stochastic", False))


def check_masking(model: nn.Module, images, labels, config: MaskingConfig | None = None, *,
                  model_name: str = "model", checks: str | list[str] = LETTERS,
                  progress: bool | Callable[[float], None] = False) -> MaskingReport:
    """Run the gradient-masking checks on ``model`` (any module mapping images in [0, 1] to logits, or a
    genrobust classifier) with the first images of ``images``/``labels`` each check needs. ``progress``:
    True for progress bars, or a callable that receives the finished fraction after each run."""
    config = config or MaskingConfig()
    t0 = time.perf_counter()
    letters = _letters(checks)
    device = module_device(model)
    x = check_images(images).to(device)
    y = check_labels(labels, len(x)).to(device)
    runs = _Runs(model, x, y, config, model_name)
    ctx = _Ctx(runs, config, is_stochastic(model), model_name)
    for c in letters:  # the planning pass: which runs, on how many images
        CHECK_FUNCTIONS[c](ctx)
    runs.execute(progress)
    results = [CHECK_FUNCTIONS[c](ctx) for c in letters]
    return MaskingReport(model=model_name, preset=config.preset, device=str(device), stochastic=ctx.stochastic,
                         seconds=round(time.perf_counter() - t0, 1), config=config.model_dump(mode="json"),
                         checks=results, runs=runs.records)


def images_needed(config: MaskingConfig, checks: str | list[str] = LETTERS) -> int:
    """Test images the checks read (the first N of the split)."""
    return max(config.n(c) for c in _letters(checks))


def _letters(checks: str | list[str]) -> list[str]:
    """The checks asked for, in order; a GenrobustError for an unknown letter or none."""
    unknown = sorted(set(checks) - set(LETTERS))
    letters = [c for c in LETTERS if c in set(checks)]
    if unknown or not letters:
        raise GenrobustError(f"unknown check(s) {', '.join(unknown) or '(none given)'}; choose from "
                             f"{', '.join(LETTERS)}")
    return letters


__all__ = ["CHECKS", "CheckResult", "LETTERS", "MaskingConfig", "MaskingReport", "PRESETS", "Paired", "Rate",
           "RunRecord", "check_masking", "images_needed", "is_stochastic", "mcnemar", "paired", "robust_rate"]
