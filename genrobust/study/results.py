"""results.json as a typed model: validated when the study writes it and whenever it is read back.

The primary endpoint and the answer are fully typed (genrobust.study.effects, genrobust.study.decision); the
paper's reproduction tables keep their per-attack dicts. ``schema_version`` changes whenever the layout does:
a results.json of another version is refused with what to do, never half-read.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from genrobust.errors import GenrobustError, validation_message
from genrobust.study.decision import Answer
from genrobust.study.effects import PrimaryResults

SCHEMA_VERSION = 2


class StudyResults(BaseModel):
    model_config = ConfigDict(extra="forbid")

    schema_version: Literal[2] = SCHEMA_VERSION
    config: dict[str, Any]
    environment: dict[str, Any]
    seconds: float = Field(description="The study's wall time, replicate training apart (primary.training_seconds).")
    images: dict[str, int]
    answer: Answer
    primary: PrimaryResults
    reproduction: dict[str, Any] = Field(description="The paper's tables summarised (secondary, not the answer).")
    models: dict[str, dict[str, Any]]
    attacks: dict[str, dict[str, dict[str, Any]]]
    adaptive: dict[str, Any]
    curves: dict[str, Any]
    fgs: dict[str, Any]
    examples: dict[str, Any]
    masking: dict[str, Any]
    analysis: dict[str, Any]
    figures: list[dict[str, Any]]
    tables: dict[str, dict[str, Any]]


def load_results(path: str | Path) -> StudyResults:
    """A study's results.json (or the folder holding it), validated; an older layout is a clear error."""
    path = Path(path)
    path = path / "results.json" if path.is_dir() else path
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise GenrobustError(f"cannot read {path}: {exc}") from None
    version = raw.get("schema_version") if isinstance(raw, dict) else None
    if version != SCHEMA_VERSION:
        raise GenrobustError(f"{path} has results schema {version or 1}, this genrobust reads {SCHEMA_VERSION}: it was "
                             "written before the primary endpoint existed. Run `genrobust reproduce` again with the "
                             "same --out (its cached attack chunks are reused)")
    try:
        return StudyResults.model_validate(raw)
    except ValidationError as exc:
        raise GenrobustError(f"{path} is not a valid results.json: {validation_message(exc)}") from None
