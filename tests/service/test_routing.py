"""Work goes where the device is: jobs routed to a named queue (GENROBUST_JOBS_QUEUE) reach only the workers
on it, and a CPU API in front of GPU workers (GENROBUST_JOBS_DEVICE=cuda) cuts GPU-sized sweep chunks."""

from __future__ import annotations

import pytest

from genrobust.attacks import make_attack
from genrobust.robustness import default_chunk_size
from tests.service.conftest import reset_service_config, wait_job

PGD = {"attack": "pgd", "params": {"eps": 0.1, "alpha": 0.02, "steps": 5, "samples": 2}}


@pytest.fixture
def gpu_queue(workers, monkeypatch):
    """A third worker consuming the `gpu` queue, and the API sending jobs there as to CUDA workers."""
    env = workers.env
    workers.env = {**env, "GENROBUST_JOBS_QUEUE": "gpu"}
    try:
        workers.start("gpu1")
    finally:
        workers.env = env
    workers.wait_ready("gpu1")
    monkeypatch.setenv("GENROBUST_JOBS_QUEUE", "gpu")
    monkeypatch.setenv("GENROBUST_JOBS_DEVICE", "cuda")
    monkeypatch.delenv("GENROBUST_SWEEP_CHUNK")  # sized by the jobs' device, not fixed
    reset_service_config()
    yield workers
    workers.kill("gpu1")
    del workers.procs["gpu1"]
    monkeypatch.undo()
    reset_service_config()


def test_jobs_on_the_gpu_queue_run_there_with_gpu_sized_chunks(client, gpu_queue):
    before = {w: gpu_queue.received(w) for w in ("w1", "w2")}
    body = {"models": ["tiny-gfz"], "attacks": [{"attack": "fgsm"}, PGD], "limit": 30}
    job = wait_job(client, client.post("/jobs/sweep", json=body).json()["job_id"], timeout=120)
    assert job["state"] == "succeeded", job
    cuda = [default_chunk_size(make_attack(a["attack"], a.get("params", {})), "cuda") for a in body["attacks"]]
    cpu = [default_chunk_size(make_attack(a["attack"], a.get("params", {})), "cpu") for a in body["attacks"]]
    assert job["request"]["chunk_sizes"] == cuda and all(g > c for g, c in zip(cuda, cpu))  # the API is on a CPU
    ran = gpu_queue.received("gpu1")
    assert ran and {w: gpu_queue.received(w) for w in ("w1", "w2")} == before  # the default queue's workers idle
