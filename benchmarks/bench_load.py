"""/classify under overload: does the service shed what it cannot serve (503 + Retry-After at once) and keep
serving the rest quickly, instead of letting every request wait?

    .venv/bin/python benchmarks/bench_load.py [--requests 10000] [--concurrency 32 128 256] [--model fmnist-gfz]

Starts `genrobust serve` (embedded mode, a throw-away data dir, the shipped models, GENROBUST_THREADS=1)
pinned to core 0 with taskset and drives it from this process pinned to the other cores (when the machine
has more than one), with asyncio + httpx: ``--requests`` one-image /classify requests (JSON lists, K = 10) at
each concurrency. A client answered 503 waits the Retry-After seconds before its next request, as a
well-behaved client does (``--no-backoff``: it retries at once). Every attempt counts as a request. Reports
per concurrency: 200s, 503s, errors (anything else: other statuses, dropped connections, timeouts), the
throughput and latency percentiles of the 200s, and the machine's load average before and after.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from service_helpers import REPO, free_port, test_images  # noqa: E402  (benchmarks/)


async def _run(url: str, model: str, images: list, total: int, concurrency: int, backoff: bool,
               timeout: float) -> dict:
    lat200, statuses, errors, next_i = [], {}, [], 0
    bodies = [json.dumps({"model": model, "images": [im], "samples": 10, "seed": i}).encode()
              for i, im in enumerate(images)]

    async def client(http: httpx.AsyncClient):
        nonlocal next_i
        while next_i < total:
            i = next_i
            next_i += 1
            t0 = time.perf_counter()
            try:
                r = await http.post("/classify", content=bodies[i % len(bodies)],
                                    headers={"content-type": "application/json"})
            except httpx.HTTPError as exc:  # dropped connection, timeout: what must never happen
                errors.append(f"{type(exc).__name__}: {exc}")
                continue
            dt = time.perf_counter() - t0
            statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
            if r.status_code == 200:
                lat200.append(dt)
            elif r.status_code == 503:
                if "retry-after" not in r.headers:
                    errors.append("503 without Retry-After")
                if backoff:
                    await asyncio.sleep(float(r.headers.get("retry-after", 1)) * random.uniform(0.5, 1.5))
            else:
                errors.append(f"status {r.status_code}: {r.text[:200]}")

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits) as http:
        t0 = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    lat = np.array(lat200) * 1000 if lat200 else np.zeros(1)
    return {"concurrency": concurrency, "requests": total, "200": statuses.get(200, 0),
            "503": statuses.get(503, 0), "errors": len(errors), "error_examples": sorted(set(errors))[:3],
            "wall_s": round(wall, 1), "ok_per_s": round(statuses.get(200, 0) / wall, 1),
            "p50_ms": round(float(np.percentile(lat, 50)), 1), "p99_ms": round(float(np.percentile(lat, 99)), 1),
            "max_ms": round(float(lat.max()), 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=10_000)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[32, 128, 256])
    ap.add_argument("--model", default="fmnist-gfz")
    ap.add_argument("--no-backoff", action="store_true", help="retry a 503 at once instead of after Retry-After")
    ap.add_argument("--timeout", type=float, default=60.0, help="client timeout per request, s")
    ap.add_argument("--server-env", nargs="*", default=[], metavar="KEY=VALUE", help="extra GENROBUST_* settings")
    args = ap.parse_args()

    cores = sorted(os.sched_getaffinity(0))
    server_cores, client_cores = ([cores[0]], cores[1:]) if len(cores) > 1 else (cores, cores)
    tmp = Path(tempfile.mkdtemp(prefix="genrobust-load-"))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("GENROBUST_")}
    # the embedded broker's files go to the throw-away data dir; /classify reads no dataset
    env.update(GENROBUST_DATA_DIR=str(tmp), GENROBUST_MODEL_DIR=str(tmp / "models"), GENROBUST_THREADS="1")
    env.update(dict(kv.split("=", 1) for kv in args.server_env))
    cmd = ["taskset", "-c", ",".join(map(str, server_cores)), sys.executable, "-m", "genrobust.cli", "serve",
           "--port", str(port), "--no-access-log"]
    log = open(tmp / "serve.log", "w")
    server = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    os.sched_setaffinity(0, client_cores)
    url = f"http://127.0.0.1:{port}"
    print(f"server on cores {server_cores}, client on cores {client_cores}; load average before "
          f"{os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}", flush=True)
    try:
        end = time.time() + 120
        while True:
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert server.poll() is None and time.time() < end, (tmp / "serve.log").read_text()[-2000:]
            time.sleep(0.3)
        images = test_images(1000)
        httpx.post(url + "/classify", json={"model": args.model, "images": images[:1]}, timeout=60).raise_for_status()
        results = []
        for c in args.concurrency:
            la = os.getloadavg()[0]
            res = asyncio.run(_run(url, args.model, images, args.requests, c, not args.no_backoff, args.timeout))
            res["load_before"], res["load_after"] = round(la, 2), round(os.getloadavg()[0], 2)
            results.append(res)
            print(json.dumps(res), flush=True)
        base = results[0]["ok_per_s"]
        first = f"vs c={results[0]['concurrency']}"
        print(f"\n{'conc':>5} {'requests':>8} {'200':>6} {'503':>6} {'errors':>6} {'200/s':>7} {first:>8} "
              f"{'p50 ms':>7} {'p99 ms':>7} {'load':>10}")
        for r in results:
            print(f"{r['concurrency']:>5} {r['requests']:>8} {r['200']:>6} {r['503']:>6} {r['errors']:>6} "
                  f"{r['ok_per_s']:>7} {r['ok_per_s'] / base:>8.0%} {r['p50_ms']:>7} {r['p99_ms']:>7} "
                  f"{r['load_before']:>4}->{r['load_after']:<4}")
        return 0 if all(r["errors"] == 0 for r in results) else 1
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)


if __name__ == "__main__":
    sys.exit(main())
