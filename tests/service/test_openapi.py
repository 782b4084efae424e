"""schemathesis against the app's own OpenAPI: no server errors, every response matches its schema.
Bounded: a few examples per operation, small limits, an API key so no job reaches a worker. The app runs
under uvicorn in a thread (with its lifespan: the classify batcher)."""

from __future__ import annotations

import threading
import time

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, settings  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import (content_type_conformance, response_schema_conformance,  # noqa: E402
                                               status_code_conformance)

from app.main import create_app  # noqa: E402
from tests.service.test_embedded import _free_port  # noqa: E402

schema = schemathesis.openapi.from_dict(create_app().openapi())


@pytest.fixture(scope="module")
def live_url(service_env):
    import uvicorn

    from tests.service.conftest import reset_service_config

    mp = pytest.MonkeyPatch()
    mp.setenv("GENROBUST_API_KEY", "schemathesis")  # job routes answer 401: nothing heavy gets queued
    mp.setenv("GENROBUST_MAX_IMAGES", "2")
    mp.setenv("GENROBUST_INLINE_ATTACK_WORK", "20")
    reset_service_config()
    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(embedded_worker=False), host="127.0.0.1", port=port,
                                           log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)
    mp.undo()
    reset_service_config()


@schema.parametrize()
@settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_conforms_to_its_openapi(case, live_url):
    # a generous timeout: this checks conformance, not latency (on a loaded machine, after the fault tests'
    # dead Redis servers, one /health took over 10 s, schemathesis's default)
    case.call_and_validate(base_url=live_url, checks=[not_a_server_error, status_code_conformance,
                                                      content_type_conformance, response_schema_conformance],
                           timeout=60)
