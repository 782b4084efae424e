"""The parameter types every schema shares (library configs, CLI, API, jobs): each bound is written once.

``Seed``: any integer in [0, 2**63 - 1] (``genrobust.seeding`` derives every stream from it). ``Samples``: K,
importance samples per class. ``Draws``: R, independent evaluations behind one robust outcome. ``Dataset``: a
name of ``genrobust.data.DATASETS`` (an enum in JSON Schema, a clear message when unknown). A use site
adds its own default and description: ``seed: Seed = Field(0, description=...)``.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, Field, WithJsonSchema

from genrobust.data import DATASETS
from genrobust.seeding import SEED_MAX

SAMPLES_MAX = 1000  # K: the memory of a pass does not grow with K (passes shrink), only its time


def _known_dataset(name: str) -> str:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {sorted(DATASETS)}")
    return name


Seed = Annotated[int, Field(ge=0, le=SEED_MAX)]
Samples = Annotated[int, Field(ge=1, le=SAMPLES_MAX)]
Draws = Annotated[int, Field(ge=1, le=SAMPLES_MAX)]
Dataset = Annotated[str, AfterValidator(_known_dataset),
                    WithJsonSchema({"type": "string", "enum": sorted(DATASETS)})]

__all__ = ["SAMPLES_MAX", "Seed", "Samples", "Draws", "Dataset"]
