"""The device setting and the library following its inputs' device.

CI has no GPU, so "another device" is tested two ways: every pair of the devices this machine has (CPU
only in CI; CPU and CUDA on a GPU machine), and a default device of ``meta`` around the CPU computation,
under which any tensor created without following its inputs lands on ``meta`` and the next operation that
mixes it with the CPU inputs fails.
"""

from __future__ import annotations

import pytest
import torch

from genrobust import cli
from genrobust.attacks import make_attack
from genrobust.detection import DETECTORS
from genrobust.device import check_device_spec, device_info, resolve_device
from genrobust.errors import GenrobustError
from genrobust.evaluation import accuracy, batched_logits
from genrobust.models import ModelConfig
from genrobust.robustness import default_chunk_size, labels_for, run_attack
from genrobust.settings import Settings
from genrobust.store import ModelStore
from genrobust.training import Trainer, TrainConfig
from tests.conftest import TINY, interrupt_in_epoch, tiny_model

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")


# ------------------------------------------------------------------ the setting
def test_device_specs():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    assert check_device_spec(" CUDA:1 ") == "cuda:1"
    for bad in ("gpu", "cuda:", "cuda:x", "mps", ""):
        with pytest.raises(GenrobustError, match="unknown device"):
            resolve_device(bad)
    info = device_info("cpu")
    assert info["device"] == "cpu" and info["name"]


@NO_CUDA
def test_cuda_without_cuda_is_a_clear_error():
    for spec in ("cuda", "cuda:0", "cuda:3"):
        with pytest.raises(GenrobustError, match="no CUDA device"):
            resolve_device(spec)


def test_settings_validate_the_device(monkeypatch):
    monkeypatch.setenv("GENROBUST_DEVICE", "cuda:1")
    assert Settings().device == "cuda:1"
    monkeypatch.setenv("GENROBUST_DEVICE", "tpu")
    with pytest.raises(Exception, match="device"):
        Settings()


@NO_CUDA
@pytest.mark.parametrize("command", [["evaluate", "fmnist-gfz", "--limit", "5"],
                                     ["attack", "fmnist-gfz", "--attack", "fgsm", "--limit", "2"],
                                     ["detect", "fmnist-gfz", "--limit", "2"],
                                     ["fit-detectors", "fmnist-gfz", "--limit", "10"],
                                     ["reproduce", "--limit", "1", "--out", "never"],
                                     ["train", "gfz", "--name", "never", "--limit", "10"]])
