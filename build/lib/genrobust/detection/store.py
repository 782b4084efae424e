"""Fit all detectors of a stored model in one pass over the training set, save them beside the model, load.

Detectors live in ``<store dir>/detectors/<model>.json`` (plain numbers: per-class means, standard
deviations, alpha, the KL detector's mean distributions). The user's store shadows the shipped ones, so
re-fitting a shipped model writes a new file in ``GENROBUST_MODEL_DIR`` and leaves the package alone.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from genrobust import data, seeding
from genrobust.device import device_info, resolve_device
from genrobust.detection.detectors import DEFAULT_FPR, DETECTORS, Detector, check_applicable
from genrobust.errors import GenrobustError
from genrobust.evaluation import batched_logits
from genrobust.models import LatentClassifier
from genrobust.store import CorruptStoreFile, ModelStore, check_name, write_json

SUBDIR = "detectors"


def check_detector(name: str) -> str:
    if name not in DETECTORS:
        raise GenrobustError(f"unknown detector {name!r}; choose one of {', '.join(DETECTORS)}")
    return name


def detectors_path(store: ModelStore, model_name: str) -> Path | None:
    """The fitted-detectors file of a model (user store first), or None."""
    check_name(model_name)
    for d in store.dirs:
        p = d / SUBDIR / f"{model_name}.json"
        if p.is_file():
            return p
    return None


def fit_detectors(store: ModelStore, model_name: str, *, model: LatentClassifier | None = None, samples: int = 10,
                  seed: int = 0, limit: int | None = None, fpr: float = DEFAULT_FPR, data_root=None,
                  progress: bool = False, device: str | torch.device | None = None) -> dict[str, Any]:
    """Fit every detector on the model's training split (true labels, correctly classified images only),
    calibrate alpha on the validation split (held out from training) and save. The logits are computed
    once per split and shared by all detectors, on the given model's device (or, without a model, on
    ``device``, default ``GENROBUST_DEVICE``). Returns the saved record."""
    if model is None:
        model, card = store.load(model_name, resolve_device(device))
    else:
        card = store.card(model_name)
    check_applicable(model, model_name)
    dataset = data.dataset_of(card)
    t0 = time.perf_counter()
    train = data.load(dataset, "train", limit=limit, root=data_root)
    held = data.load(dataset, "validation", limit=limit, root=data_root)
    train_logits = batched_logits(model, train.images, samples, seeding.derive(seed, "fit", 0), progress=progress,
                                  desc="fit: training set")
    held_logits = batched_logits(model, held.images, samples, seeding.derive(seed, "fit", 1), progress=progress,
                                 desc="calibrate: validation set")
    fitted = {}
    for name, cls in DETECTORS.items():
        det = cls(model, samples=samples, seed=seed, model_name=model_name)
        det.fit_logits(train_logits, train.labels.to(train_logits.device)).calibrate_logits(held_logits, fpr)
        fitted[name] = det.to_dict()
    record = {"model": model_name, "dataset": dataset, "samples": samples, "seed": seed, "fpr": fpr,
              "n_train": len(train), "n_calibrate": len(held), "seconds": round(time.perf_counter() - t0, 2),
              "fitted_on": device_info(train_logits.device), "detectors": fitted}
    write_json(store.root / SUBDIR / f"{model_name}.json", record)
    return record


def load_detector(store: ModelStore, model_name: str, detector: str = "logit",
                  model: LatentClassifier | None = None, device: str | torch.device | None = None) -> Detector:
    """A fitted detector of a stored model, its statistics on the model's device (the given model's, else
    ``device``, default ``GENROBUST_DEVICE``). Raises DetectionNotApplicable for DFX/DBX and GenrobustError
    when the model has no fitted detectors yet."""
    check_detector(detector)
    if model is None:
        model, _ = store.load(model_name, resolve_device(device))
    check_applicable(model, model_name)
    path = detectors_path(store, model_name)
    if path is None:
        raise GenrobustError(f"model {model_name!r} has no fitted detectors; run `genrobust fit-detectors {model_name}`")
    try:
        state = json.loads(path.read_text())["detectors"][detector]
        return DETECTORS[detector].from_dict(state, model, model_name)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError,
            IndexError, RuntimeError) as exc:  # anything a truncated or edited file can make the parsing raise
        raise CorruptStoreFile(f"corrupt detectors file {path}: {type(exc).__name__}: {exc}") from None
