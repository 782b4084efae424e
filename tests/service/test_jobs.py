"""Jobs on the real Redis with real worker processes: a sweep shared by two workers equals the library's
result, a worker SIGKILLed mid-task, training progress, cancellation, big attacks as jobs, API restarts."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from genrobust import data
from genrobust.attacks import make_attack
from genrobust.robustness import run_attack_chunked
from genrobust.store import ModelStore
from tests.service.conftest import wait_job
from tests.test_study import TINY_PRIMARY
from worker.jobs import job_store

SWEEP = {"models": ["tiny-gfz", "tiny-dfz"],
         "attacks": [{"attack": "fgsm", "params": {"eps": 0.1}},
                     {"attack": "pgd", "params": {"eps": 0.1, "alpha": 0.02, "steps": 5, "samples": 4}}],
         "limit": 40, "chunk_size": 10, "seed": 3, "eval_samples": 5}


def _library(model_name: str, attack: dict, body: dict) -> dict:
    """What genrobust computes in one process for the same request (one torch thread, like the workers)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model, _ = ModelStore().load(model_name)
        split = data.load("fashion-mnist", "test", body["limit"])
        report = run_attack_chunked(model, make_attack(attack["attack"], attack["params"]), split.images,
                                    split.labels, seed=body["seed"], chunk_size=body["chunk_size"],
                                    eval_samples=body["eval_samples"], model_name=model_name)
    finally:
        torch.set_num_threads(threads)
    return report.model_dump(mode="json", exclude={"seconds", "seconds_per_image"})


def test_sweep_runs_on_two_workers_and_equals_the_library(client, workers):
    r = client.post("/jobs/sweep", json=SWEEP)
    assert r.status_code == 202, r.text
    job = wait_job(client, r.json()["job_id"])
    assert job["state"] == "succeeded", job
    assert job["kind"] == "sweep" and job["progress"] == 1.0 and job["error"] is None
    assert any(0 < p < 1 for p in job["_progress"]) or len(job["_progress"]) == 1  # progress per chunk
    reports = job["result"]["reports"]
    assert job["result"]["chunks"] == 16 and len(reports) == 4
    pairs = [(m, a) for m in SWEEP["models"] for a in SWEEP["attacks"]]
    for got, (m, a) in zip(reports, pairs, strict=True):
        got = {k: v for k, v in got.items() if k not in ("seconds", "seconds_per_image")}
        assert got == _library(m, a, SWEEP)
        assert got["n"] == 40 and len(got["per_image"]["success"]) == 40
    # both workers took chunks of this one sweep
    chunk_ids = set(job_store().task_ids(job["id"])[:-1])
    assert workers.succeeded("w1") & chunk_ids and workers.succeeded("w2") & chunk_ids


def test_the_study_runs_as_a_job_and_writes_its_report(client, workers, service_env):
    body = {"models": ["tiny-gfz"], "attacks": [{"attack": "fgsm", "params": {"samples": 2}}], "limit": 4,
            "seed": 0, "eval_samples": 2, "study": True,
            "study_options": {"clean_limit": 20, "preset": "quick", "adaptive_params": {"steps": 2, "samples": 2},
                              "replicates": 1, "primary": TINY_PRIMARY}}
    r = client.post("/jobs/sweep", json=body)
    assert r.status_code == 202, r.text
    job = wait_job(client, r.json()["job_id"], timeout=150)
    assert job["state"] == "succeeded", job
    assert job["kind"] == "study" and job["progress"] == 1.0
    res = job["result"]
    # the primary endpoint's tables, then the paper's with the curves and the FGS reconstruction
    assert set(res["tables"]) == {"primary", "effects"} | {f"table{i}" for i in range(1, 9)}
    assert res["answer"]["question"] and res["answer"]["strength"]  # one model: nothing to compare, and it says so
    out = Path(res["out"])
    assert out.parent == service_env.data / "studies"
    assert (out / "report.html").is_file() and (out / "results.json").is_file()


def test_a_worker_killed_mid_task_loses_nothing(client, workers):
    body = {"models": ["tiny-gfz"], "attacks": [{"attack": "pgd", "params": {"steps": 30}}], "limit": 40,
            "chunk_size": 10, "seed": 1, "eval_samples": 2}
    r = client.post("/jobs/sweep", json=body)
    job_id = r.json()["job_id"]
    chunk_ids = set(job_store().task_ids(job_id)[:-1])
    end = time.time() + 60
    while not (in_flight := (workers.received("w1") - workers.succeeded("w1")) & chunk_ids):
        assert time.time() < end, "w1 never took a chunk"
        time.sleep(0.05)
    workers.kill("w1")  # SIGKILL parent and child mid-chunk: the message was never acknowledged
    job = wait_job(client, job_id, timeout=120)
    assert job["state"] == "succeeded", job
    report = job["result"]["reports"][0]
    assert report["n"] == 40 and len(report["per_image"]["pred_after"]) == 40
    assert in_flight <= workers.succeeded("w2"), "the killed worker's chunk was re-run by the other worker"
    assert {k: v for k, v in report.items() if not k.startswith("seconds")} == _library("tiny-gfz", body["attacks"][0],
                                                                                          body)


