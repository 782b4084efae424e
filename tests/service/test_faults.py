"""Faults, with the real components: corrupt files in the store, a full or read-only disk under training and
detector fitting, Redis stopped and started again mid-sweep, `genrobust serve` SIGKILLed mid-job."""

from __future__ import annotations

import gc
import hashlib
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from genrobust import cli
from genrobust.detection import fit_detectors
from genrobust.models import ModelConfig
from genrobust.settings import get_settings
from genrobust.store import CorruptStoreFile, ModelStore, StoreWriteError
from genrobust.training import TrainConfig, Trainer
from tests.conftest import TINY
from tests.service.conftest import FINAL, Workers, reset_service_config, save_tiny, wait_job
from tests.service.test_embedded import X, Server, _free_port

TRAIN = TrainConfig(epochs=2, limit=200, batch_size=100, test_limit=50)


def _digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _copy_model(store: ModelStore, src: str, dst: str) -> None:
    shutil.copy(store.root / f"{src}.safetensors", store.root / f"{dst}.safetensors")
    (store.root / f"{dst}.json").write_text(json.dumps(store.card(src) | {"name": dst}))
    det = store.root / "detectors" / f"{src}.json"
    if det.is_file():
        shutil.copy(det, store.root / "detectors" / f"{dst}.json")


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


# ------------------------------------------------------------------ corrupt files
@pytest.fixture
def broken_models(service_env):
    """Copies of tiny-gfz in the shared store with a truncated card, checkpoint or detectors file."""
    store = service_env.store
    for name in ("bad-card", "bad-weights", "bad-detectors"):
        _copy_model(store, "tiny-gfz", name)
    _truncate(store.root / "bad-card.json")
    _truncate(store.root / "bad-weights.safetensors")
    _truncate(store.root / "detectors" / "bad-detectors.json")
    yield store
    for p in store.root.rglob("bad-*"):
        p.unlink()


def test_corrupt_files_are_clear_4xx_naming_the_file_and_the_rest_is_served(client, broken_models, capsys, caplog):
    listed = client.get("/models")
    assert listed.status_code == 200
    names = {c["name"] for c in listed.json()}
    assert {"tiny-gfz", "bad-weights", "bad-detectors"} <= names and "bad-card" not in names

    r = client.get("/models/bad-card")
    assert r.status_code == 422 and "bad-card.json" in r.json()["detail"] and "corrupt" in r.json()["detail"]
    r = client.post("/classify", json={"model": "bad-card", "images": X})
    assert r.status_code == 422 and "bad-card.json" in r.json()["detail"]
    r = client.post("/classify", json={"model": "bad-weights", "images": X})
    assert r.status_code == 422 and "bad-weights.safetensors" in r.json()["detail"], r.text
    r = client.post("/detect", json={"model": "bad-detectors", "images": X})
    assert r.status_code == 422 and "detectors/bad-detectors.json" in r.json()["detail"], r.text
    # the rest of the store is still served
    assert client.post("/classify", json={"model": "tiny-gfz", "images": X}).status_code == 200
    assert client.post("/detect", json={"model": "tiny-gfz", "images": X}).status_code == 200
    assert client.post("/classify", json={"model": "bad-detectors", "images": X}).status_code == 200

    # the CLI: the listing skips the broken card with a warning naming it (a log warning: stderr when run
    # from a shell); loading names the file
    caplog.clear()
    assert cli.main(["models"]) == 0
    assert "tiny-gfz" in capsys.readouterr().out and "bad-card.json" in caplog.text
    assert cli.main(["evaluate", "bad-weights", "--limit", "5"]) == 2
    err = capsys.readouterr().err
    assert "bad-weights.safetensors" in err and "Traceback" not in err


def test_a_corrupt_run_state_names_the_file_and_restart_discards_it(env):
    store = ModelStore()
    run = store.root / "runs" / "tiny-run"
    run.mkdir(parents=True)
    (run / "state.json").write_text('{"model_config": {"struct')
    with pytest.raises(CorruptStoreFile, match="runs/tiny-run/state.json"):
        Trainer(ModelConfig(structure="GFZ", **TINY), TRAIN, "tiny-run", store=store, progress=False)
    Trainer(ModelConfig(structure="GFZ", **TINY), TRAIN, "tiny-run", store=store, progress=False, restart=True)


