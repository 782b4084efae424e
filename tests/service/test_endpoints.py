"""Every endpoint in-process (Redis mode): health, models, classify (lists, PNGs, dynamic batching),
attack, detect."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from app.images import encode_png
from genrobust.attacks import make_attack
from genrobust.evaluation import batched_logits
from genrobust.robustness import run_attack
from genrobust.store import ModelStore


def _images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 28, 28, generator=torch.Generator().manual_seed(seed))


def test_health_reports_the_broker(client):
    r = client.get("/health")
    assert r.status_code == 200
    assert r.json() == {"status": "ok", "mode": "redis", "broker": "ok", "worker": "external",
                        "models": len(ModelStore().names())}


def test_health_reports_a_down_broker_honestly(service_env, monkeypatch):
    from fastapi.testclient import TestClient

    from app.main import create_app
    from tests.service.conftest import reset_service_config

    monkeypatch.setenv("GENROBUST_REDIS_URL", "redis://127.0.0.1:1/0")  # nothing listens on port 1
    reset_service_config()
    try:
        with TestClient(create_app(embedded_worker=False)) as c:
            r = c.get("/health")
            assert r.status_code == 503
            assert r.json()["status"] == "degraded" and r.json()["broker"].startswith("unreachable")
            r = c.post("/jobs/sweep", json={"models": ["tiny-gfz"], "attacks": [{"attack": "fgsm"}]})
            assert r.status_code == 503 and "broker" in r.json()["detail"]
    finally:
        monkeypatch.undo()
        reset_service_config()


def test_models_and_cards(client):
    names = [c["name"] for c in client.get("/models").json()]
    assert {"tiny-gfz", "tiny-dfz", "fmnist-gfz"} <= set(names)
    card = client.get("/models/tiny-gfz").json()
    assert card["structure"] == "GFZ" and card["config"]["latent_dim"] == 8
    for bad in ("nope", "Bad_Name", "a..b", "a%2F..%2Fb"):
        r = client.get(f"/models/{bad}")
        assert r.status_code == 404 and ("unknown model" in r.json()["detail"] or "%2F" in bad)


def test_classify_equals_the_library_for_lists_and_pngs(client):
    x = _images(5)
    r = client.post("/classify", json={"model": "tiny-gfz", "images": x.tolist(), "samples": 4, "seed": 7})
    assert r.status_code == 200, r.text
    out = r.json()
    expected = batched_logits(ModelStore().load("tiny-gfz")[0], x, 4, 7)
    assert torch.allclose(torch.tensor(out["log_joint"]), expected, atol=1e-4)
    assert out["predictions"] == expected.argmax(1).tolist()
    assert torch.allclose(torch.tensor(out["probabilities"]).sum(1), torch.ones(5), atol=1e-5)
    # N x 1 x 28 x 28 lists, and PNGs of the same (8-bit) images, give the same answer
    q = (x * 255).round() / 255
    by_list = client.post("/classify", json={"model": "tiny-gfz", "images": q[:, None].tolist(), "samples": 4,
                                             "seed": 7}).json()
    by_png = client.post("/classify", json={"model": "tiny-gfz", "images_png": [encode_png(i) for i in q],
                                            "samples": 4, "seed": 7}).json()
    assert by_png["predictions"] == by_list["predictions"]
    assert torch.allclose(torch.tensor(by_png["log_joint"]), torch.tensor(by_list["log_joint"]), atol=1e-4)


def test_concurrent_classify_requests_share_a_pass_and_keep_their_answers(client):
    requests = [{"model": "tiny-gfz", "images": _images(2, seed=i).tolist(), "seed": i} for i in range(12)]
    alone = [client.post("/classify", json=body).json()["log_joint"] for body in requests]
    for _ in range(3):  # batching depends on timing; one round with a shared pass is enough
        with ThreadPoolExecutor(12) as pool:
            responses = list(pool.map(lambda b: client.post("/classify", json=b), requests))
        if any(int(r.headers["X-Batch-Images"]) > 2 for r in responses):
            break
    assert any(int(r.headers["X-Batch-Images"]) > 2 for r in responses), "no two requests were batched"
    for r, solo in zip(responses, alone, strict=True):
        assert torch.allclose(torch.tensor(r.json()["log_joint"]), torch.tensor(solo), atol=1e-4)


def test_attack_inline_equals_the_library(client):
    x, y = _images(4, seed=2), [0, 1, 2, 3]
    r = client.post("/attack", json={"model": "tiny-gfz", "attack": "fgsm", "params": {"eps": 0.2},
                                     "images": x.tolist(), "labels": y, "seed": 5, "eval_samples": 3})
    assert r.status_code == 200, r.text
    out = r.json()
    report, adv = run_attack(ModelStore().load("tiny-gfz")[0], make_attack("fgsm", {"eps": 0.2}), x[:, None],
                             torch.tensor(y), seed=5, eval_samples=3)
    assert torch.allclose(torch.tensor(out["adversarial_images"]), adv[:, 0], atol=1e-6)
    assert out["predictions_after"] == report.per_image["pred_after"]
    assert out["success"] == report.per_image["success"] and out["summary"]["params"]["eps"] == 0.2
    assert out["p_misclassified"] == report.per_image["p_misclassified"]
    assert out["summary"]["robust_accuracy"] == report.robust_accuracy
    assert max(out["linf"]) <= 0.2 + 1e-6 and out["queries"] is None
    # without labels the model's own predictions are attacked
    r = client.post("/attack", json={"model": "tiny-dfz", "attack": "deepfool", "params": {"max_iter": 3},
                                     "images_png": [encode_png(i) for i in x[:2]]})
    assert r.status_code == 200, r.text
    assert len(r.json()["labels"]) == 2


def test_detect(client):
    pytest.importorskip("genrobust.detection")
    x = _images(3).tolist()
    r = client.post("/detect", json={"model": "tiny-gfz", "images": x, "detector": "logit"})
    assert r.status_code == 200, r.text
    out = r.json()
    assert len(out["is_adversarial"]) == len(out["scores"]) == len(out["thresholds"]) == len(out["predictions"]) == 3
    assert client.post("/detect", json={"model": "tiny-gfz", "images": x}).status_code == 200  # default detector
    r = client.post("/detect", json={"model": "tiny-dfx", "images": x})
    assert r.status_code == 422 and "DFX" in r.json()["detail"]
    r = client.post("/detect", json={"model": "tiny-dfz", "images": x})
    assert r.status_code == 422 and "no fitted detectors" in r.json()["detail"]
