"""Fashion-MNIST through torchvision's MD5 check, the fixed split, image validation."""

import gzip
import shutil
import subprocess
import sys
import time
from urllib.error import URLError

import pytest
import torch

from genrobust import data
from genrobust.errors import GenrobustError


def test_fashion_mnist_loads_from_shared_gz(fmnist_root):
    train = data.load("fashion-mnist", "train", root=fmnist_root)
    val = data.load("fashion-mnist", "validation", root=fmnist_root)
    test = data.load("fashion-mnist", "test", root=fmnist_root)
    assert (len(train), len(val), len(test)) == (55_000, 5_000, 10_000)
    assert train.images.dtype == torch.float32 and train.images.shape[1:] == (1, 28, 28)
    assert 0.0 <= float(train.images.min()) and float(train.images.max()) <= 1.0
    assert set(test.labels.unique().tolist()) == set(range(10))
    # extracted by torchvision after verifying the MD5s of the four archives
    assert len(list((fmnist_root / "FashionMNIST" / "raw").glob("*-ubyte"))) == 4


LOAD_AFTER_GO = """
import pathlib, sys, time
from genrobust import data
go = pathlib.Path(sys.argv[2])
while not go.exists():
    time.sleep(0.01)
time.sleep(float(sys.argv[3]))
print(len(data.load("fashion-mnist", "train", root=sys.argv[1])))
"""


def test_processes_loading_a_fresh_root_at_once_all_succeed(tmp_path, fmnist_root):
    """torchvision extracts the archives on first use; a second process reading meanwhile used to get a
    half-written file ("invalid literal for int() with base 16"). Eight processes released 0.15 s apart."""
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for f in (fmnist_root / "FashionMNIST" / "raw").glob("*.gz"):
        shutil.copy(f, raw / f.name)
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", LOAD_AFTER_GO, str(tmp_path), str(go), str(0.15 * i)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(8)]
    time.sleep(3)  # every process imported and waiting
    go.touch()
    results = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0] * 8, [err[-500:] for _, err in results]
    assert [out.strip() for out, _ in results] == ["55000"] * 8


def test_validation_split_is_fixed_and_disjoint(fmnist_root):
    a = data.load("fashion-mnist", "validation", root=fmnist_root)
    b = data.load("fashion-mnist", "validation", root=fmnist_root)
    assert torch.equal(a.images, b.images)
    train = data.load("fashion-mnist", "train", root=fmnist_root)
    # no validation image appears in the training split (compare exact pixel rows by hashing)
    key = lambda t: {hash(r.numpy().tobytes()) for r in t.flatten(1)}  # noqa: E731
    assert not key(a.images) & key(train.images[:20_000])
    assert len(data.load("fashion-mnist", "test", limit=7, root=fmnist_root)) == 7


def test_md5s_are_torchvisions():
    md5 = data.dataset_md5s("fashion-mnist")
    assert md5["train-images-idx3-ubyte.gz"].startswith("8d4fb7e6")
    assert set(data.dataset_md5s("mnist")) == {"train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                                                "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"}


@pytest.fixture
def no_network(monkeypatch):
    """Make torchvision's real download path fail fast, as it does offline."""
    def refuse(*args, **kwargs):
        raise URLError("network disabled in this test")
    monkeypatch.setattr("urllib.request.urlopen", refuse)


def test_missing_dataset_says_how_to_get_it(tmp_path, no_network):
    with pytest.raises(GenrobustError, match="copy the four official files"):
        data.load("fashion-mnist", "test", root=tmp_path)


def test_corrupt_archive_fails_md5(tmp_path, fmnist_root, no_network):
    """A damaged archive fails torchvision's MD5 check (and, offline, cannot be re-fetched)."""
    raw = tmp_path / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for f in (fmnist_root / "FashionMNIST" / "raw").glob("*.gz"):
        shutil.copy(f, raw / f.name)
    with gzip.open(raw / "t10k-labels-idx1-ubyte.gz", "wb") as fh:
        fh.write(b"not the labels")
    with pytest.raises(GenrobustError, match="could not load fashion-mnist"):
        data.load("fashion-mnist", "test", root=tmp_path)


def test_bad_split_dataset_and_limit(fmnist_root):
    with pytest.raises(GenrobustError, match="unknown split"):
        data.load("fashion-mnist", "dev", root=fmnist_root)
    with pytest.raises(GenrobustError, match="unknown dataset"):
        data.load("cifar", "test", root=fmnist_root)
    with pytest.raises(GenrobustError, match="at least 1"):
        data.load("fashion-mnist", "test", limit=0, root=fmnist_root)


@pytest.mark.parametrize("bad, message", [
    (torch.zeros(2, 3, 28, 28), "shape"),
    (torch.zeros(28, 28), "shape"),
    (torch.zeros(0, 1, 28, 28), "at least one"),
    (torch.zeros(2, 1, 28, 28, dtype=torch.uint8), "floating point"),
    (torch.full((1, 28, 28), float("nan")), "NaN"),
    (torch.full((1, 28, 28), float("inf")), "NaN or infinite"),
    (torch.full((1, 28, 28), 1.5), r"\[0, 1\]"),
    (torch.full((1, 28, 28), -0.1), r"\[0, 1\]"),
    ("pixels", "tensor or array"),
])
def test_check_images_rejects(bad, message):
    with pytest.raises(GenrobustError, match=message):
        data.check_images(bad)


def test_check_images_accepts_and_normalises():
    x = data.check_images(torch.rand(3, 28, 28, dtype=torch.float64).tolist())
    assert x.shape == (3, 1, 28, 28) and x.dtype == torch.float32


def test_check_labels():
    assert data.check_labels([1, 2], 2).dtype == torch.int64
    with pytest.raises(GenrobustError):
        data.check_labels([1, 10], 2)
    with pytest.raises(GenrobustError):
        data.check_labels([1.0, 2.0], 2)
