"""What the service benchmarks share: a free local port and test images as JSON-ready lists."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_images(n: int) -> list:
    """The first ``n`` Fashion-MNIST test images as nested lists (28 x 28 each), the /classify body format."""
    sys.path.insert(0, str(REPO))
    from genrobust import data

    return data.load("fashion-mnist", "test", n).images[:, 0].tolist()


@contextmanager
def serving(extra_env: dict[str, str] | None = None, with_data: bool = False, wait_s: float = 120,
            prefix: tuple[str, ...] = (), log: Path | None = None):
    """``genrobust serve`` (embedded, shipped models, a throw-away store and data dir; ``with_data``: the
    repository's Fashion-MNIST files linked in) on a free port, until healthy; yields (url, process).
    ``prefix``: a command to run it under (e.g. taskset); ``log``: where its output goes (else nowhere)."""
    import httpx

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        if with_data:
            (data / "FashionMNIST").mkdir(parents=True)
            (data / "FashionMNIST" / "raw").symlink_to((REPO / "data" / "FashionMNIST" / "raw").resolve())
        env = {k: v for k, v in os.environ.items() if not k.startswith("GENROBUST_")}
        env.update(GENROBUST_DATA_DIR=str(data), GENROBUST_MODEL_DIR=str(Path(tmp) / "models"), **(extra_env or {}))
        out = open(log, "w") if log else subprocess.DEVNULL
        server = subprocess.Popen([*prefix, sys.executable, "-m", "genrobust.cli", "serve", "--port", str(port),
                                   "--no-access-log"], cwd=REPO, env=env, stdout=out,
                                  stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + wait_s
            while True:
                try:
                    if httpx.get(url + "/health").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if server.poll() is not None or time.monotonic() > deadline:
                    tail = Path(log).read_text()[-2000:] if log else ""
                    raise SystemExit(f"genrobust serve did not come up (exit {server.poll()})\n{tail}")
                time.sleep(0.2)
            yield url, server
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
            if log:
                out.close()
