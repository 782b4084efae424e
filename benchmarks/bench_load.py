"""/classify under overload: does the service shed what it cannot serve (503 + Retry-After at once) and keep
serving the rest quickly, instead of letting every request wait?

    .venv/bin/python benchmarks/bench_load.py [--requests 10000] [--concurrency 32 128 256] [--rounds 3]
                                              [--client raw httpx] [--model fmnist-gfz] [--json out.json]

Starts `genrobust serve` (embedded mode, a throw-away data dir, the shipped models, GENROBUST_THREADS=1)
pinned to core 0 with taskset and drives it from this process pinned to the other cores (when the machine
has more than one): ``--requests`` one-image /classify requests (JSON lists, K = 10) at each concurrency, one
keep-alive connection per simulated user. A user answered 503 waits the Retry-After seconds (jittered ×0.5–1.5)
before its next request, as a well-behaved client does (``--no-backoff``: it retries at once). Every attempt
counts as a request.

The load generator must not be the bottleneck. ``raw`` (the default) writes pre-encoded requests on plain
asyncio streams; ``httpx`` is there to show what a heavy client does to the figures: at concurrency 128 it
saturates its own core, and its latencies then measure the client, not the server.

The concurrencies run in ``--rounds`` interleaved rounds (32, 128, 256, 32, 128, 256, ...), so each ratio
"throughput of the 200s at c over that at the first concurrency" is taken within a round, under the same
machine conditions; the summary gives its mean over rounds with a 95 % t-interval. Per phase it reports 200s,
503s, errors (anything else: other statuses, dropped connections, timeouts), throughput and latency
percentiles of the 200s, and the CPU share the client and the server's threads took over the phase (is the
client keeping up?).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from scipy import stats
from service_helpers import serving, test_images  # noqa: E402  (benchmarks/)


class _Connection:
    """One keep-alive HTTP/1.1 connection, as lean as a load generator must be: pre-encoded requests, a
    response read as headers + Content-Length body."""

    opened = 0  # connections opened: more than the concurrency means the server closed some

    def __init__(self, host: str, port: int):
        self.host, self.port, self.reader, self.writer = host, port, None, None

    async def request(self, payload: bytes) -> tuple[int, dict[str, str]]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
            _Connection.opened += 1
        try:
            self.writer.write(payload)
            head = (await self.reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            headers = dict((k.strip().lower(), v.strip()) for k, v in (h.split(":", 1) for h in head[1:] if h))
            await self.reader.readexactly(int(headers.get("content-length", 0)))
        except BaseException:
            self.close()
            raise
        if headers.get("connection", "").lower() == "close":
            self.close()
        return int(head[0].split()[1]), headers

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


class _Meter:
    """CPU the client process, each server thread and the server's core used between start() and stop()."""

    def __init__(self, server_pid: int, server_core: int):
        self.pid, self.core = server_pid, server_core

    def _threads(self) -> dict[int, float]:
        tick, out = os.sysconf("SC_CLK_TCK"), {}
        for task in Path(f"/proc/{self.pid}/task").glob("*"):
            try:
                fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            out[int(task.name)] = (int(fields[11]) + int(fields[12])) / tick  # utime + stime
        return out

    def _core(self) -> np.ndarray:  # user nice system idle iowait irq softirq steal (ticks)
        for line in Path("/proc/stat").read_text().splitlines():
            if line.startswith(f"cpu{self.core} "):
                return np.array([int(v) for v in line.split()[1:9]], dtype=float)
        return np.ones(8)

    def start(self) -> None:
        self.t0, self.cpu0, self.threads0, self.core0 = time.time(), time.process_time(), self._threads(), self._core()

    def stop(self) -> dict:
        wall, threads, core = time.time() - self.t0, self._threads(), self._core() - self.core0
        per_thread = sorted((threads[t] - self.threads0.get(t, 0.0)) / wall for t in threads)[::-1]
        return {"client_cpu": round((time.process_time() - self.cpu0) / wall, 2),
                "server_cpu": round(sum(per_thread), 2), "server_top_threads": [round(u, 2) for u in per_thread[:3]],
                "server_core_idle": round(float((core[3] + core[4]) / max(core.sum(), 1)), 3),
                "server_core_steal": round(float(core[7] / max(core.sum(), 1)), 3)}


