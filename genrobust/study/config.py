"""What `genrobust reproduce` runs: one validated configuration, shared by the CLI and the service."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from genrobust.attacks import ATTACKS
from genrobust.detection import DEFAULT_FPR
from genrobust.seeding import SEED_MAX
from genrobust.store import check_name

STUDY_MODELS = ["fmnist-dfz", "fmnist-gfz"]
STUDY_ATTACKS = ["fgsm", "deepfool", "truncated-deepfool", "cw", "zoo"]
DEFAULT_LIMIT = 100  # test images per attack: the default run of both models takes ~25 min here (README)


class StudyConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    models: list[str] = Field(default_factory=lambda: list(STUDY_MODELS), min_length=1,
                              description="Stored model names (`genrobust models`).")
    attacks: list[str] = Field(default_factory=lambda: list(STUDY_ATTACKS), min_length=1,
                               description="Registered attack names (`genrobust attacks`).")
    params: dict[str, dict[str, Any]] = Field(default_factory=dict,
                                              description="Per-attack parameter overrides; library defaults otherwise.")
    limit: int = Field(DEFAULT_LIMIT, ge=1, le=10_000, description="Test images attacked per model and attack.")
    seed: int = Field(0, ge=0, le=SEED_MAX, description="Seeds attacks, evaluation and detection.")
    eval_samples: int = Field(10, ge=1, le=1000, description="K for judging success with fresh noise.")
    clean_limit: int = Field(1000, ge=1, le=10_000,
                             description="Clean test images for the false-positive rate and the ROC negatives.")
    fpr: float = Field(DEFAULT_FPR, gt=0, lt=1, description="Target false-positive rate of the detectors.")
    fit_limit: int | None = Field(None, ge=10, description="Training images used when a model's detectors must be "
                                                          "fitted first (default: the whole training split).")
    adaptive: bool = Field(True, description="Also run the detector-aware PGD attack (extra table).")
    adaptive_params: dict[str, Any] = Field(default_factory=dict, description="Overrides for detector-aware PGD.")
    out: Path = Field(Path("report"), description="Output folder (report.md, report.html, results.json, figures/).")

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
