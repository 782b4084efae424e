"""The service under load: /classify throughput and latency with 16 concurrent clients (dynamic batching),
and /attack FGSM latency for one image.

    .venv/bin/python benchmarks/bench_service.py [--seconds 15] [--clients 16] [--images 1]

Starts `genrobust serve` (embedded mode, a throw-away data dir, the shipped models) on a free port and
drives it with asyncio + httpx from this process. Client and server share the machine's cores, so the
figures include the client's JSON and HTTP work. Latencies are of the 200s; a client answered 503 waits
Retry-After and counts it (benchmarks/bench_load.py measures overload properly).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time

import httpx
import numpy as np
from service_helpers import serving, test_images  # noqa: E402  (benchmarks/)


async def _classify_load(url: str, model: str, clients: int, images: list, per_request: int, seconds: float):
    latencies, batch_sizes, infer_ms, done, refused = [], [], [], 0, 0
    stop = time.perf_counter() + seconds

    async def client(i: int, http: httpx.AsyncClient):
        nonlocal done, refused
        k = i
        while time.perf_counter() < stop:
            body = {"model": model, "images": images[k % len(images): k % len(images) + per_request],
                    "samples": 10, "seed": k}
            t0 = time.perf_counter()
            r = await http.post("/classify", json=body)
            if r.status_code == 503:  # backpressure: come back when told
                refused += 1
                await asyncio.sleep(float(r.headers.get("Retry-After", 1)))
                continue
            r.raise_for_status()
            latencies.append(time.perf_counter() - t0)
            batch_sizes.append(int(r.headers["X-Batch-Images"]))
            infer_ms.append(float(r.headers["X-Inference-Ms"]))
            done += per_request
            k += clients

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as http:
        await http.post("/classify", json={"model": model, "images": images[:1]})  # load the model
        t0 = time.perf_counter()
        await asyncio.gather(*(client(i, http) for i in range(clients)))
        wall = time.perf_counter() - t0
    lat = np.array(latencies) * 1000
    return {"model": model, "images/s": done / wall, "requests": len(lat), "503s": refused, "p50 ms": np.percentile(lat, 50),
            "p99 ms": np.percentile(lat, 99), "mean batch": statistics.mean(batch_sizes),
            "mean pass ms": statistics.mean(infer_ms)}


def _attack_latency(url: str, model: str, image: list, n: int = 20) -> dict:
    with httpx.Client(base_url=url, timeout=60) as http:
        body = {"model": model, "attack": "fgsm", "params": {"eps": 0.1}, "images": [image], "labels": [9]}
        http.post("/attack", json=body).raise_for_status()  # warm-up
        lat, inner = [], []
        for _ in range(n):
            t0 = time.perf_counter()
            r = http.post("/attack", json=body)
            lat.append((time.perf_counter() - t0) * 1000)
            inner.append(r.json()["seconds"] * 1000)
    return {"model": model, "p50 ms": np.percentile(lat, 50), "p99 ms": np.percentile(lat, 99),
            "attack ms (p50)": np.percentile(inner, 50)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=15)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--images", type=int, default=1, help="images per /classify request")
    ap.add_argument("--models", default="fmnist-gfz,fmnist-dfz")
    ap.add_argument("--threads", type=int, help="GENROBUST_THREADS for the server (default: all cores)")
    args = ap.parse_args()

    images = test_images(200)
    with serving({"GENROBUST_THREADS": str(args.threads)} if args.threads else None, with_data=True) as (url, _):
        import torch
        print(f"torch {torch.__version__}, {os.cpu_count()} cores, server threads {args.threads or 'all'}; "
              f"{args.clients} clients x {args.images} "
              f"image(s) per request, K=10, {args.seconds:.0f}s per model")
        print(f"{'model':<12}{'images/s':>10}{'requests':>10}{'503s':>6}{'p50 ms':>9}{'p99 ms':>9}{'mean batch':>12}"
              f"{'mean pass ms':>14}")
        for model in args.models.split(","):
            r = asyncio.run(_classify_load(url, model, args.clients, images, args.images, args.seconds))
            print(f"{r['model']:<12}{r['images/s']:>10.0f}{r['requests']:>10}{r['503s']:>6}{r['p50 ms']:>9.0f}"
                  f"{r['p99 ms']:>9.0f}{r['mean batch']:>12.1f}{r['mean pass ms']:>14.1f}")
        print("\n/attack FGSM (eps 0.1, K=10), one image, sequential requests")
        for model in args.models.split(","):
            r = _attack_latency(url, model, images[0])
            print(f"{r['model']:<12} p50 {r['p50 ms']:.0f} ms  p99 {r['p99 ms']:.0f} ms  "
                  f"(attack itself {r['attack ms (p50)']:.0f} ms)")

if __name__ == "__main__":
    main()