def test_training_job_reports_progress_per_epoch_and_stores_the_model(client, workers, service_env):
    body = {"config": {"structure": "gfz", "latent_dim": 8, "hidden": 32, "enc_channels": [4, 8, 8],
                       "dec_channels": [8, 8, 4]},
            "training": {"epochs": 2, "limit": 200, "test_limit": 40}, "name": "svc-trained"}
    r = client.post("/jobs/train", json=body)
    assert r.status_code == 202, r.text
    job = wait_job(client, r.json()["job_id"], timeout=150)
    assert job["state"] == "succeeded", job
    assert {0.333333, 0.666667} & {round(p, 6) for p in job["_progress"]}  # after epochs 1 and 2 of 2 (+ final)
    assert job["result"]["model"] == "svc-trained" and job["result"]["card"]["status"] == "trained"
    card = client.get("/models/svc-trained").json()
    assert card["structure"] == "GFZ" and card["epochs"] == 2
    assert not list((service_env.root / "models").glob(".*.tmp"))  # written atomically


def test_a_replicate_set_trains_as_one_job_with_progress_over_the_set(client, workers):
    body = {"config": {"structure": "gfz", "latent_dim": 8, "hidden": 32, "enc_channels": [4, 8, 8],
                       "dec_channels": [8, 8, 4]},
            "training": {"epochs": 1, "limit": 200, "test_limit": 40}, "name": "svc-set", "replicates": 2}
    r = client.post("/jobs/train", json=body)
    assert r.status_code == 202, r.text
    job = wait_job(client, r.json()["job_id"], timeout=200)
    assert job["state"] == "succeeded", job
    assert job["result"]["models"] == ["svc-set", "svc-set-s1"]
    assert [c["training"]["seed"] for c in job["result"]["cards"]] == [0, 1]
    assert {round(p, 6) for p in job["_progress"]} & {0.25, 0.5, 0.75}  # 2 seeds x (1 epoch + final evaluation)
    assert client.get("/models/svc-set-s1").json()["training"]["seed"] == 1
    # the set is complete: asking again trains nothing and succeeds at once with the same members
    again = wait_job(client, client.post("/jobs/train", json=body).json()["job_id"], timeout=60)
    assert again["result"]["models"] == ["svc-set", "svc-set-s1"]


def test_cancel_stops_a_running_job(client, workers):
    body = {"config": {"structure": "gfz", "latent_dim": 8, "hidden": 32, "enc_channels": [4, 8, 8],
                       "dec_channels": [8, 8, 4]},
            "training": {"epochs": 500, "limit": 200}, "name": "svc-cancelled"}
    job_id = client.post("/jobs/train", json=body).json()["job_id"]
    wait_job(client, job_id, until=("running",), timeout=60)
    r = client.delete(f"/jobs/{job_id}")
    assert r.status_code == 200 and r.json()["state"] == "cancelled"
    assert client.delete(f"/jobs/{job_id}").status_code == 409
    # the only live worker is free again: a small sweep completes promptly
    quick = client.post("/jobs/sweep", json={"models": ["tiny-gfz"], "attacks": [{"attack": "fgsm"}],
                                             "limit": 10}).json()["job_id"]
    assert wait_job(client, quick, timeout=60)["state"] == "succeeded"
    assert client.get(f"/jobs/{job_id}").json()["state"] == "cancelled"
    assert "svc-cancelled" not in client.get("/models").text or \
        client.get("/models/svc-cancelled").json().get("status") != "trained"


def test_an_attack_over_the_inline_limit_becomes_a_job(client, workers):
    x = torch.rand(3, 28, 28, generator=torch.Generator().manual_seed(0)).tolist()
    r = client.post("/attack", json={"model": "tiny-gfz", "attack": "pgd", "params": {"steps": 700},
                                     "images": x, "labels": [0, 1, 2]})
    assert r.status_code == 202, r.text
    job = wait_job(client, r.json()["job_id"])
    assert job["state"] == "succeeded" and job["kind"] == "attack"
    assert "images" not in job["request"] and job["request"]["n"] == 3
    res = job["result"]
    assert len(res["adversarial_images"]) == 3 and len(res["adversarial_images"][0]) == 28
    assert res["labels"] == [0, 1, 2] and len(res["success"]) == 3


def test_job_records_survive_an_api_restart(client, service_env):
    from fastapi.testclient import TestClient

    from app.main import create_app

    jobs = client.get("/jobs", params={"limit": 50}).json()
    assert len(jobs) >= 5 and jobs == sorted(jobs, key=lambda j: j["created_at"], reverse=True)
    with TestClient(create_app(embedded_worker=False)) as fresh:  # a new API process state, same Redis
        assert fresh.get("/jobs", params={"limit": 50}).json() == jobs
        assert fresh.get(f"/jobs/{jobs[0]['id']}").json() == jobs[0]


@pytest.mark.parametrize("method", ["post_train", "post_sweep", "delete"])
def test_the_api_key_guards_jobs(client, service_env, monkeypatch, method):
    from tests.service.conftest import reset_service_config

    monkeypatch.setenv("GENROBUST_API_KEY", "s3cret")
    reset_service_config()
    try:
        calls = {"post_train": lambda h: client.post("/jobs/train", json={"config": {"structure": "gfz"}}, headers=h),
                 "post_sweep": lambda h: client.post("/jobs/sweep", json={"models": ["tiny-gfz"],
                                                                          "attacks": [{"attack": "fgsm"}]}, headers=h),
                 "delete": lambda h: client.delete(f"/jobs/{'0' * 32}", headers=h)}
        for headers in ({}, {"X-API-Key": "wrong"}):
            r = calls[method](headers)
            assert r.status_code == 401 and "X-API-Key" in r.json()["detail"]
        if method == "delete":
            assert calls[method]({"X-API-Key": "s3cret"}).status_code == 404
    finally:
        monkeypatch.delenv("GENROBUST_API_KEY")
        reset_service_config()
