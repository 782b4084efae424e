"""The embedded default: `genrobust serve` with no Redis serves the API and runs jobs in-process on SQLite
(broker, results and job records under the data dir); records survive a restart."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from genrobust.store import ModelStore
from tests.conftest import REPO
from tests.service.conftest import save_tiny

X = [[[(i * j % 29) / 29 for j in range(28)] for i in range(28)]]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, env: dict[str, str], log: Path):
        self.port, self.env, self.log = _free_port(), env, log
        self.url = f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> httpx.Client:
        cmd = [sys.executable, "-m", "genrobust.cli", "serve", "--port", str(self.port), "--no-access-log"]
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=self.env, stdout=self.log.open("a"),
                                     stderr=subprocess.STDOUT, start_new_session=True)
        self.http = httpx.Client(base_url=self.url, timeout=60)
        end = time.time() + 90
        while True:
            try:
                if self.http.get("/health").status_code == 200:
                    return self.http
            except httpx.TransportError:
                pass
            if self.proc.poll() is not None or time.time() > end:
                raise RuntimeError(f"genrobust serve did not start:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.3)

    def __exit__(self, *exc) -> None:
        self.http.close()
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


@pytest.fixture
def embedded_env(tmp_path, fmnist_root):
    env = {k: v for k, v in os.environ.items() if not k.startswith("GENROBUST_")}
    data = tmp_path / "data"
    (data / "FashionMNIST").mkdir(parents=True)
    (data / "FashionMNIST" / "raw").symlink_to(fmnist_root / "FashionMNIST" / "raw")
    env.update(GENROBUST_DATA_DIR=str(data), GENROBUST_MODEL_DIR=str(tmp_path / "models"), GENROBUST_THREADS="1")
    save_tiny(ModelStore(tmp_path / "models"))
    return env


def test_genrobust_serve_embedded_classify_attack_job_and_restart(embedded_env, tmp_path):
    log = tmp_path / "serve.log"
    with Server(embedded_env, log) as http:
        health = http.get("/health").json()
        assert health["mode"] == "embedded" and health["worker"] == "running" and health["broker"] == "ok"
        r = http.post("/classify", json={"model": "tiny-gfz", "images": X})
        assert r.status_code == 200 and len(r.json()["predictions"]) == 1
        r = http.post("/attack", json={"model": "tiny-gfz", "attack": "fgsm", "images": X, "labels": [3]})
        assert r.status_code == 200 and len(r.json()["adversarial_images"]) == 1
        r = http.post("/jobs/sweep", json={"models": ["tiny-gfz"], "attacks": [{"attack": "fgsm"}], "limit": 20,
                                           "chunk_size": 10})
        assert r.status_code == 202, r.text
        job_id = r.json()["job_id"]
        end = time.time() + 90
        while (job := http.get(f"/jobs/{job_id}").json())["state"] not in ("succeeded", "failed"):
            assert time.time() < end, job
            time.sleep(0.3)
        assert job["state"] == "succeeded", job
        assert job["result"]["reports"][0]["n"] == 20
    assert "GENROBUST_API_KEY is not set" in log.read_text()
    assert (Path(embedded_env["GENROBUST_DATA_DIR"]) / "service" / "broker.sqlite").is_file()
    with Server(embedded_env, log) as http:  # a restarted API still knows the job
        again = http.get(f"/jobs/{job_id}").json()
        assert {k: again[k] for k in ("state", "result", "created_at")} == {k: job[k] for k in ("state", "result",
                                                                                                 "created_at")}
    assert "Traceback" not in log.read_text()