async def _phase(url: str, bodies: list[bytes], total: int, concurrency: int, backoff: bool, timeout: float,
                 client: str, meter: _Meter) -> dict:
    lat200, statuses, errors, next_i, last = [], {}, [], 0, 0.0
    parsed = httpx.URL(url)
    host, port = parsed.host, parsed.port
    raw = [b"POST /classify HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: application/json\r\n"
           b"Content-Length: %d\r\n\r\n%s" % (host.encode(), port, len(b), b) for b in bodies]

    async def user(send):
        nonlocal next_i, last
        while next_i < total:
            i = next_i
            next_i += 1
            t0 = time.perf_counter()
            try:
                async with asyncio.timeout(timeout):
                    status, headers = await send(i % len(bodies))
            except (httpx.HTTPError, OSError, asyncio.IncompleteReadError, TimeoutError) as exc:
                errors.append(f"{type(exc).__name__}: {exc}")  # dropped connection, timeout: must never happen
                continue
            last = time.perf_counter()
            statuses[status] = statuses.get(status, 0) + 1
            if status == 200:
                lat200.append(last - t0)
            elif status == 503:
                if "retry-after" not in headers:
                    errors.append("503 without Retry-After")
                if backoff and next_i < total:  # nothing left to send: no need to wait
                    await asyncio.sleep(float(headers.get("retry-after", 1)) * random.uniform(0.5, 1.5))
            else:
                errors.append(f"status {status}")

    _Connection.opened = 0
    meter.start()
    t0 = time.perf_counter()
    if client == "raw":
        conns = [_Connection(host, port) for _ in range(concurrency)]
        try:
            await asyncio.gather(*(user(lambda i, c=c: c.request(raw[i])) for c in conns))
        finally:
            for c in conns:
                c.close()
    else:
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        async with httpx.AsyncClient(base_url=url, timeout=None, limits=limits) as http:
            async def send(i):
                r = await http.post("/classify", content=bodies[i], headers={"content-type": "application/json"})
                return r.status_code, r.headers
            await asyncio.gather(*(user(send) for _ in range(concurrency)))
    wall = last - t0  # to the last answer: users still sleeping off a 503 after it send nothing more
    cpu = meter.stop()
    lat = np.array(lat200) * 1000 if lat200 else np.zeros(1)
    return {"concurrency": concurrency, "client": client, "requests": total, "200": statuses.get(200, 0),
            "503": statuses.get(503, 0), "errors": len(errors), "error_examples": sorted(set(errors))[:3],
            "wall_s": round(wall, 1), "ok_per_s": round(statuses.get(200, 0) / wall, 1),
            "p50_ms": round(float(np.percentile(lat, 50)), 1), "p99_ms": round(float(np.percentile(lat, 99)), 1),
            "max_ms": round(float(lat.max()), 1), "latencies_ms": lat.round(1).tolist(),
            "connections": _Connection.opened if client == "raw" else None, **cpu}


