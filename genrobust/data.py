"""Datasets through torchvision (MD5-verified download), a fixed validation split, and image checks.

Images are float32 in [0, 1] with shape (N, 1, 28, 28); labels are int64 in [0, 10).
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torchvision
from filelock import FileLock, Timeout

from genrobust.errors import GenrobustError
from genrobust.settings import get_settings

# The one line of difference between datasets: which torchvision class loads it.
DATASETS: dict[str, type[torchvision.datasets.MNIST]] = {
    "fashion-mnist": torchvision.datasets.FashionMNIST,
    "mnist": torchvision.datasets.MNIST,
}
# What the labels mean, per dataset (figures, the service's gallery).
CLASS_NAMES: dict[str, list[str]] = {
    "fashion-mnist": ["T-shirt", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Boot"],
    "mnist": [str(c) for c in range(10)],
}
Split = Literal["train", "validation", "test"]
SPLITS = ("train", "validation", "test")
VALIDATION_SIZE = 5000
VALIDATION_SEED = 20190101  # fixed forever: the validation split must not move between runs
NUM_CLASSES = 10
IMAGE_SHAPE = (1, 28, 28)


@dataclass(frozen=True)
class Data:
    images: torch.Tensor  # (N, 1, 28, 28) float32 in [0, 1]
    labels: torch.Tensor  # (N,) int64
    dataset: str
    split: str

    def __len__(self) -> int:
        return len(self.labels)

    def to(self, device: torch.device | str) -> "Data":
        """The same split on ``device`` (Fashion-MNIST's training split is ~170 MB as float32)."""
        return Data(self.images.to(device), self.labels.to(device), self.dataset, self.split)

    def head(self, limit: int | None) -> "Data":
        if limit is None:
            return self
        return Data(self.images[:limit], self.labels[:limit], self.dataset, self.split)


def dataset_of(card: dict) -> str:
    """The dataset a stored model was trained on (its card's record; Fashion-MNIST for old cards)."""
    ds = card.get("dataset")
    return ds.get("name", "fashion-mnist") if isinstance(ds, dict) else "fashion-mnist"


def dataset_md5s(dataset: str) -> dict[str, str]:
    """The MD5 of every raw file torchvision verifies, by file name (recorded in model cards)."""
    cls = _dataset_class(dataset)
    return {url.rsplit("/", 1)[-1]: md5 for url, md5 in cls.resources}


def _dataset_class(dataset: str):
    try:
        return DATASETS[dataset]
    except KeyError:
        raise GenrobustError(f"unknown dataset {dataset!r}; choose one of {sorted(DATASETS)}") from None


@contextlib.contextmanager
def _extraction_lock(folder: Path):
    """A lock across processes on ``folder``: torchvision extracts the .gz files on first use, and a second
    process (another training, a worker's other child) reading meanwhile gets a half-written file. A data root
    that cannot hold the lock file (read-only) is already extracted or cannot be, so it goes unlocked."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(folder / ".extract.lock"), timeout=600)
        lock.acquire()
    except (OSError, Timeout):
        yield
        return
    try:
        yield
    finally:
        lock.release()


def _load_torchvision(dataset: str, train: bool, root: Path):
    cls = _dataset_class(dataset)
    raw = root / cls.__name__ / "raw"
    try:
        # download=True checks the MD5 of files already present and only fetches what is missing.
        with _extraction_lock(root / cls.__name__), contextlib.redirect_stdout(io.StringIO()):
            return cls(str(root), train=train, download=True)
    except Exception as exc:  # network errors, MD5 mismatch, corrupt archives
        names = ", ".join(url.rsplit("/", 1)[-1] for url, _ in cls.resources)
        raise GenrobustError(
            f"could not load {dataset} from data root {root} ({type(exc).__name__}: {exc}). "
            f"Either allow the download, or copy the four official files ({names}) into {raw}/ "
            f"(on the project machines: cp ../shared/datasets/FashionMNIST/raw/*.gz {raw}/), "
            f"or point GENROBUST_DATA_DIR at a data root that has them."
        ) from None


_CACHE: dict[tuple[str, bool, str], tuple[torch.Tensor, torch.Tensor]] = {}


def _full(dataset: str, train: bool, root: Path) -> tuple[torch.Tensor, torch.Tensor]:
    key = (dataset, train, str(root.resolve()))
    if key not in _CACHE:
        ds = _load_torchvision(dataset, train, root)
        images = ds.data.unsqueeze(1).to(torch.float32).div_(255.0)
        _CACHE[key] = (images, ds.targets.to(torch.int64))
    return _CACHE[key]


def load(dataset: str = "fashion-mnist", split: Split = "train", limit: int | None = None,
         root: str | Path | None = None) -> Data:
    """Load a split. ``train`` and ``validation`` partition the official training set by a fixed
    seeded permutation (the last ``VALIDATION_SIZE`` images of it are validation); ``test`` is the
    official test set, to be used for reported numbers only."""
    if split not in SPLITS:
        raise GenrobustError(f"unknown split {split!r}; choose one of {list(SPLITS)}")
    if limit is not None and limit < 1:
        raise GenrobustError(f"limit must be at least 1, got {limit}")
    root = Path(root) if root is not None else get_settings().data_dir
    images, labels = _full(dataset, split != "test", root)
    if split != "test":
        perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(VALIDATION_SEED), device="cpu")
        idx = perm[:-VALIDATION_SIZE] if split == "train" else perm[-VALIDATION_SIZE:]
        images, labels = images[idx], labels[idx]
    return Data(images, labels, dataset, split).head(limit)


def check_images(x) -> torch.Tensor:
    """Validate a batch of images and return it as a float32 (N, 1, 28, 28) tensor.

    Accepts (N, 28, 28) or (N, 1, 28, 28) tensors or arrays of floats in [0, 1]."""
    if not isinstance(x, torch.Tensor):
        try:
            x = torch.as_tensor(x, device="cpu")  # host data: the caller moves it where it computes
        except Exception:
            raise GenrobustError("images must be a tensor or array of numbers") from None
    if not torch.is_floating_point(x):
        raise GenrobustError(f"images must be floating point in [0, 1], got dtype {x.dtype}")
    if x.dim() == 3:
        x = x.unsqueeze(1)
    if x.dim() != 4 or tuple(x.shape[1:]) != IMAGE_SHAPE:
        raise GenrobustError(f"images must have shape (N, 28, 28) or (N, 1, 28, 28), got {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise GenrobustError("images must contain at least one image")
    if not torch.isfinite(x).all():
        raise GenrobustError("images contain NaN or infinite values")
    if x.min() < 0 or x.max() > 1:
        raise GenrobustError(f"image values must lie in [0, 1], got range [{x.min():.4g}, {x.max():.4g}]")
    return x.to(torch.float32)


def check_labels(y, n: int) -> torch.Tensor:
    try:
        y = y if isinstance(y, torch.Tensor) else torch.as_tensor(y, device="cpu")
    except (TypeError, ValueError, RuntimeError, OverflowError):  # None, strings, ragged or huge values
        raise GenrobustError(f"labels must be {n} integers in [0, {NUM_CLASSES}), got {str(y)[:80]}") from None
    if y.dtype.is_floating_point or y.dtype == torch.bool or y.shape != (n,):
        raise GenrobustError(f"labels must be {n} integers, got dtype {y.dtype} and shape {tuple(y.shape)}")
    if (y < 0).any() or (y >= NUM_CLASSES).any():
        raise GenrobustError(f"labels must lie in [0, {NUM_CLASSES}), got range [{y.min()}, {y.max()}]")
    return y.to(torch.int64)
