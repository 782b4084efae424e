"""Peak memory as K grows: attacks and evaluations hold at most a fixed number of row-samples per pass.

    .venv/bin/python benchmarks/bench_memory.py [--attacks fgsm pgd deepfool classify] [--samples 10 100 1000]
        [--images 20] [--unbounded] [--service]

Library: each (attack, K) runs in a fresh process (``run_attack`` on the first ``--images`` Fashion-MNIST
test images of fmnist-gfz, one thread, attacker K = ``samples``, evaluator K = 10) and reports its peak RSS
above the loaded model and its time. ``classify`` is ``batched_logits`` of the images at K. ``--unbounded``
also runs each with the pass bounds lifted (one pass per call, as before they existed), side by side.

``--service``: starts ``genrobust serve`` (embedded, shipped defaults) and sends INLINE_CONCURRENCY (4)
concurrent inline ``/attack`` requests of FGSM with ``samples`` 1000 on 20 images (work 2,000, the inline
limit), then reports the server's peak RSS (VmHWM) and that every request was answered.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

from service_helpers import REPO, serving, test_images  # noqa: E402  (benchmarks/)

PARAMS = {"fgsm": {}, "pgd": {"steps": 3}, "deepfool": {"max_iter": 3}}  # brief: K = 1000 is slow


def _child(name: str, samples: int, images: int, unbounded: bool) -> None:
    """One measurement, in this (fresh) process: prints a JSON line."""
    import torch

    torch.set_num_threads(1)
    sys.path.insert(0, str(REPO))
    from genrobust import data
    from genrobust.attacks import make_attack
    from genrobust.evaluation import batched_logits
    from genrobust.models import classifier
    from genrobust.robustness import run_attack
    from genrobust.store import ModelStore

    if unbounded:
        for table in (classifier.PASS_UNITS, classifier.GRAD_PASS_UNITS):
            table["cpu"] = 10**12
    model = ModelStore().load("fmnist-gfz")[0].eval()
    ds = data.load("fashion-mnist", "test", images)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    if name == "classify":
        batched_logits(model, ds.images, samples, seed=0, batch_size=len(ds.images))
    else:
        run_attack(model, make_attack(name, {"samples": samples, **PARAMS.get(name, {})}), ds.images, ds.labels,
                   seed=0, eval_samples=10)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"name": name, "samples": samples, "unbounded": unbounded, "base_gb": base / 1e6,
                      "peak_gb": peak / 1e6, "above_model_gb": (peak - base) / 1e6,
                      "seconds": time.perf_counter() - t0}))


def _library(args) -> None:
    print(f"fmnist-gfz, {args.images} test images, one thread; peak RSS of a fresh process, and above its RSS "
          "once the model and images are loaded")
    print(f"{'what':<10}{'K':>6}  {'passes':<10}{'peak GB':>9}{'above model':>13}{'seconds':>9}")
    for name in args.attacks:
        for k in args.samples:
            for unbounded in ([False, True] if args.unbounded else [False]):
                out = subprocess.run([sys.executable, __file__, "--child", name, str(k), str(args.images),
                                      str(int(unbounded))], capture_output=True, text=True, cwd=REPO)
                if out.returncode:
                    print(f"{name:<10}{k:>6}  failed (exit {out.returncode}): {out.stderr.strip()[-300:]}")
                    continue
                r = json.loads(out.stdout.strip().splitlines()[-1])
                print(f"{name:<10}{k:>6}  {'one pass' if unbounded else 'bounded':<10}{r['peak_gb']:>9.2f}"
                      f"{r['above_model_gb']:>13.2f}{r['seconds']:>9.1f}", flush=True)


def _vm_hwm(pid: int) -> float:
    """The largest peak resident memory among a process and its children (the embedded worker), GB."""
    total = 0.0
    pids = [pid] + [int(p) for p in subprocess.run(["pgrep", "-P", str(pid)], capture_output=True,
                                                    text=True).stdout.split()]
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total = max(total, int(line.split()[1]) / 1e6)
        except FileNotFoundError:
            pass
    return total


def _service(args) -> None:
    import httpx

    images = test_images(20)
    with serving() as (url, server):
        body = {"model": "fmnist-gfz", "attack": "fgsm", "params": {"eps": 0.1, "samples": 1000},
                "images": images, "seed": 0}
        idle = _vm_hwm(server.pid)
        t0 = time.perf_counter()

        def send(i: int) -> int:
            return httpx.post(url + "/attack", json=body | {"seed": i}, timeout=1800).status_code

        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            codes = list(pool.map(send, range(4)))
        print(f"4 concurrent inline /attack (FGSM, samples 1000, 20 images): answers {codes} in "
              f"{time.perf_counter() - t0:.0f} s; server peak RSS {_vm_hwm(server.pid):.2f} GB "
              f"(after start-up {idle:.2f} GB)")

def main() -> None:
    if len(sys.argv) == 6 and sys.argv[1] == "--child":
        return _child(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5] == "1")
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--attacks", nargs="+", default=["fgsm", "pgd", "deepfool", "classify"])
    ap.add_argument("--samples", nargs="+", type=int, default=[10, 100, 1000])
    ap.add_argument("--images", type=int, default=20)
    ap.add_argument("--unbounded", action="store_true", help="also run each with one pass per call")
    ap.add_argument("--service", action="store_true", help="the inline /attack check instead")
    args = ap.parse_args()
    if min(args.samples) < 1 or args.images < 1:
        ap.error("--samples and --images must be at least 1")
    _service(args) if args.service else _library(args)


if __name__ == "__main__":
    main()