def _summary(results: list[dict], first: int) -> list[dict]:
    """Per client and concurrency over the rounds: totals, pooled latency percentiles of the 200s, and the
    throughput ratio to the first concurrency of the same round and client (mean, 95 % t-interval)."""
    rows = []
    for client in dict.fromkeys(r["client"] for r in results):
        for c in dict.fromkeys(r["concurrency"] for r in results):
            mine = [r for r in results if r["client"] == client and r["concurrency"] == c]
            ratios = []
            for r in mine:
                base = [b for b in results if b["client"] == client and b["concurrency"] == first
                        and b["round"] == r["round"]]
                if base and base[0]["ok_per_s"]:
                    ratios.append(r["ok_per_s"] / base[0]["ok_per_s"])
            mean = float(np.mean(ratios)) if ratios else float("nan")
            if len(ratios) > 1 and np.std(ratios) > 0:
                lo, hi = stats.t.interval(0.95, len(ratios) - 1, loc=mean, scale=stats.sem(ratios))
            else:
                lo = hi = mean
            lat = np.concatenate([np.array(r["latencies_ms"]) for r in mine])
            rows.append({"client": client, "concurrency": c, "rounds": len(mine),
                         "requests": sum(r["requests"] for r in mine), "200": sum(r["200"] for r in mine),
                         "503": sum(r["503"] for r in mine), "errors": sum(r["errors"] for r in mine),
                         "ok_per_s": [r["ok_per_s"] for r in mine], "ratio": round(mean, 3),
                         "ratio_ci95": [round(float(lo), 3), round(float(hi), 3)],
                         "p50_ms": round(float(np.percentile(lat, 50)), 1),
                         "p99_ms": round(float(np.percentile(lat, 99)), 1),
                         "p99_ms_worst_round": max(r["p99_ms"] for r in mine),
                         "client_cpu_max": max(r["client_cpu"] for r in mine),
                         "server_cpu": [r["server_cpu"] for r in mine]})
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=10_000, help="requests per concurrency and round")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[32, 128, 256])
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds over the concurrencies")
    ap.add_argument("--model", default="fmnist-gfz")
    ap.add_argument("--client", nargs="+", choices=["raw", "httpx"], default=["raw"],
                    help="load generator: raw keep-alive sockets (lean) and/or httpx; each runs every concurrency")
    ap.add_argument("--no-backoff", action="store_true", help="retry a 503 at once instead of after Retry-After")
    ap.add_argument("--timeout", type=float, default=60.0, help="client timeout per request, s")
    ap.add_argument("--server-env", nargs="*", default=[], metavar="KEY=VALUE", help="extra GENROBUST_* settings")
    ap.add_argument("--json", type=Path, help="write every phase and the summary here")
    args = ap.parse_args()
    if min(args.requests, args.rounds, *args.concurrency) < 1:
        ap.error("--requests, --rounds and every --concurrency must be at least 1")

    bad_env = [kv for kv in args.server_env if "=" not in kv]
    if bad_env:
        ap.error(f"--server-env takes KEY=VALUE, got {' '.join(bad_env)}")

    cores = sorted(os.sched_getaffinity(0))
    server_cores, client_cores = ([cores[0]], cores[1:]) if len(cores) > 1 else (cores, cores)
    log = Path(tempfile.mkdtemp(prefix="genrobust-load-")) / "serve.log"
    env = {"GENROBUST_THREADS": "1", **dict(kv.split("=", 1) for kv in args.server_env)}
    # /classify reads no dataset
    with serving(env, prefix=("taskset", "-c", ",".join(map(str, server_cores))), log=log) as (url, server):
        os.sched_setaffinity(0, client_cores)
        print(f"server on cores {server_cores}, client on cores {client_cores}; load average before "
              f"{os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}; server log {log}",
              flush=True)
        images = test_images(1000)
        httpx.post(url + "/classify", json={"model": args.model, "images": images[:1]}, timeout=60).raise_for_status()
        bodies = [json.dumps({"model": args.model, "images": [im], "samples": 10, "seed": i}).encode()
                  for i, im in enumerate(images)]
        meter, results = _Meter(server.pid, server_cores[0]), []
        for rnd in range(args.rounds):
            for client in args.client:
                for c in args.concurrency:
                    la = os.getloadavg()[0]
                    res = asyncio.run(_phase(url, bodies, args.requests, c, not args.no_backoff, args.timeout,
                                             client, meter))
                    res.update(round=rnd, load_before=round(la, 2), load_after=round(os.getloadavg()[0], 2))
                    results.append(res)
                    print(json.dumps({k: v for k, v in res.items() if k != "latencies_ms"}), flush=True)
        rows = _summary(results, args.concurrency[0])
        print(f"\n{'client':>6} {'conc':>5} {'requests':>8} {'200':>6} {'503':>6} {'errors':>6} "
              f"{'200/s per round':>20} {'vs c=' + str(args.concurrency[0]) + ' (95% CI)':>24} {'p50 ms':>7} "
              f"{'p99 ms':>7} {'worst p99':>9} {'client cpu':>10}")
        for r in rows:
            ci = f"{r['ratio']:.0%} ({r['ratio_ci95'][0]:.0%}-{r['ratio_ci95'][1]:.0%})"
            print(f"{r['client']:>6} {r['concurrency']:>5} {r['requests']:>8} {r['200']:>6} {r['503']:>6} "
                  f"{r['errors']:>6} {' '.join(f'{v:g}' for v in r['ok_per_s']):>20} {ci:>24} {r['p50_ms']:>7} "
                  f"{r['p99_ms']:>7} {r['p99_ms_worst_round']:>9} {r['client_cpu_max']:>10}")
        if args.json:
            args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                             "phases": results, "summary": rows}))
        return 0 if all(r["errors"] == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
