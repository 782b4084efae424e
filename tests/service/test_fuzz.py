"""No accepted input answers 500, and nothing the library is given makes it fail with anything but a clear
GenrobustError: hypothesis over the library's public entry points (shapes, dtypes, seeds up to 2^63 - 1,
parameter extremes), and a fast schemathesis pass over every operation of the API with the stateful links
(the full run, thousands of cases: benchmarks/fuzz_service.py, results in BENCHMARKS.md)."""

from __future__ import annotations

import math
import typing

import annotated_types as at
import numpy as np
import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, assume, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from genrobust.attacks import ATTACKS, make_attack  # noqa: E402
from genrobust.data import check_images, check_labels  # noqa: E402
from genrobust.errors import GenrobustError  # noqa: E402
from genrobust.evaluation import batched_logits, logits_for_requests  # noqa: E402
from genrobust.robustness import labels_for, run_attack  # noqa: E402
from tests.conftest import tiny_model  # noqa: E402

MAX_SEED = 2**63 - 1  # the largest seed the API accepts
SEEDS = st.one_of(st.sampled_from([0, 1, 2**31 - 1, 2**32, 2**62, MAX_SEED - 1, MAX_SEED]),
                  st.integers(0, MAX_SEED))
FAST = settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)


@pytest.fixture(scope="module")
def gfz():
    return tiny_model("GFZ")


# ------------------------------------------------------------------ inputs
DTYPES = [np.float16, np.float32, np.float64, np.uint8, np.int64, np.bool_, np.complex64]


@st.composite
def arrays(draw):
    shape = draw(st.sampled_from([(1, 28, 28), (2, 1, 28, 28), (0, 28, 28), (28, 28), (1, 2, 28, 28),
                                  (1, 27, 28), (3, 1, 28, 28, 1), ()]))
    dtype = draw(st.sampled_from(DTYPES))
    fill = draw(st.sampled_from([0.0, 0.5, 1.0, -1e-6, 1.0000001, math.nan, math.inf, -math.inf, 1e300]))
    a = np.random.default_rng(draw(st.integers(0, 2**32 - 1))).random(shape)
    if a.size:
        a.flat[draw(st.integers(0, a.size - 1))] = fill
    with np.errstate(all="ignore"):
        return a.astype(dtype)


@FAST
@given(arrays())
def test_check_images_returns_valid_images_or_a_clear_error(a):
    try:
        x = check_images(a)
    except GenrobustError:
        return
    assert x.dtype == torch.float32 and x.dim() == 4 and x.shape[1:] == (1, 28, 28) and len(x) > 0
    assert torch.isfinite(x).all() and x.min() >= 0 and x.max() <= 1


@FAST
@given(st.one_of(st.lists(st.integers(-2**70, 2**70), max_size=4), st.lists(st.floats(), max_size=3),
                 st.lists(st.text(max_size=2), max_size=2), st.lists(st.lists(st.integers(0, 9)), max_size=2),
                 st.integers(), st.none()), st.integers(0, 4))
def test_check_labels_returns_labels_or_a_clear_error(y, n):
    try:
        out = check_labels(y, n)
    except GenrobustError:
        return
    assert out.dtype == torch.int64 and out.shape == (n,) and ((out >= 0) & (out < 10)).all()


# ------------------------------------------------------------------ evaluation at any seed and K
@FAST
@given(n=st.integers(1, 3), samples=st.sampled_from([1, 2, 100]), seed=SEEDS)
def test_logits_at_any_seed_and_k_are_finite_and_reproducible(gfz, n, samples, seed):
    x = torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(n))
    a = batched_logits(gfz, x, samples, seed)
    assert a.shape == (n, 10) and torch.isfinite(a).all()
    assert torch.equal(a, batched_logits(gfz, x, samples, seed))
    # the service's batched path gives the same answer for the same seed
    assert torch.allclose(logits_for_requests(gfz, [(x, seed)], samples)[0], a, atol=1e-4)


@FAST
@given(seed=SEEDS, samples=st.integers(-3, 0))
def test_bad_k_is_a_clear_error(gfz, seed, samples):
    with pytest.raises(GenrobustError):
        batched_logits(gfz, torch.zeros(1, 28, 28), samples, seed)


@FAST
@given(seed=SEEDS)
def test_labels_policy_at_any_seed(gfz, seed):
    y = labels_for(gfz, torch.rand(2, 1, 28, 28, generator=torch.Generator().manual_seed(0)), seed=seed, samples=2)
    assert y.shape == (2,) and ((y >= 0) & (y < 10)).all()


