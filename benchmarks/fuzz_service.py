"""The whole API under schemathesis: every operation, thousands of generated requests (examples, coverage,
fuzzing and stateful phases: POST /jobs/* -> GET /jobs/{id} -> DELETE /jobs/{id} through the OpenAPI links),
checked for server errors and for responses that do not match the schema.

    .venv/bin/python benchmarks/fuzz_service.py [--max-examples 400] [--seconds 1500]

Starts a throw-away redis-server on a free port (Redis mode, no worker: jobs are accepted and queued but
never run, so the fuzzer cannot start real training) and `genrobust serve` with an API key (given to
schemathesis, so job routes are exercised past authentication), a temporary store of tiny models (plus the
shipped ones) with fitted detectors, and small limits so every accepted request is cheap. Prints
schemathesis' summary; the JSON report goes to <out>/report.json.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from service_helpers import REPO, free_port  # noqa: E402  (benchmarks/)

CHECKS = ("not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,"
          "response_headers_conformance")


def _wait(url: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    end = time.time() + timeout
    while time.time() < end:
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.TransportError:
            pass
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode}")
        time.sleep(0.3)
    raise RuntimeError(f"{url} did not come up")


def _tiny_store(root: Path, data: Path) -> None:
    sys.path.insert(0, str(REPO))
    from genrobust.detection import fit_detectors
    from genrobust.store import ModelStore
    from tests.service.conftest import save_tiny

    store = ModelStore(root)
    save_tiny(store)
    fit_detectors(store, "tiny-gfz", samples=2, limit=100, data_root=data)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--max-examples", type=int, default=400, help="examples per operation and phase")
    ap.add_argument("--seconds", type=int, default=1800, help="time budget of the schemathesis run")
    ap.add_argument("--out", type=Path, default=None, help="where the report goes (default: a temp dir)")
    ap.add_argument("--data-dir", type=Path, default=REPO / "data")
    ap.add_argument("--paths", help="only the operations whose path matches this regular expression")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="genrobust-fuzz-"))
    out = args.out or tmp
    out.mkdir(parents=True, exist_ok=True)
    models = tmp / "models"
    _tiny_store(models, args.data_dir)
    rport, port = free_port(), free_port()
    redis = subprocess.Popen(["redis-server", "--port", str(rport), "--bind", "127.0.0.1", "--save", "",
                              "--appendonly", "no", "--dir", str(tmp)], stdout=subprocess.DEVNULL)
    env = {**os.environ, "GENROBUST_REDIS_URL": f"redis://127.0.0.1:{rport}/0", "GENROBUST_API_KEY": "fuzz",
           "GENROBUST_MODEL_DIR": str(models), "GENROBUST_DATA_DIR": str(args.data_dir),
           "GENROBUST_MAX_IMAGES": "4", "GENROBUST_INLINE_ATTACK_WORK": "40", "GENROBUST_THREADS": "1"}
    log = (out / "server.log").open("w")
    server = subprocess.Popen([sys.executable, "-m", "genrobust.cli", "serve", "--port", str(port),
                               "--no-access-log"], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait(url + "/health", server)
        cmd = [str(Path(sys.executable).parent / "st"), "run", f"{url}/openapi.json", "--checks", CHECKS,
               "--phases", "examples,coverage,fuzzing,stateful", "--max-examples", str(args.max_examples),
               "--max-time", str(args.seconds), "-H", "X-API-Key: fuzz", "--workers", "1",
               "--suppress-health-check", "all", "--request-timeout", "60", "--continue-on-failure",
               "--report", "ndjson", "--report-dir", str(out), "--seed", "0"]
        if args.paths:
            cmd += ["--include-path-regex", args.paths]
        print(" ".join(cmd), flush=True)
        t0 = time.time()
        rc = subprocess.call(cmd, cwd=tmp)
        print(f"schemathesis exit {rc} after {time.time() - t0:.0f} s; report in {out}")
        text = (out / "server.log").read_text(errors="replace")
        tracebacks = text.count("Traceback")
        print(f"server log: {tracebacks} tracebacks, {text.count('unhandled error')} unhandled errors")
        return rc
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(30)
        redis.terminate()
        redis.wait(10)
        if args.out is not None:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
