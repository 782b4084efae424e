"""A real browser against `genrobust serve`: Debian's chromium driven by Playwright for Python (never
`playwright install`; .ci/run installs chromium). The service runs embedded on a free port with the shipped
models, an empty temporary model store and a temporary data dir."""

from __future__ import annotations

import contextlib
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.service.test_embedded import Server

CHROMIUM = os.environ.get("GENROBUST_TEST_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="package")
def start_server(tmp_path_factory, fmnist_root):
    """``start_server(**env)``: a context manager running `genrobust serve` (a fresh data and model dir)."""

    @contextlib.contextmanager
    def start(**extra):
        root = tmp_path_factory.mktemp("browser-service")
        data = root / "data"
        (data / "FashionMNIST").mkdir(parents=True)
        (data / "FashionMNIST" / "raw").symlink_to(fmnist_root / "FashionMNIST" / "raw")
        env = {k: v for k, v in os.environ.items() if not k.startswith("GENROBUST_")}
        env.update(GENROBUST_DATA_DIR=str(data), GENROBUST_MODEL_DIR=str(root / "models"), GENROBUST_THREADS="1",
                   GENROBUST_SWEEP_CHUNK="10", **extra)
        log = root / "serve.log"
        srv = Server(env, log)
        with srv:
            yield srv
        assert "Traceback" not in log.read_text(), log.read_text()[-3000:]

    return start


KEY = "browser-test-key"


@pytest.fixture(scope="package")
def servers(start_server):
    """An open service and one that requires an API key (every attack a job there), started side by side:
    start-up is most of these tests' time."""
    keyed = dict(GENROBUST_API_KEY=KEY, GENROBUST_INLINE_ATTACK_WORK="0")
    with contextlib.ExitStack() as stack, ThreadPoolExecutor(2) as pool:
        open_, keyed = pool.map(lambda env: stack.enter_context(start_server(**env)), ({}, keyed))
        yield SimpleNamespace(open=open_, keyed=keyed)


@pytest.fixture(scope="package")
def server(servers):
    return servers.open


@pytest.fixture(scope="package")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip(f"chromium not found at {CHROMIUM} (apt-get install chromium; .ci/run installs it)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed (pip install -e '.[test]')")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture(scope="package")
def shots(tmp_path_factory) -> Path:
    """Screenshots of every state (a test artefact: look at them)."""
    return tmp_path_factory.mktemp("screenshots")


def new_page(browser, url: str):
    """A 1280 x 800 page on ``url`` once the page is wired, and the list its console errors go to."""
    page = browser.new_context(viewport={"width": 1280, "height": 800}).new_page()
    page.set_default_timeout(30_000)
    errors: list[str] = []
    page.on("console", lambda m: m.type == "error" and errors.append(m.text))
    page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
    page.goto(url + "/")
    page.wait_for_selector("body[data-ready=true]")
    return page, errors
