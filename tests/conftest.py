"""Shared fixtures: tiny models, an isolated store and data root, Fashion-MNIST from the shared files."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from genrobust.models import LatentClassifier, ModelConfig, STRUCTURES
from genrobust.settings import get_settings

REPO = Path(__file__).resolve().parents[1]
SHARED_RAW = REPO.parent / "shared" / "datasets" / "FashionMNIST" / "raw"
TINY = dict(latent_dim=8, hidden=32, enc_channels=(4, 8, 8), dec_channels=(8, 8, 4), dropout=0.1)
ALL_STRUCTURES = list(STRUCTURES)


def tiny_model(structure: str, seed: int = 0) -> LatentClassifier:
    torch.manual_seed(seed)
    return LatentClassifier(ModelConfig(structure=structure, **TINY))


@pytest.fixture(scope="session")
def fmnist_root(tmp_path_factory) -> Path:
    """A data root holding the four official Fashion-MNIST .gz files (copied, never written in shared/)."""
    candidates = [SHARED_RAW, REPO / "data" / "FashionMNIST" / "raw"]
    src = next((c for c in candidates if len(list(c.glob("*.gz"))) == 4), None)
    if src is None:
        pytest.skip("Fashion-MNIST .gz files not found in ../shared/datasets or ./data (see README)")
    root = tmp_path_factory.mktemp("data")
    (root / "FashionMNIST" / "raw").mkdir(parents=True)
    for f in src.glob("*.gz"):
        shutil.copy(f, root / "FashionMNIST" / "raw" / f.name)
    return root


@pytest.fixture
def env(tmp_path, monkeypatch, fmnist_root):
    """Point the settings at a fresh store and the test data root."""
    monkeypatch.setenv("GENROBUST_MODEL_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("GENROBUST_DATA_DIR", str(fmnist_root))
    get_settings.cache_clear()
    yield tmp_path
    get_settings.cache_clear()


@pytest.fixture
def images() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.rand(6, 1, 28, 28, generator=g)


def interrupt_in_epoch(monkeypatch, trainer, epoch: int, check=None) -> None:
    """Run ``trainer.fit()`` until ``epoch`` starts, as if Ctrl-C came then: earlier epochs are saved, that
    one is lost. ``check(train)`` sees the training data of every epoch that runs."""
    from genrobust.training import Trainer

    real_epoch = Trainer._epoch

    def crashing(self, train, e):
        if check is not None:
            check(train)
        if e == epoch:
            raise KeyboardInterrupt
        return real_epoch(self, train, e)

    monkeypatch.setattr(Trainer, "_epoch", crashing)
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    monkeypatch.setattr(Trainer, "_epoch", real_epoch)


TRANSFER_SOURCE = "tiny-source"  # the stored source of the transfer attacks in the parametrised attack tests


def save_tiny(store, name: str, structure: str, seed: int = 0) -> None:
    m = tiny_model(structure, seed)
    s = m.structure
    store.save(name, m, {"structure": s.name, "kind": s.kind, "logits_have_density": s.logits_have_density,
                         "config": m.config.model_dump(mode="json")})


@pytest.fixture
def transfer_source(tmp_path, monkeypatch) -> str:
    """A fresh store (no data root needed) holding a tiny GFZ as TRANSFER_SOURCE; returns its name."""
    from genrobust.store import ModelStore

    monkeypatch.setenv("GENROBUST_MODEL_DIR", str(tmp_path / "source-store"))
    get_settings.cache_clear()
    save_tiny(ModelStore(), TRANSFER_SOURCE, "GFZ", seed=1)
    yield TRANSFER_SOURCE
    get_settings.cache_clear()


@pytest.fixture
def tiny_store(env):
    """The isolated store of ``env`` holding a tiny DFZ and GFZ as tiny-dfz and tiny-gfz."""
    from genrobust.store import ModelStore

    store = ModelStore()
    for s in ("DFZ", "GFZ"):
        save_tiny(store, f"tiny-{s.lower()}", s)
    return store
