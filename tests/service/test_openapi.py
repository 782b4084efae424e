"""schemathesis against the app's own OpenAPI: no server errors, every response matches its schema.
Bounded: a few examples per operation, small limits, an API key so no job reaches a worker. The app runs
under uvicorn in a thread (with its lifespan: the classify batcher)."""

from __future__ import annotations

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, settings  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import (content_type_conformance, response_schema_conformance,  # noqa: E402
                                               status_code_conformance)

from app.main import create_app  # noqa: E402
from tests.service.conftest import live_app  # noqa: E402

schema = schemathesis.openapi.from_dict(create_app().openapi())


@pytest.fixture(scope="module")
def live_url(service_env):
    # job routes answer 401 (an API key is set): nothing heavy gets queued
    with live_app({"GENROBUST_API_KEY": "schemathesis", "GENROBUST_MAX_IMAGES": "2",
                   "GENROBUST_INLINE_ATTACK_WORK": "20"}) as url:
        yield url


@schema.parametrize()
@settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_conforms_to_its_openapi(case, live_url):
    # a generous timeout: this checks conformance, not latency (on a loaded machine, after the fault tests'
    # dead Redis servers, one /health took over 10 s, schemathesis's default)
    case.call_and_validate(base_url=live_url, checks=[not_a_server_error, status_code_conformance,
                                                      content_type_conformance, response_schema_conformance],
                           timeout=60)
