"""What `genrobust reproduce` runs: one validated configuration, shared by the CLI and the service.

Image counts are per attack and come from a preset. ``default`` aims at two hours of this project's
2-core CPU after replicate training: the primary endpoint on replicates most of it, the paper's tables the
rest (BENCHMARKS.md, "The study's cost" and "The study's primary endpoint"): the cheap attacks on many
images, the costly ones on the largest subsets that fit; on a GPU (``--device cuda``) the ``gpu``
preset covers the full test set for every attack but ZOO. ``quick`` is a five-minute look.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from genrobust.attacks import ATTACKS
from genrobust.detection import DEFAULT_FPR
from genrobust.fields import Draws, Samples, Seed
from genrobust.replicates import REPLICATES_MAX
from genrobust.store import check_name
from genrobust.study.primary import Ensemble

STUDY_MODELS = ["fmnist-dfz", "fmnist-gfz"]
STUDY_ATTACKS = ["fgsm", "pgd", "apgd", "deepfool", "truncated-deepfool", "cw", "zoo"]
TEST_IMAGES = 10_000
Preset = Literal["default", "quick", "gpu"]

# Test images per attack (the first N of the test split), the curves' budgets and images. The default spends
# its hour where the evaluation is cheap: an image costs ~0.17 s of evaluation alone (one fresh evaluation
# and R = 10 more, both models), so even FGSM on all 10,000 would take half of it (BENCHMARKS.md).
# L-infinity budgets run 0-0.3 (0 is the clean model; 0.1 is the attacks' default, shared with the main
# runs through the chunk cache), L2 budgets are in units of ||x||_2 ~ 10.
PRESETS: dict[str, dict[str, Any]] = {
    "default": {
        # halved when the primary endpoint took the larger part of the budget (issue 23): secondary now
        "limits": {"fgsm": 1000, "pgd": 150, "apgd": 100, "deepfool": 300, "truncated-deepfool": 100,
                   "cw": 10, "zoo": 10, "autoattack": 100, "transfer": 300, "adaptive": 100},
        "curve_limits": {"fgsm": 500, "pgd": 50, "apgd": 30},
        "curve_eps": {"linf": [0.0, 0.05, 0.1, 0.2, 0.3], "l2": [0.0, 1.0, 2.0, 3.0]},
        "fgs_limit": 500,
        "clean_limit": 10_000,
        # the default run of 2026-12-03 on 30 images: 15-17 min per model for the ensemble on the idle 2-core
        # CPU (AutoAttack 'rand' alone 10-12 min), 8 models, about 2 h 55 min serial with the paper's tables
        # (BENCHMARKS.md, "The default run"); 15 images: timed at 1 h 49 min 39 s on the idle 2-core CPU.
        # L2 and a few hundred images per pair on a GPU (--preset gpu)
        "primary": 15,
        "ensemble": {"l2_eps": None},
        "replicates": 3,
        "masking": True,
    },
    "quick": {
        # DeepFool, CW and ZOO halved when robust acceptance moved to frozen draws (slower per image): the
        # quick look stays within its five minutes (BENCHMARKS.md, "The study's cost")
        "limits": {"fgsm": 200, "pgd": 20, "apgd": 10, "deepfool": 20, "truncated-deepfool": 10, "cw": 1,
                   "zoo": 1, "autoattack": 10, "transfer": 20, "adaptive": 10},
        "curve_limits": {"fgsm": 100, "pgd": 10, "apgd": 10},
        "curve_eps": {"linf": [0.0, 0.1, 0.3], "l2": [0.0, 2.0]},
        "fgs_limit": 100,
        "clean_limit": 1000,
        "primary": 10,
        # a look at the machinery, not an answer: weak members, no masking checks, and one seed unless
        # --replicates says otherwise (training the missing seeds would take an hour, not five minutes)
        "replicates": 1,
        "ensemble": {"restarts": 1, "steps": 10, "pgd_eot": 2, "pgd_steps": 10, "square_queries": 50,
                     "transfer_eot": 1, "curve_eps": [0.1]},
        "masking": False,
    },
    "gpu": {
        "limits": {**{a: TEST_IMAGES for a in ATTACKS}, "zoo": 500, "adaptive": TEST_IMAGES},
        "curve_limits": {"fgsm": TEST_IMAGES, "pgd": TEST_IMAGES, "apgd": TEST_IMAGES},
        "curve_eps": {"linf": [0.0, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3], "l2": [0.0, 0.5, 1.0, 1.5, 2.0, 3.0]},
        "fgs_limit": TEST_IMAGES,
        "clean_limit": TEST_IMAGES,
        "primary": TEST_IMAGES,
        "ensemble": {"restarts": 5, "square_queries": 5000, "curve_eps": [0.05, 0.075, 0.1]},
        # training is minutes on a GPU: five seeds narrow the between-seed part of the interval (issue 23)
        "replicates": 5,
        "masking": True,
    },
}
FALLBACK_LIMIT = 100  # an attack a preset does not name
CURVE_ATTACKS = {"linf": ["fgsm", "pgd", "apgd"], "l2": ["pgd", "apgd"]}


class StudyConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    models: list[str] = Field(default_factory=lambda: list(STUDY_MODELS), min_length=1,
                              description="Stored model names (`genrobust models`).")
    attacks: list[str] = Field(default_factory=lambda: list(STUDY_ATTACKS), min_length=1,
                               description="Registered attack names (`genrobust attacks`).")
    params: dict[str, dict[str, Any]] = Field(default_factory=dict,
                                              description="Per-attack parameter overrides; library defaults otherwise.")
    preset: Preset = Field("default", description="Image counts: default (~2 h on a 2-core CPU), quick (~5 min) "
                                                  "or gpu (the full test set for every attack but ZOO).")
    limit: int | None = Field(None, ge=1, le=TEST_IMAGES, description="Caps every image count of the preset "
                                                                       "(attacks, curves, clean images).")
    limits: dict[str, int] = Field(default_factory=dict, description="Test images per attack (or 'adaptive'), "
                                                                     "overriding the preset.")
    primary: dict[str, Any] = Field(default_factory=dict, description="Overrides of the primary endpoint's ensemble "
                                    "(genrobust.study.primary.Ensemble: eps, curve_eps, l2_eps, restarts, steps, "
                                    "pgd_eot, pgd_steps, square_queries, transfer, transfer_eot), over the preset's.")
    replicates: int | None = Field(None, ge=1, le=REPLICATES_MAX, description="Training seeds per model for the "
                                   "primary endpoint (seed 0 is the named model, seed s NAME-sS); missing ones are "
                                   "trained once and kept in the store. Default by preset: 3 (quick: 1, gpu: 5).")
    train_missing: bool = Field(True, description="Train missing replicates with their set's recipe (else: an error "
                                                  "naming them).")
    matched: bool = Field(True, description="Add the stored accuracy-matched checkpoints (--keep-at) of the run's "
                                            "discriminative replicates to the primary endpoint.")
    seed: Seed = Field(0, description="Seeds attacks, evaluation and detection.")
    eval_samples: Samples = Field(10, description="K for judging success with fresh noise.")
    eval_draws: Draws = Field(10, description="R fresh evaluations behind robust accuracy.")
    clean_limit: int | None = Field(None, ge=1, le=TEST_IMAGES,
                                    description="Clean test images for the false-positive rate and the ROC negatives "
                                                "(default: the preset's).")
    fpr: float = Field(DEFAULT_FPR, gt=0, lt=1, description="Target false-positive rate of the detectors.")
    fit_limit: int | None = Field(None, ge=10, description="Training images used when a model's detectors must be "
                                                          "fitted first (default: the whole training split).")
    adaptive: bool = Field(True, description="Also run the detector-aware PGD attack (extra table).")
    adaptive_params: dict[str, Any] = Field(default_factory=dict, description="Overrides for detector-aware PGD.")
    curves: bool = Field(True, description="Robustness curves over eps (FGSM, PGD, APGD; L-infinity and L2) and the "
                                           "reconstruction of the study's FGS eps.")
    curve_eps: dict[Literal["linf", "l2"], list[float]] | None = Field(
        None, description="Budgets of the curves per norm (default: the preset's).")
    masking: bool | None = Field(None, description="Run the gradient-masking checks (genrobust.masking) on every named "
                                                   "model: a section of the report, and a flag limits the answer (not "
                                                   "cached: they rerun each time). Default: the preset's (on, but off "
                                                   "for quick).")
    masking_preset: Preset | None = Field(None, description="Sizes of the masking checks (default: the study's "
                                                            "preset; --limit caps them too).")
    masking_overrides: dict[str, Any] = Field(default_factory=dict, description="MaskingConfig fields overriding "
                                                                                "the masking preset.")
    chunk_size: int = Field(100, ge=1, le=TEST_IMAGES, description="Images per cached chunk: an interrupted run "
                                                                   "resumes from its last finished chunk.")
    out: Path = Field(Path("report"), description="Output folder (report.md, report.html, results.json, figures/).")

    @field_validator("primary")
    @classmethod
    def _primary(cls, v: dict[str, Any]) -> dict[str, Any]:
        Ensemble(**v)  # unknown or invalid fields fail here, with the field's name
        return v

    @field_validator("models")
    @classmethod
    def _models(cls, v: list[str]) -> list[str]:
        for name in v:
            check_name(name)
        return list(dict.fromkeys(v))

    @field_validator("attacks")
    @classmethod
    def _attacks(cls, v: list[str]) -> list[str]:
        unknown = [a for a in v if a not in ATTACKS]
        if unknown:
            raise ValueError(f"unknown attack(s) {', '.join(unknown)}; choose from {', '.join(ATTACKS)}")
        return list(dict.fromkeys(v))

    @field_validator("limits")
    @classmethod
    def _limits(cls, v: dict[str, int]) -> dict[str, int]:
        for name, n in v.items():
            if name not in ATTACKS and name not in ("adaptive", "primary"):
                raise ValueError(f"limits: unknown attack {name!r}")
            if not 1 <= n <= TEST_IMAGES:
                raise ValueError(f"limits.{name}: between 1 and {TEST_IMAGES} images, got {n}")
        return v

    @field_validator("curve_eps")
    @classmethod
    def _eps(cls, v: dict[str, list[float]] | None) -> dict[str, list[float]] | None:
        for norm, eps in (v or {}).items():
            if any(not 0 <= e <= (1 if norm == "linf" else 28) for e in eps):
                raise ValueError(f"curve_eps.{norm}: every budget must lie in [0, {1 if norm == 'linf' else 28}]")
            v[norm] = sorted(set(eps))
        return v

    def _cap(self, n: int) -> int:
        return min(n, self.limit) if self.limit else n

    def images(self, attack: str) -> int:
        """Test images for ``attack`` (or 'adaptive')."""
        n = self.limits.get(attack, PRESETS[self.preset]["limits"].get(attack, FALLBACK_LIMIT))
        return self._cap(n)

    def curve_images(self, attack: str) -> int:
        return self._cap(PRESETS[self.preset]["curve_limits"].get(attack, FALLBACK_LIMIT))

    def fgs_images(self) -> int:
        return self._cap(PRESETS[self.preset]["fgs_limit"])

    def budgets(self) -> dict[str, list[float]]:
        """The curves' budgets per norm."""
        return self.curve_eps if self.curve_eps is not None else PRESETS[self.preset]["curve_eps"]

    def ensemble(self) -> Ensemble:
        """The primary endpoint's ensemble: the preset's sizes, then the ``primary`` overrides."""
        return Ensemble(**{**PRESETS[self.preset]["ensemble"], **self.primary})

    def primary_images(self) -> int:
        """Test images of the primary endpoint (``limits.primary`` overrides the preset's)."""
        return self._cap(self.limits.get("primary", PRESETS[self.preset]["primary"]))

    def replicate_count(self) -> int:
        return PRESETS[self.preset]["replicates"] if self.replicates is None else self.replicates

    def runs_masking(self) -> bool:
        return PRESETS[self.preset]["masking"] if self.masking is None else self.masking

    def clean_images(self) -> int:
        return self.clean_limit or self._cap(PRESETS[self.preset]["clean_limit"])
