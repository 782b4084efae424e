"""The transfer attack through the service: POST /attack inline and as a job, sweeps, its schema in OpenAPI,
and a clear 422 for an unknown source or a bad inner attack."""

from __future__ import annotations

import pytest
import torch

from genrobust.attacks import make_attack
from genrobust.robustness import run_attack
from genrobust.store import ModelStore
from tests.service.conftest import reset_service_config, wait_job
from tests.service.test_jobs import _library

X = torch.rand(3, 28, 28, generator=torch.Generator().manual_seed(4))
PARAMS = {"source": "tiny-dfz", "attack": "pgd", "params": {"eps": 0.1, "alpha": 0.05, "steps": 2}, "samples": 2}
BODY = {"model": "tiny-gfz", "attack": "transfer", "params": PARAMS, "images": X.tolist(), "labels": [0, 1, 2],
        "seed": 3, "eval_samples": 2}


def _expected() -> dict:
    report, adv = run_attack(ModelStore().load("tiny-gfz")[0], make_attack("transfer", PARAMS), X[:, None],
                             torch.tensor([0, 1, 2]), seed=3, eval_samples=2)
    return {"adversarial": adv[:, 0], "report": report}


def _check(out: dict, expected: dict) -> None:
    report = expected["report"]
    assert torch.allclose(torch.tensor(out["adversarial_images"]), expected["adversarial"], atol=1e-6)
    assert out["predictions_after"] == report.per_image["pred_after"] and out["success"] == report.per_image["success"]
    assert out["queries"] == [0, 0, 0] and out["summary"]["queries"] == 0
    assert out["summary"]["params"]["source"] == "tiny-dfz" and out["summary"]["params"]["params"]["steps"] == 2


def test_transfer_inline_equals_the_library(client):
    r = client.post("/attack", json=BODY)
    assert r.status_code == 200, r.text
    _check(r.json(), _expected())


def test_transfer_over_the_inline_limit_becomes_a_job(client, workers, monkeypatch):
    monkeypatch.setenv("GENROBUST_INLINE_ATTACK_WORK", "1")
    reset_service_config()
    try:
        r = client.post("/attack", json=BODY)
    finally:
        monkeypatch.undo()
        reset_service_config()
    assert r.status_code == 202, r.text
    job = wait_job(client, r.json()["job_id"])
    assert job["state"] == "succeeded", job
    _check(job["result"], _expected())


def test_a_sweep_accepts_transfer(client, workers):
    attack = {"attack": "transfer", "params": {"source": "tiny-dfz", "attack": "fgsm", "params": {"eps": 0.1},
                                               "samples": 2}}
    body = {"models": ["tiny-gfz", "tiny-dfx"], "attacks": [attack], "limit": 10, "chunk_size": 5, "seed": 1,
            "eval_samples": 2}
    r = client.post("/jobs/sweep", json=body)
    assert r.status_code == 202, r.text
    job = wait_job(client, r.json()["job_id"])
    assert job["state"] == "succeeded", job
    # what the route validated and sent on: the normalised parameters, every one
    sent = make_attack("transfer", attack["params"]).params.model_dump(mode="json")
    for got, m in zip(job["result"]["reports"], body["models"], strict=True):
        got = {k: v for k, v in got.items() if k not in ("seconds", "seconds_per_image")}
        assert got == _library(m, {"attack": "transfer", "params": sent}, body)
        assert got["queries"] == 0 and got["n"] == 10


def test_the_transfer_schema_is_in_openapi(client):
    spec = client.get("/openapi.json").json()
    params = spec["components"]["schemas"]["TransferParams"]
    assert params["required"] == ["source"] and {"source", "attack", "params", "samples", "eot"} <= set(
        params["properties"])
    variant = spec["components"]["schemas"]["TransferAttackRequest"]
    assert "params" in variant["required"]


BAD = [
    ({"source": "nope"}, "unknown source model 'nope'"),
    ({"source": "nope"}, "genrobust models"),
    ({}, "source: Field required"),
    (None, "params: Field required"),
    ({"source": "tiny-dfz", "attack": "zoo"}, "'zoo' cannot be transferred"),
    ({"source": "tiny-dfz", "attack": "transfer"}, "'transfer' cannot be transferred"),
    ({"source": "tiny-dfz", "params": {"steps": 0}}, "invalid parameters for pgd: steps"),
    ({"source": "tiny-dfz", "params": {"epz": 1}}, "epz"),
    ({"source": "tiny-dfz", "params": "{bad"}, "not a JSON object"),
    ({"source": "tiny-dfz", "samples": 0}, "params.samples"),
]


@pytest.mark.parametrize("params, words", BAD, ids=[w for _, w in BAD])
def test_bad_transfers_are_a_clear_422(client, params, words):
    body = {k: v for k, v in BODY.items() if k != "params"} | ({} if params is None else {"params": params})
    sweep = {"models": ["tiny-gfz"], "attacks": [{"attack": "transfer"} | ({} if params is None else
                                                                          {"params": params})]}
    for path, payload in (("/attack", body), ("/jobs/sweep", sweep)):
        r = client.post(path, json=payload)
        assert r.status_code == 422, (path, r.text)
        detail = r.json()["detail"]
        assert words in detail and "\n" not in detail and "Traceback" not in detail, (path, detail)
