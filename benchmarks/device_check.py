"""The device check: every stage of genrobust on one device, one line per step with its time and result.

    python benchmarks/device_check.py                       # the full check (meant for a CUDA machine, < 8 min)
    python benchmarks/device_check.py --device cpu --scale 0.01 --epochs 1   # a smoke run of the same steps

Steps: train DFZ and GFZ from scratch on the full training split with the shipped models' settings;
evaluate every shipped model on the full test set; every attack on 1,000 test images (ZOO on 100);
fit-detectors and detect; ``reproduce`` on the full test set (CW and ZOO on 1,000); the service's
/classify, /attack, /detect and a sweep job, the sweep's time against ``run_attack`` for the same work.
Models and reports are written to a temporary store: the shipped models are never touched. ``--scale``
shrinks every image count (for trying the script on a CPU); ``--skip`` leaves out steps by name.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import torch

from genrobust import data
from genrobust.attacks import ATTACKS, make_attack
from genrobust.detection import DETECTORS, fit_detectors, load_detector
from genrobust.device import device_info, resolve_device
from genrobust.evaluation import accuracy
from genrobust.models import ModelConfig
from genrobust.robustness import run_attack
from genrobust.settings import get_settings
from genrobust.store import ModelStore
from genrobust.study import StudyConfig, reproduce
from genrobust.training import TrainConfig, Trainer
from service_helpers import free_port  # noqa: E402  (benchmarks/)

STEPS = ["train", "evaluate", "attacks", "detectors", "reproduce", "service"]
T0 = time.perf_counter()


def line(step: str, seconds: float, result: str) -> None:
    print(f"[{time.perf_counter() - T0:7.1f}s] {step:<34} {seconds:8.2f}s  {result}", flush=True)


@contextmanager
def timed(step: str, results: list):
    t = time.perf_counter()
    out: dict = {}
    try:
        yield out
    except Exception as exc:  # a failed step is a result too; the check goes on
        out["result"] = f"FAILED {type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
    seconds = time.perf_counter() - t
    line(step, seconds, out.get("result", ""))
    results.append({"step": step, "seconds": round(seconds, 2), "result": out.get("result", "")})


def shipped_settings(name: str) -> tuple[ModelConfig, dict]:
    card = ModelStore().card(name)
    training = {k: v for k, v in card["training"].items() if k in TrainConfig.model_fields}
    return ModelConfig(**card["config"]), training


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default=None, help="auto (default), cpu, cuda or cuda:N")
    p.add_argument("--scale", type=float, default=1.0, help="fraction of every image count (smoke runs)")
    p.add_argument("--epochs", type=int, default=None, help="override the shipped epochs (smoke runs)")
    p.add_argument("--skip", default="", help=f"comma-separated steps to leave out: {','.join(STEPS)}")
    p.add_argument("--json", help="also write the step lines to this JSON file")
    args = p.parse_args()
    device = resolve_device(args.device)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    n = lambda k: max(1, int(k * args.scale))  # noqa: E731
    tmp = Path(tempfile.mkdtemp(prefix="genrobust-device-check-"))
    os.environ["GENROBUST_MODEL_DIR"] = str(tmp / "models")
    get_settings.cache_clear()
    store = ModelStore()
    info = device_info(device)
    print(f"genrobust device check on {info['device']} ({info['name']}), torch {torch.__version__}, "
          f"scale {args.scale}, scratch store {tmp}", flush=True)
    results: list[dict] = []

    if "train" not in skip:
        for short, shipped in (("dfz", "fmnist-dfz"), ("gfz", "fmnist-gfz")):
            with timed(f"train {short} (shipped settings)", results) as r:
                config, training = shipped_settings(shipped)
                training |= {"limit": n(55_000) if args.scale < 1 else None, "test_limit": n(10_000)}
                if args.epochs:
                    training["epochs"] = args.epochs
                card = Trainer(config, TrainConfig(**training), f"check-{short}", store=store, progress=False,
                               device=device).fit()
                r["result"] = (f"test acc {card['test_accuracy']['accuracy']:.4f} (n {card['test_accuracy']['n']}, "
                               f"{card['epochs']} epochs; shipped {ModelStore().card(shipped)['test_accuracy']['accuracy']:.4f})")

    test = data.load("fashion-mnist", "test", n(10_000))
    if "evaluate" not in skip:
        for name in [m for m in store.names() if m.startswith("fmnist-")]:
            with timed(f"evaluate {name}", results) as r:
                model, card = store.load(name, device)
                acc = accuracy(model, test.images, test.labels, 10, seed=0)
                r["result"] = f"acc {acc['accuracy']:.4f} (n {acc['n']}, card {card['test_accuracy']['accuracy']:.4f})"

    if "attacks" not in skip:
        model, _ = store.load("fmnist-gfz", device)
        for name in ATTACKS:
            k = n(100) if name == "zoo" else n(1000)
            with timed(f"attack {name} gfz x{k}", results) as r:
                rep, _ = run_attack(model, make_attack(name), test.images[:k], test.labels[:k], seed=0,
                                    model_name="fmnist-gfz")
                r["result"] = (f"success {rep.success_rate if rep.success_rate is None else round(rep.success_rate, 3)}"
                               f", {rep.seconds_per_image * 1000:.2f} ms/image")

    if "detectors" not in skip:
        with timed("fit-detectors gfz", results) as r:
            rec = fit_detectors(store, "fmnist-gfz", limit=n(55_000) if args.scale < 1 else None, device=device)
            r["result"] = f"fitted on {rec['n_train']}, calibrated on {rec['n_calibrate']}"
        with timed("detect gfz (clean test)", results) as r:
            rates = {}
            for d in DETECTORS:
                det = load_detector(store, "fmnist-gfz", d, device=device)
                rates[d] = det.detect(test.images, seed=1).is_adversarial.double().mean().item()
            r["result"] = "FPR on clean " + ", ".join(f"{d} {v:.3f}" for d, v in rates.items()) + " (target 0.05)"

    if "reproduce" not in skip:
        for attacks, k in ((["fgsm", "deepfool", "truncated-deepfool"], n(10_000)), (["cw", "zoo"], n(1000))):
            with timed(f"reproduce {'+'.join(attacks)} x{k}", results) as r:
                res = reproduce(StudyConfig(models=["fmnist-dfz", "fmnist-gfz"], attacks=attacks, limit=k,
                                            clean_limit=min(k, n(10_000)), out=tmp / f"report-{attacks[0]}",
                                            fit_limit=n(55_000) if args.scale < 1 else None),
                                store, device=device)
                r["result"] = f"{len(res['tables'])} tables, report in {tmp / f'report-{attacks[0]}'}"

    if "service" not in skip:
        service_steps(device, n, results, tmp)

    if args.json:
        Path(args.json).write_text(json.dumps({"device": info, "scale": args.scale, "steps": results}, indent=2))
    failed = [r["step"] for r in results if r["result"].startswith("FAILED")]
    print(f"done in {time.perf_counter() - T0:.0f}s; {len(failed)} failed{': ' + ', '.join(failed) if failed else ''}")
    return 1 if failed else 0


# ------------------------------------------------------------------ the service
def _call(url: str, body: dict | None = None, method: str | None = None) -> dict:
    req = urllib.request.Request(url, data=None if body is None else json.dumps(body).encode(),
                                 headers={"content-type": "application/json"}, method=method)
    with urllib.request.urlopen(req, timeout=600) as resp:
        return json.loads(resp.read())


def service_steps(device: torch.device, n, results: list, tmp: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = os.environ | {"GENROBUST_DEVICE": str(device), "GENROBUST_DATA_DIR": str(get_settings().data_dir),
                        "GENROBUST_MODEL_DIR": str(tmp / "service-models")}
    env.pop("GENROBUST_REDIS_URL", None)
    server = subprocess.Popen([sys.executable, "-c", f"from app.main import serve; serve(port={port}, access_log=False)"],
                              env=env, stdout=subprocess.DEVNULL, stderr=open(tmp / "service.log", "w"))
    try:
        with timed("service start", results) as r:
            for _ in range(300):
                try:
                    r["result"] = f"health {_call(base + '/health')['status']}"
                    break
                except OSError:
                    time.sleep(0.2)
        test = data.load("fashion-mnist", "test", 64)
        img = test.images[:16].squeeze(1).tolist()
        with timed("service /classify x100", results) as r:
            for i in range(100):
                out = _call(base + "/classify", {"model": "fmnist-gfz", "images": img[i % 16: i % 16 + 1], "seed": i})
            r["result"] = f"last prediction {out['predictions'][0]}"
        with timed("service /attack fgsm x16", results) as r:
            out = _call(base + "/attack", {"model": "fmnist-gfz", "attack": "fgsm", "images": img,
                                           "labels": test.labels[:16].tolist()})
            r["result"] = f"success {sum(out['success'])}/16"
        with timed("service /detect x3 detectors", results) as r:
            flags = {d: sum(_call(base + "/detect", {"model": "fmnist-gfz", "detector": d, "images": img})["is_adversarial"])
                     for d in DETECTORS}
            r["result"] = "flagged of 16 clean: " + ", ".join(f"{d} {v}" for d, v in flags.items())
        k = n(1000)
        attack = {"attack": "deepfool", "params": {}}
        with timed(f"service sweep deepfool x{k}", results) as r:
            job = _call(base + "/jobs/sweep", {"models": ["fmnist-gfz"], "attacks": [attack], "limit": k, "seed": 0})
            while (rec := _call(f"{base}/jobs/{job['job_id']}"))["state"] in ("queued", "running"):
                time.sleep(0.1)
            chunks = rec["request"].get("chunk_sizes")
            r["result"] = f"{rec['state']} (chunks of {chunks[0] if chunks else '?'} images)"
        sweep_seconds = results[-1]["seconds"]
        with timed(f"library run_attack deepfool x{k}", results) as r:
            model, _ = ModelStore().load("fmnist-gfz", device)
            split = data.load("fashion-mnist", "test", k)
            t = time.perf_counter()
            run_attack(model, make_attack("deepfool"), split.images.to(device), split.labels, seed=0)
            r["result"] = (f"sweep job / run_attack = {sweep_seconds / (time.perf_counter() - t):.2f}x "
                           f"(target <= 1.3x)")
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    sys.exit(main())
