"""Service fixtures: the real Redis (a dedicated database, flushed before and after), real `celery worker`
processes, tiny models in a temporary store, and the app in-process (Redis mode, no embedded worker)."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from genrobust.settings import get_settings
from genrobust.store import ModelStore
from tests.conftest import REPO, tiny_model

REDIS_URL = os.environ.get("GENROBUST_TEST_REDIS_URL", "redis://127.0.0.1:6379/13")  # only this DB is flushed
TINY_MODELS = {"tiny-gfz": "GFZ", "tiny-dfz": "DFZ", "tiny-dfx": "DFX"}
FINAL = ("succeeded", "failed", "cancelled")


def _flush() -> None:
    import redis

    redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).flushdb()


def save_tiny(store: ModelStore) -> None:
    for name, structure in TINY_MODELS.items():
        m = tiny_model(structure)
        s = m.structure
        store.save(name, m, {"structure": s.name, "kind": s.kind, "logits_have_density": s.logits_have_density,
                             "config": m.config.model_dump(mode="json"), "dataset": {"name": "fashion-mnist"}})


def reset_service_config() -> None:
    from worker.celery import configure
    from worker.jobs import _store

    get_settings.cache_clear()
    _store.cache_clear()
    configure()


@contextlib.contextmanager
def live_app(env: dict[str, str]):
    """The app under uvicorn in a thread (with its lifespan, no embedded worker) on a free port, with the
    environment ``env`` set for its lifetime; yields its base URL."""
    import threading
    import time

    import uvicorn

    from app.main import create_app
    from tests.service.test_embedded import _free_port

    mp = pytest.MonkeyPatch()
    for k, v in env.items():
        mp.setenv(k, v)
    reset_service_config()
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(embedded_worker=False), host="127.0.0.1", port=port,
                                           log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        mp.undo()
        reset_service_config()


@pytest.fixture(scope="package")
def service_env(tmp_path_factory, fmnist_root):
    try:
        _flush()
    except Exception as exc:
        pytest.skip(f"Redis not reachable at {REDIS_URL} ({exc}); .ci/run installs and starts redis-server")
    root = tmp_path_factory.mktemp("service")
    env = {"GENROBUST_REDIS_URL": REDIS_URL, "GENROBUST_MODEL_DIR": str(root / "models"),
           "GENROBUST_DATA_DIR": str(fmnist_root), "GENROBUST_VISIBILITY_TIMEOUT": "6",
           "GENROBUST_SWEEP_CHUNK": "10",
           # the tests send bursts of concurrent requests on a busy CI machine and check their answers; the
           # wait-based shedding would refuse some (test_faults tests the shedding itself)
           "GENROBUST_CLASSIFY_MAX_WAIT_MS": "0"}
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        mp.delenv("GENROBUST_API_KEY", raising=False)
        reset_service_config()
        store = ModelStore()
        save_tiny(store)
        try:
            from genrobust.detection import fit_detectors
            fit_detectors(store, "tiny-gfz", samples=2, limit=100)
        except ImportError:
            pass
        yield SimpleNamespace(root=root, env=env, store=store, data=fmnist_root)
    _flush()
    reset_service_config()
    torch.set_num_threads(threads)  # the app sets threads process-wide


class Workers:
    """`celery -A worker worker` processes (prefork, one child, one torch thread), each in its own session so
    a SIGKILL takes the whole worker (parent and child) down, like a machine dying."""

    def __init__(self, env: dict[str, str], logdir: Path):
        self.env, self.logdir, self.procs = env, logdir, {}

    def start(self, name: str) -> None:
        log = open(self.logdir / f"{name}.log", "w")
        cmd = [sys.executable, "-m", "celery", "-A", "worker", "worker", "-P", "prefork", "-c", "1", "-n",
               f"{name}@%h", "--without-mingle", "--without-gossip", "-l", "INFO"]
        env = {**os.environ, **self.env, "GENROBUST_THREADS": "1"}
        env.pop("GENROBUST_API_KEY", None)
        self.procs[name] = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)

    def log(self, name: str) -> str:
        return (self.logdir / f"{name}.log").read_text(errors="replace")

    def wait_ready(self, *names: str, timeout: float = 90) -> None:
        end = time.time() + timeout
        for name in names:
            while " ready." not in self.log(name):
                if self.procs[name].poll() is not None or time.time() > end:
                    raise RuntimeError(f"worker {name} did not start:\n{self.log(name)[-3000:]}")
                time.sleep(0.2)

    def kill(self, name: str) -> None:
        os.killpg(self.procs[name].pid, signal.SIGKILL)
        self.procs[name].wait()

    def succeeded(self, name: str) -> set[str]:
        return set(re.findall(r"Task genrobust\.\w+\[([0-9a-f-]+)\] succeeded", self.log(name)))

    def received(self, name: str) -> set[str]:
        return set(re.findall(r"Task genrobust\.\w+\[([0-9a-f-]+)\] received", self.log(name)))

    def stop_all(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in self.procs.values():
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


@pytest.fixture(scope="package")
def workers(service_env, tmp_path_factory):
    w = Workers(service_env.env, tmp_path_factory.mktemp("worker-logs"))
    w.start("w1")
    w.start("w2")
    try:
        w.wait_ready("w1", "w2")
        yield w
    finally:
        w.stop_all()


@pytest.fixture(scope="package")
def client(service_env):
    from fastapi.testclient import TestClient

    from app.main import create_app

    with TestClient(create_app(embedded_worker=False), raise_server_exceptions=False) as c:
        yield c


def wait_job(client, job_id: str, timeout: float = 120, until=FINAL) -> dict:
    """Poll GET /jobs/{id} until its state is in ``until``; returns the record (progress values seen are in
    record['_progress'])."""
    seen, end = [], time.time() + timeout
    while True:
        r = client.get(f"/jobs/{job_id}")
        assert r.status_code == 200, r.text
        job = r.json()
        seen.append(job["progress"])
        if job["state"] in until:
            job["_progress"] = seen
            return job
        if time.time() > end:
            raise AssertionError(f"job {job_id} still {job['state']} after {timeout}s: {job}")
        time.sleep(0.2)