# ------------------------------------------------------------------ attacks at parameter extremes
def _field_strategy(info):
    """Values of one Params field: its bounds, values near them and huge ones, drawn from its annotation
    and annotated-types metadata (so new attacks and fields are covered without editing this test)."""
    ann = info.annotation
    if typing.get_origin(ann) in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        args = [a for a in typing.get_args(ann) if a is not type(None)]
        inner = _field_strategy(type(info)(annotation=args[0], metadata=info.metadata))
        return st.one_of(st.none(), inner)
    if typing.get_origin(ann) is typing.Literal:
        return st.sampled_from(typing.get_args(ann))
    if ann is bool:
        return st.booleans()
    lo = hi = None
    lo_open = hi_open = False
    for m in info.metadata:
        if isinstance(m, at.Ge):
            lo = m.ge
        elif isinstance(m, at.Gt):
            lo, lo_open = m.gt, True
        elif isinstance(m, at.Le):
            hi = m.le
        elif isinstance(m, at.Lt):
            hi, hi_open = m.lt, True
    if ann is int:
        lo_i = (lo or 0) + (1 if lo_open else 0)
        hi_i = hi - (1 if hi_open else 0) if hi is not None else 10**9
        return st.one_of(st.sampled_from([lo_i, hi_i]), st.integers(lo_i, hi_i))
    lo_f = -1e30 if lo is None else lo
    hi_f = 1e30 if hi is None else hi
    special = [v for v in (lo_f, hi_f, 1e-30 + (lo or 0), 1e30) if (lo is None or v > lo or (v == lo and not lo_open))
               and (hi is None or v < hi or (v == hi and not hi_open))]
    return st.one_of(st.sampled_from(special or [lo_f]),
                     st.floats(lo_f, hi_f, exclude_min=lo_open, exclude_max=hi_open, allow_nan=False))


def _params(cls):
    return st.fixed_dictionaries({k: _field_strategy(f) for k, f in cls.Params.model_fields.items()})


@pytest.mark.parametrize("name", list(ATTACKS))
def test_attacks_at_parameter_extremes_and_any_seed(gfz, name):
    x = torch.rand(2, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([3, 7])

    @settings(max_examples=6, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    @given(params=_params(ATTACKS[name]), seed=SEEDS, eval_samples=st.sampled_from([1, 3]))
    def run(params, seed, eval_samples):
        try:
            atk = make_attack(name, params)
        except GenrobustError:
            return  # an invalid combination, refused with a message
        assume(atk.cost(1) <= 60)  # the parameters' extremes are covered; the huge ones run as jobs
        p = atk.params  # one pass holds images x classes x samples x eot decoder evaluations: keep it small
        assume(p.samples * (getattr(p, "eot", 1) or 1) * max(1, getattr(p, "accept_draws", 1)) <= 2000)
        report, adv = run_attack(gfz, atk, x, y, seed=seed, eval_samples=eval_samples)
        assert adv.shape == x.shape and torch.isfinite(adv).all() and adv.min() >= 0 and adv.max() <= 1
        assert report.n == 2 and all(math.isfinite(v) for v in report.per_image["l2"])
        report.model_dump_json()  # JSON-able: what the API and the job records send

    run()


def test_non_finite_attack_parameters_are_refused():
    for name, cls in ATTACKS.items():
        for field, info in cls.Params.model_fields.items():
            if info.annotation is float:
                # DeepFool's p = inf is the L-infinity norm (documented), not an overflow: only nan is bad there
                for bad in (math.nan,) if field == "p" else (math.inf, math.nan):
                    with pytest.raises(GenrobustError, match=field):
                        make_attack(name, {field: bad})


# ------------------------------------------------------------------ detection at any seed
@FAST
@given(seed=SEEDS, n=st.integers(1, 3))
def test_detectors_at_any_seed(service_env, seed, n):
    from genrobust.detection import DETECTORS, load_detector

    x = torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(n))
    for det_name in DETECTORS:
        out = load_detector(service_env.store, "tiny-gfz", det_name).detect(x, seed=seed)
        assert out.is_adversarial.shape == (n,) and torch.isfinite(torch.as_tensor(out.score)).all()


# ------------------------------------------------------------------ the API: fast schemathesis subset
schemathesis = pytest.importorskip("schemathesis")
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import (content_type_conformance, response_schema_conformance,  # noqa: E402
                                               status_code_conformance)

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@pytest.fixture(scope="module")
def fuzz_url(service_env, tmp_path_factory):
    """The app under uvicorn in a thread, Redis mode on a redis-server of its own without workers (jobs are
    queued and never run, and no worker of the other tests sees them), an API key the fuzzer sends (job routes
    are exercised past authentication), small limits so each case is cheap."""
    from tests.service.conftest import live_app
    from tests.service.test_faults import OwnRedis

    redis = OwnRedis(tmp_path_factory.mktemp("fuzz-redis"))
    redis.start()
    try:
        with live_app({"GENROBUST_API_KEY": "fuzz", "GENROBUST_MAX_IMAGES": "2", "GENROBUST_INLINE_ATTACK_WORK": "20",
                       "GENROBUST_REDIS_URL": redis.url}) as url:
            yield url
    finally:
        redis.close()  # live_app has restored the environment


def _schema():
    from app.main import create_app

    return schemathesis.openapi.from_dict(create_app().openapi())


schema = _schema()


@schema.parametrize()
@settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_api_fuzz_no_server_error(case, fuzz_url):
    case.call_and_validate(base_url=fuzz_url, headers={"X-API-Key": "fuzz"}, checks=CHECKS)


def test_api_stateful_links_no_server_error(fuzz_url):
    """Submissions followed through their OpenAPI links to GET and DELETE /jobs/{id}."""

    class Links(schema.as_state_machine()):
        def get_call_kwargs(self, case):
            return {"base_url": fuzz_url, "headers": {"X-API-Key": "fuzz"}}

        def validate_response(self, response, case, additional_checks=None, **kwargs):
            # ours only: the schema types ModelConfig.structure as a string, which a validator then narrows
            case.validate_response(response, checks=CHECKS)

    Links.run(settings=settings(max_examples=10, stateful_step_count=4, deadline=None,
                                suppress_health_check=list(HealthCheck), derandomize=True))
