"""Per-process runtime shared by the API and the workers: device, torch threads, cached models.

Nothing here runs at import: a prefork worker's parent imports this module and then forks, so CUDA must
only be touched inside the process that uses it (the first ``device()`` call happens in a task or request).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from functools import lru_cache
from typing import Any

import torch

from genrobust import data
from genrobust.device import resolve_device
from worker.settings import get_service_settings as get_settings
from genrobust.store import ModelStore

_lock = threading.Lock()
_models: dict[tuple[str, str], tuple[str, Any]] = {}
MAX_CACHED = 16


@lru_cache
def device() -> torch.device:
    """This process's device from GENROBUST_DEVICE (auto: CUDA when the process sees a GPU, else CPU),
    decided lazily, in the process that computes. Every task and inline call computes there."""
    return resolve_device(get_settings().device)


def set_threads(share: int = 1) -> None:
    """torch intra-op threads: GENROBUST_THREADS, else the cores divided among ``share`` processes."""
    n = get_settings().threads or max(1, (os.cpu_count() or 1) // share)
    torch.set_num_threads(n)


def store() -> ModelStore:
    return ModelStore()


def _card_digest(card: dict) -> str:
    return hashlib.sha1(json.dumps(card, sort_keys=True).encode()).hexdigest()


def cached(kind: str, name: str, build) -> Any:
    """``build(store, name)`` cached per (kind, model name) in this process, rebuilt when the model's card
    changes (a retrained model is picked up). Unknown names raise GenrobustError."""
    st = store()
    digest = _card_digest(st.card(name)) + str(st.root.resolve())  # one small JSON read per call
    key = (kind, name)
    with _lock:
        hit = _models.get(key)
        if hit and hit[0] == digest:
            return hit[1]
    value = build(st, name)
    with _lock:
        if len(_models) >= MAX_CACHED:
            _models.pop(next(iter(_models)))
        _models[key] = (digest, value)
    return value


def load_model(name: str):
    """The stored model, in eval mode on this process's device, loaded once."""
    return cached("model", name, lambda st, n: st.load(n, device())[0])


_data_lock = threading.Lock()
_datasets: dict[tuple[str, str], data.Data] = {}


def dataset(name: str, split: str) -> data.Data:
    """A whole split on this process's device, loaded and moved once per process (sweep chunks slice it)."""
    key = (name, split)
    with _data_lock:
        if key not in _datasets:
            _datasets[key] = data.load(name, split).to(device())
        return _datasets[key]