def test_cli_device_cuda_without_cuda(env, capsys, command):
    assert cli.main([*command, "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert "no CUDA device" in err and "Traceback" not in err


def test_cli_rejects_an_unknown_device(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["evaluate", "fmnist-gfz", "--device", "gpu0"])
    assert exc.value.code == 2 and "unknown device 'gpu0'" in capsys.readouterr().err


def test_cli_evaluate_reports_its_device(env, capsys):
    assert cli.main(["evaluate", "fmnist-dfz", "--limit", "20", "--device", "cpu", "--json", "--no-progress"]) == 0
    assert '"device": "cpu"' in capsys.readouterr().out


# ------------------------------------------------------------------ created tensors follow the inputs
def on_meta():
    """Tensors created without an explicit device land on 'meta' while this is active."""
    return torch.device("meta")


@pytest.fixture
def model():
    return tiny_model("GFZ")


def test_inference_creates_nothing_on_the_default_device(images, model):
    with on_meta():
        _inference(images, model)


def _inference(images, model):
    logits = batched_logits(model, images, samples=2, seed=1)
    assert logits.device.type == "cpu"
    acc = accuracy(model, images, torch.zeros(len(images), dtype=torch.long, device="cpu"), samples=2)
    assert acc["device"].type == "cpu"
    labels = labels_for(model, images, seed=3, samples=2)
    assert labels.device.type == "cpu"
    for name in ("fgsm", "pgd", "deepfool", "cw", "zoo"):
        params = {"cw": dict(steps=2, binary_steps=1), "zoo": dict(steps=1, coords=4),
                  "pgd": dict(steps=2), "deepfool": dict(max_iter=2)}.get(name, {})
        report, adv = run_attack(model, make_attack(name, params | {"samples": 2}), images, labels, seed=0,
                                 eval_samples=2)
        assert adv.device.type == "cpu" and report.n == len(images), name


def test_detectors_follow_the_model(images, model):
    with on_meta():
        _detectors(images, model)


def _detectors(images, model):
    logits = batched_logits(model, images, samples=2, seed=0)
    labels = logits.argmax(1)
    for name, cls in DETECTORS.items():
        det = cls(model, samples=2).fit_logits(logits, labels).calibrate_logits(logits, 0.2)
        assert all(v.device.type == "cpu" for v in det._stats().values()), name
        out = det.detect(images)
        assert out.score.device.type == "cpu" and out.threshold.device.type == "cpu", name
        restored = cls.from_dict(det.to_dict(), model)
        assert all(v.device.type == "cpu" for v in restored._stats().values()), name
        assert torch.equal(restored.detect(images).is_adversarial, out.is_adversarial), name


@pytest.mark.parametrize("device", DEVICES)
def test_load_detector_on_a_device(env, device, images):
    from genrobust.detection import load_detector
    det = load_detector(ModelStore(), "fmnist-gfz", "kl", device=device)
    assert next(det.model.parameters()).device.type == device
    assert all(v.device.type == device for v in det._stats().values())
    out = det.detect(images.to(device))
    assert out.is_adversarial.device.type == device
    # CPU images are moved to the model's device at the edge, not rejected
    assert torch.equal(det.detect(images).is_adversarial, out.is_adversarial)


# ------------------------------------------------------------------ training on a device
CFG = dict(limit=200, test_limit=50, batch_size=50, val_samples=1)


def _trainer(name, epochs, device):
    return Trainer(ModelConfig(structure="GFZ", **TINY), TrainConfig(epochs=epochs, **CFG), name, progress=False,
                   device=device)


@pytest.mark.parametrize("first,second", [(a, b) for a in DEVICES for b in DEVICES])
def test_resume_on_another_device_equals_the_uninterrupted_cpu_run(env, monkeypatch, first, second):
    straight = _trainer("straight", 2, "cpu")
    assert all(p.device.type == "cpu" for p in straight.model.parameters())
    card = straight.fit()
    assert card["trained_on"]["device"] == "cpu" and card["trained_on"]["name"]

    part = _trainer("moved", 2, first)
    assert all(p.device.type == first for p in part.model.parameters())

    def on_device(train):  # the data were moved to the device once
        assert train.images.device.type == first

    interrupt_in_epoch(monkeypatch, part, 2, on_device)

    again = _trainer("moved", 2, second)
    assert again.resumed_from == 1
    assert all(p.device.type == second for p in again.model.parameters())
    assert all(v.device.type == second for st in again.opt.state.values() for k, v in st.items() if k != "step")
    again.fit()
    a, _ = ModelStore().load("straight")
    b, card_b = ModelStore().load("moved")
    assert card_b["trained_on"]["device"].startswith(second)
    exact = first == second == "cpu"  # different devices agree up to float rounding
    for (k, va), (_, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        if exact:
            assert torch.equal(va, vb), k
        else:
            torch.testing.assert_close(va, vb, rtol=1e-3, atol=1e-4, msg=k)


# ------------------------------------------------------------------ sweeps sized to the device
def test_chunk_size_follows_device_and_cost():
    cheap, dear = make_attack("fgsm"), make_attack("cw")
    assert default_chunk_size(cheap, "cpu") > default_chunk_size(dear, "cpu") >= 1
    assert default_chunk_size(dear, "cuda") > default_chunk_size(dear, "cpu")
    assert default_chunk_size(cheap, "cuda") >= 1000


def test_worker_loads_a_split_once_per_process(env, monkeypatch):
    from genrobust import data
    from worker import runtime

    calls = []
    real = data.load
    monkeypatch.setattr(data, "load", lambda *a, **k: calls.append(a) or real(*a, **k))
    runtime._datasets.clear()
    first = runtime.dataset("fashion-mnist", "test")
    again = runtime.dataset("fashion-mnist", "test")
    assert first is again and len(calls) == 1 and first.images.device == runtime.device()
    runtime._datasets.clear()


# ------------------------------------------------------------------ out of memory
def test_out_of_memory_is_a_clear_error(env, monkeypatch, capsys):
    from worker.tasks import public_error

    oom = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    message = public_error(oom)
    assert message.startswith("out of memory on") and "GENROBUST_SWEEP_CHUNK" in message and "batch_size" in message

    def boom(*args, **kwargs):
        raise oom

    monkeypatch.setattr(cli, "run_attack", boom)
    assert cli.main(["attack", "fmnist-dfz", "--attack", "fgsm", "--limit", "2", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "out of memory on cpu" in err and "--batch-size" in err and "Traceback" not in err