# ------------------------------------------------------------------ full and read-only disk
@pytest.fixture
def small_disk(tmp_path):
    """A 6 MiB tmpfs: room for the tiny models and runs, and a real ENOSPC once filled."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mnt)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root): the full-disk tests need a real small filesystem")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(disk: Path) -> Path:
    filler = disk / "filler"
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass
    return filler


def test_full_disk_during_training_and_fitting_leaves_the_store_intact_and_resumable(small_disk, fmnist_root,
                                                                                      monkeypatch):
    monkeypatch.setenv("GENROBUST_DATA_DIR", str(fmnist_root))
    get_settings.cache_clear()
    store = ModelStore(small_disk / "models")
    save_tiny(store)
    fit_detectors(store, "tiny-gfz", samples=2, limit=100)
    before = _digests(store.root)
    config = ModelConfig(structure="GFZ", **TINY)
    filler = None

    def fill_after_first_epoch(epoch, epochs):
        nonlocal filler
        if epoch == 1:
            filler = _fill(small_disk)

    trainer = Trainer(config, TRAIN, "tiny-gfz", store=store, progress=False, on_epoch=fill_after_first_epoch)
    with pytest.raises(StoreWriteError, match="No space left on device") as err:
        trainer.fit()
    assert str(small_disk) in str(err.value)
    # the previously saved models, weights and detectors are intact or the epoch-1 model written whole
    after = _digests(store.root)
    assert not [p for p in after if p.endswith(".tmp")]
    for other in ("tiny-dfz", "tiny-dfx"):
        assert ModelStore(store.root).load(other)[1] == store.card(other)
        assert after[f"{other}.safetensors"] == before[f"{other}.safetensors"]
    assert after["detectors/tiny-gfz.json"] == before["detectors/tiny-gfz.json"]
    ModelStore(store.root).load("tiny-gfz")  # whatever epoch it holds, it loads

    # detector fitting on the full disk: a clear error, the fitted file unchanged
    with pytest.raises(StoreWriteError, match="detectors/tiny-dfz.json|No space"):
        fit_detectors(store, "tiny-dfz", samples=2, limit=100)
    assert not (store.root / "detectors" / "tiny-dfz.json").exists()
    with pytest.raises(StoreWriteError):
        fit_detectors(store, "tiny-gfz", samples=2, limit=100, seed=5)
    assert _digests(store.root)["detectors/tiny-gfz.json"] == before["detectors/tiny-gfz.json"]

    # space again: the run resumes from its last saved epoch and saves the next (stopped there: the final
    # K = 10 evaluation of 5,000 validation images is not what this test is about)
    filler.unlink()

    class Stop(Exception):
        pass

    def stop(epoch, epochs):
        raise Stop()

    again = Trainer(config, TRAIN, "tiny-gfz", store=store, progress=False, on_epoch=stop)
    assert again.resumed_from == 1
    with pytest.raises(Stop):
        again.fit()
    state = json.loads((store.root / "runs" / "tiny-gfz" / "state.json").read_text())["state"]
    assert state["epoch"] == 2 and [h["epoch"] for h in state["history"]] == [1, 2]
    fit_detectors(store, "tiny-dfz", samples=2, limit=100)
    get_settings.cache_clear()


def test_read_only_store_is_a_clear_cli_error(small_disk, fmnist_root, monkeypatch, capsys):
    monkeypatch.setenv("GENROBUST_DATA_DIR", str(fmnist_root))
    monkeypatch.setenv("GENROBUST_MODEL_DIR", str(small_disk / "models"))
    get_settings.cache_clear()
    save_tiny(ModelStore())
    before = _digests(small_disk / "models")
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    try:
        rc = cli.main(["fit-detectors", "tiny-dfz", "--limit", "50", "--samples", "2"])
        err = capsys.readouterr().err
        assert rc == 2 and "Read-only file system" in err and "Traceback" not in err
        rc = cli.main(["train", "gfz", "--name", "tiny-gfz", "--epochs", "1", "--limit", "100", "--no-progress",
                       "--hidden", "32", "--latent-dim", "8", "--enc-channels", "4,8,8", "--dec-channels", "8,8,4"])
        err = capsys.readouterr().err
        assert rc == 2 and "cannot write" in err and "Read-only file system" in err
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(small_disk)], check=True)
        get_settings.cache_clear()
    assert _digests(small_disk / "models") == before


# ------------------------------------------------------------------ Redis stopped and started mid-sweep
class OwnRedis:
    """A redis-server of this test on a free port (never the shared one), with an append-only file so its
    data survives a restart, as in docker-compose."""

    def __init__(self, tmp: Path):
        self.port, self.dir = _free_port(), tmp
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir",
                                      str(self.dir), "--appendonly", "yes", "--appendfsync", "always",
                                      "--save", ""], stdout=subprocess.DEVNULL)
        import redis

        end = time.time() + 10
        while True:
            try:
                redis.Redis(port=self.port, socket_connect_timeout=0.5).ping()
                return
            except redis.exceptions.ConnectionError:
                assert time.time() < end, "redis-server did not start"
                time.sleep(0.05)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)  # a clean shutdown, the append-only file flushed
        self.proc.wait(10)

    def close(self) -> None:
        """Stop for good, once the service points elsewhere: the Celery backend made for this server is dropped
        and collected while the server still runs. Celery's Redis backend holds every submitted task's result
        (a chord's header) until the task is done, which in these tests it never is; collected after the server
        is gone, each unsubscribes with 20 s of retries in whatever thread the GC runs in: a later test's
        server, past its client's timeout (a flaky fuzz failure)."""
        reset_service_config()
        gc.collect()
        if self.proc.poll() is None:
            self.stop()


@pytest.fixture
def own_redis(tmp_path, service_env, monkeypatch):
    r = OwnRedis(tmp_path)
    r.start()
    monkeypatch.setenv("GENROBUST_REDIS_URL", r.url)
    reset_service_config()
    yield r
    monkeypatch.undo()
    r.close()


def test_redis_down_mid_sweep_is_503_then_recovers_and_the_sweep_finishes(own_redis, service_env, tmp_path):
    from fastapi.testclient import TestClient

    from app.main import create_app

    workers = Workers({**service_env.env, "GENROBUST_REDIS_URL": own_redis.url}, tmp_path)
    workers.start("r1")
    try:
        workers.wait_ready("r1")
        body = {"models": ["tiny-gfz"], "limit": 40, "chunk_size": 5, "seed": 1, "eval_samples": 2,
                "attacks": [{"attack": "pgd", "params": {"steps": 20, "samples": 4}}]}
        with TestClient(create_app(embedded_worker=False), raise_server_exceptions=False) as client:
            r = client.post("/jobs/sweep", json=body)
            assert r.status_code == 202, r.text
            job_id = r.json()["job_id"]
            job = wait_job(client, job_id, timeout=120, until=("running",) + FINAL)
            assert job["state"] == "running", job
            own_redis.stop()
            t0 = time.time()
            for path in (f"/jobs/{job_id}", "/jobs", "/health"):
                r = client.get(path)
                assert r.status_code == 503, (path, r.text)
                assert "GENROBUST_REDIS_URL" in r.text or path == "/health"
            r = client.post("/jobs/sweep", json=body)
            assert r.status_code == 503 and r.headers["retry-after"] == "5", r.text
            assert time.time() - t0 < 5  # answered at once, not after a hang
            # inline work needs no Redis
            assert client.post("/classify", json={"model": "tiny-gfz", "images": X}).status_code == 200
            time.sleep(3)
            own_redis.start()
            assert client.get("/health").status_code == 200  # recovered without a restart
            job = wait_job(client, job_id, timeout=150)
        assert job["state"] == "succeeded", job
        assert job["result"]["reports"][0]["n"] == 40
    finally:
        workers.stop_all()


# ------------------------------------------------------------------ genrobust serve SIGKILLed mid-job
@pytest.fixture
def embedded_env(tmp_path, fmnist_root):
    env = {k: v for k, v in os.environ.items() if not k.startswith("GENROBUST_")}
    env.update(GENROBUST_DATA_DIR=str(fmnist_root), GENROBUST_MODEL_DIR=str(tmp_path / "models"),
               GENROBUST_THREADS="1")
    save_tiny(ModelStore(tmp_path / "models"))
    return env


def _kill(server: Server) -> None:
    os.killpg(server.proc.pid, signal.SIGKILL)  # no clean-up of any kind
    server.proc.wait()
    server.http.close()


def _wait_epoch(state: Path, at_least: int, server: Server, timeout: float = 150) -> int:
    end = time.time() + timeout
    while True:
        try:
            epoch = json.loads(state.read_text())["state"]["epoch"]
        except (OSError, ValueError):  # not written yet (written atomically: never partial)
            epoch = 0
        if epoch >= at_least:
            return epoch
        assert time.time() < end and server.proc.poll() is None, server.log.read_text()[-2000:]
        time.sleep(0.1)


def test_serve_killed_mid_training_resumes_the_job_from_its_last_epoch(embedded_env, tmp_path):
    """SIGKILL after the first epoch; the restarted service resumes the job from the saved epoch (not from the
    start) and trains the rest. (Not waited for: the final K = 10 evaluation of 5,000 validation images.)"""
    log = tmp_path / "serve.log"
    body = {"config": ModelConfig(structure="GFZ", **TINY).model_dump(mode="json"), "name": "tiny-resumed",
            "training": {"epochs": 3, "limit": 300, "val_samples": 1, "test_limit": 50}}
    state = tmp_path / "models" / "runs" / "tiny-resumed" / "state.json"
    server = Server(embedded_env, log)
    http = server.__enter__()
    try:
        r = http.post("/jobs/train", json=body)
        assert r.status_code == 202, r.text
        job_id = r.json()["job_id"]
        saved = _wait_epoch(state, 1, server)
    finally:
        _kill(server)
    assert saved < 3, "the run finished before it could be interrupted"
    server = Server(embedded_env, log)
    http = server.__enter__()
    try:
        job = http.get(f"/jobs/{job_id}").json()
        assert job["state"] in ("queued", "running") and job["error"] is None, job
        assert _wait_epoch(state, 3, server) == 3
        job = http.get(f"/jobs/{job_id}").json()
        assert job["state"] in ("running", "succeeded") and job["progress"] >= 0.75, job
    finally:
        _kill(server)
    text = log.read_text()
    assert "was interrupted by a restart: resuming it from its last saved epoch" in text
    # resumed, not started over: no epoch ran twice (one may have been saved just before the kill, unprinted)
    counts = [text.count(f"epoch {e}/3:") for e in (1, 2, 3)]
    assert max(counts) == 1 and counts[2] == 1, text[-3000:]


# ------------------------------------------------------------------ overload: refused at once, with Retry-After
def test_batcher_admits_up_to_its_bound_and_refuses_the_rest_at_once():
    import asyncio

    from app.batching import Batcher, Overloaded

    def slow(model, samples, requests):
        time.sleep(0.3)
        return [torch.zeros(len(x), 10) for x, _ in requests]

    async def go():
        b = Batcher(slow, wait_s=0.01, max_images=100, queue_images=3)
        await b.start()

        async def one(i):
            t0 = time.perf_counter()
            try:
                await b.logits("m", 10, i, torch.zeros(1, 1, 28, 28))
                return "ok", time.perf_counter() - t0
            except Overloaded as exc:
                assert "GENROBUST_CLASSIFY_QUEUE_IMAGES" in str(exc)
                return "refused", time.perf_counter() - t0

        out = await asyncio.gather(*(one(i) for i in range(6)))
        # a lone request larger than the bound is still served
        big = await b.logits("m", 10, 0, torch.zeros(5, 1, 28, 28))
        await b.stop()
        return out, big

    out, big = asyncio.run(go())
    assert [o for o, _ in out].count("ok") == 3 and [o for o, _ in out].count("refused") == 3
    assert max(t for o, t in out if o == "refused") < 0.1  # at once, not after the pass
    assert big[0].shape == (5, 10)

    # the wait bound: refused when the images ahead would take longer than max_wait_s
    b = Batcher(slow, wait_s=0.01, max_images=100, max_wait_s=0.5)
    b.pending, b.seconds_per_image = 40, 0.02
    with pytest.raises(Overloaded, match="GENROBUST_CLASSIFY_MAX_WAIT_MS"):
        b.check(1)
    b.pending = 10
    b.check(1)


def test_batcher_passes_are_bounded_in_time_so_the_next_is_always_queued():
    import asyncio

    from app.batching import PASS_SHARE, Batcher

    passes = []

    def timed(model, samples, requests):  # 10 ms per image at K = 10, so the pass-time estimate stays put
        n = sum(len(x) for x, _ in requests)
        passes.append(n * samples / 10)
        time.sleep(0.01 * n * samples / 10)
        return [torch.full((len(x), 10), float(seed)) for x, seed in requests]

    async def go(max_wait_s):
        b = Batcher(timed, wait_s=0.02, max_images=1000, max_wait_s=max_wait_s)
        b.seconds_per_image = 0.01  # as if timed by an earlier pass
        await b.start()
        outs = await asyncio.gather(*(b.logits("m", 10, i, torch.zeros(1, 1, 28, 28)) for i in range(60)))
        k100 = await asyncio.gather(*(b.logits("m", 100, i, torch.zeros(1, 1, 28, 28)) for i in range(6)))
        await b.stop()
        return outs + k100

    outs = asyncio.run(go(max_wait_s=1.0))
    limit = PASS_SHARE * 1.0 / 0.01  # 25 images at K = 10 per pass
    assert sum(passes) == 60 + 6 * 10 and max(passes) <= limit and len(passes) >= 60 / limit + 2
    assert [int(o[0, 0]) for o, _ in outs] == list(range(60)) + list(range(6))  # each its own answer
    # without a wait bound a pass takes what is queued, up to GENROBUST_BATCH_MAX_IMAGES
    passes.clear()
    asyncio.run(go(max_wait_s=0.0))
    assert max(passes) > limit


def test_answer_rate_is_not_capped_by_a_buffer():
    from app.batching import Batcher

    b = Batcher(lambda *a: None, wait_s=0.01, max_images=10)
    now = time.monotonic()
    b._answered.extend([now - 5.0] * 100 + [now - 0.5] * 2000)  # a fast (GPU) server: 1,000 answers/s
    assert b.answer_rate(window=2.0) == 1000.0 and len(b._answered) == 2000  # old ones dropped


def test_retry_after_is_when_a_refused_clients_turn_is_likely():
    from app.batching import MAX_RETRY_AFTER_S, WINDOW_S, Batcher

    assert Batcher(lambda *a: None, wait_s=0.01, max_images=10).refuse("x").retry_after == 1  # nothing to go by
    b = Batcher(lambda *a: None, wait_s=0.01, max_images=10)
    now = time.monotonic()
    b._answered.extend([now - 0.5] * int(50 * WINDOW_S))  # answering 50 requests/s

    def told(clients: int, seconds: int, age: float = 0.5):
        # `clients` refusals in the window, each told to wait `seconds`: by Little's law clients x seconds /
        # window are waiting out a refusal at any moment
        for _ in range(clients):
            b._refused.append((now - age, seconds))
            b._told += seconds

    told(300, 5, age=WINDOW_S + 1)  # older than the window: forgotten
    told(100, 2)  # 100 waiting, answered at 50/s: a turn in about 2 s
    assert b.refuse("x").retry_after == 2
    told(400, 10)  # hopelessly overloaded: capped
    exc = b.refuse("x")
    assert exc.retry_after == MAX_RETRY_AFTER_S and str(exc) == "x"


def test_overload_answers_503_with_retry_after_naming_the_setting(client):
    import threading

    # /classify with the queue full: refused before the body is parsed
    batcher = client.app.state.batcher
    batcher.pending += 10**6
    try:
        r = client.post("/classify", json={"model": "tiny-gfz", "images": X})
    finally:
        batcher.pending -= 10**6
    assert r.status_code == 503 and r.headers["retry-after"] == "1"
    assert "GENROBUST_CLASSIFY_QUEUE_IMAGES" in r.json()["detail"]
    assert client.post("/classify", json={"model": "tiny-gfz", "images": X}).status_code == 200

    # inline attacks: with every slot busy, the next is refused at once
    inline = client.app.state.inline
    slow = {"model": "tiny-gfz", "attack": "cw", "images": X, "labels": [1],
            "params": {"steps": 300, "binary_steps": 1, "samples": 1, "accept_draws": 1}}
    held = [inline._sem.acquire(blocking=False) for _ in range(inline.slots - 1)]
    try:
        first = threading.Thread(target=lambda: client.post("/attack", json=slow))
        first.start()
        end = time.time() + 30
        while inline._sem._value > 0:
            assert time.time() < end and first.is_alive()
            time.sleep(0.01)
        t0 = time.perf_counter()
        r = client.post("/detect", json={"model": "tiny-gfz", "images": X})
        assert r.status_code == 503 and r.headers["retry-after"] == "1" and time.perf_counter() - t0 < 2
        assert "GENROBUST_INLINE_CONCURRENCY" in r.json()["detail"]
        first.join(60)
    finally:
        for ok in held:
            if ok:
                inline._sem.release()
    assert client.post("/detect", json={"model": "tiny-gfz", "images": X}).status_code == 200
