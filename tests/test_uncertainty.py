"""Intervals, paired comparisons and verdicts against cases with known answers."""

import numpy as np
import pytest
from scipy import stats

from genrobust.errors import GenrobustError
from genrobust.uncertainty import (Comparison, auc, bootstrap, format_estimate, holm, mcnemar, median_statistic,
                                   paired, proportion, rate, ratio_statistic, verdict)

Z = stats.norm.ppf(0.975)


def test_wilson_interval_known_cases():
    # all successes: the upper end is 1 and the lower end n / (n + z^2) (Wilson's closed form at p = 1)
    e = rate(20, 20)
    assert e.value == 1.0 and e.high == pytest.approx(1.0) and e.low == pytest.approx(20 / (20 + Z**2))
    e = rate(0, 20)
    assert e.value == 0.0 and e.low == pytest.approx(0.0, abs=1e-12) and e.high == pytest.approx(Z**2 / (20 + Z**2))
    e = rate(1, 1)
    assert e.low == pytest.approx(1 / (1 + Z**2)) and e.n == 1
    e = rate(50, 100)  # symmetric around one half
    assert e.low == pytest.approx(1 - e.high) and e.low < 0.5 < e.high
    assert rate(0, 0).value is None and format_estimate(rate(0, 0)) == "– (n 0)"
    assert proportion([True, False, True, True]).value == 0.75
    with pytest.raises(GenrobustError):
        rate(5, 3)


def test_bootstrap_on_constant_and_known_data():
    e = bootstrap([0.3] * 50)
    assert e.value == pytest.approx(0.3) and e.low == e.value == e.high and e.n == 50
    x = np.random.default_rng(0).normal(1.0, 1.0, 400)
    e = bootstrap(x, seed=1)
    se = x.std(ddof=1) / np.sqrt(len(x))
    assert e.low < x.mean() < e.high
    assert e.high - e.low == pytest.approx(2 * Z * se, rel=0.15)  # the normal-theory width
    assert bootstrap([]).value is None and bootstrap([np.nan, 2.0]).n == 1
    assert "[" in str(e) and "(n 400)" in str(e)


def test_paired_comparison_detects_a_known_difference():
    rng = np.random.default_rng(0)
    n = 600
    a = rng.random(n) < 0.6
    b = rng.random(n) < 0.4
    c = mcnemar(a, b)
    assert c.difference == pytest.approx(a.mean() - b.mean())
    assert c.low < c.difference < c.high and c.low > 0 and c.p < 0.01
    assert verdict(c, +1).startswith("holds (p") and verdict(c, -1).startswith("reversed (p")


def test_paired_comparison_without_a_difference():
    rng = np.random.default_rng(1)
    n = 300
    base = rng.random(n) < 0.5
    swapped = base.copy()  # the same rate, different images: no difference to find
    idx = rng.choice(np.flatnonzero(base), 15, replace=False)
    swapped[idx] = False
    swapped[rng.choice(np.flatnonzero(~base), 15, replace=False)] = True
    c = mcnemar(base, swapped)
    assert c.difference == 0 and c.p > 0.05 and c.low < 0 < c.high
    v = verdict(c, +1)
    assert v.startswith("not distinguishable at this n") and "smallest detectable difference" in v
    assert c.detectable > 0
    identical = mcnemar(base, base)
    assert identical.p == 1.0 and identical.difference == 0


def test_paired_statistics_over_resampled_subsets():
    # rho-like: a mean over each model's own successful images, resampled on shared image indices
    rng = np.random.default_rng(2)
    n = 200
    ok_a, ok_b = rng.random(n) < 0.7, rng.random(n) < 0.7
    va, vb = rng.normal(0.5, 0.1, n), rng.normal(0.3, 0.1, n)
    c = paired(lambda i: va[i][ok_a[i]].mean(), lambda i: vb[i][ok_b[i]].mean(), n)
    assert c.low > 0.1 and c.p is None and c.test is None  # intervals only: no p-value from resampling
    assert verdict(c, +1) == "descriptive (no test)"
    assert paired(lambda i: 1.0, lambda i: 1.0, 0).difference is None


def test_holm_and_verdict_strings():
    cs = [Comparison(0.1, 0.05, 0.15, 0.01, 100, 0.05), Comparison(0.02, -0.01, 0.05, 0.04, 100, 0.05),
          Comparison(None, None, None, None, 0, None)]
    adj = holm(cs)
    assert adj[0].p_adjusted == pytest.approx(0.02) and adj[1].p_adjusted == pytest.approx(0.04)
    assert adj[2].p_adjusted is None
    assert verdict(adj[0], +1) == "holds (p = 0.020)"
    assert verdict(Comparison(-0.1, -0.15, -0.05, 0.0001, 100, 0.05), +1) == "reversed (p < 0.001)"
    assert verdict(adj[2], +1) == "not testable at this n"


def test_auc_and_its_interval_on_known_cases():
    rng = np.random.default_rng(3)
    apart = auc(rng.normal(0, 1, 200), rng.normal(10, 1, 100))
    assert apart.value == 1.0 and apart.high == 1.0 and apart.n == 100
    same = auc(np.zeros(50), np.zeros(30))  # all ties: one half
    assert same.value == 0.5
    shifted = auc(rng.normal(0, 1, 400), rng.normal(1, 1, 400))  # AUC = Phi(1 / sqrt 2) = 0.760
    assert shifted.low < 0.760 < shifted.high and shifted.high - shifted.low < 0.1
    assert auc([], [1.0]).value is None


def test_vectorised_statistics_match_the_plain_ones():
    rng = np.random.default_rng(4)
    v, w = rng.random(50), rng.random(50) < 0.6
    idx = rng.integers(0, 50, size=(7, 50))
    ratio = ratio_statistic(v, w)(idx)
    median = median_statistic(v, w)(idx)
    for row, r, m in zip(idx, ratio, median):
        assert r == pytest.approx(v[row][w[row]].mean()) and m == pytest.approx(np.median(v[row][w[row]]))
    assert np.isnan(ratio_statistic(v, np.zeros(50))(idx)).all()  # no weight: undefined, not zero
    # the vectorised paired bootstrap agrees with the plain one on the same resamples
    a, b = rng.random(80) < 0.7, rng.random(80) < 0.4
    plain = paired(lambda i: a[i].mean(), lambda i: b[i].mean(), 80, seed=5, n_resamples=400)
    fast = paired(ratio_statistic(a), ratio_statistic(b), 80, seed=5, n_resamples=400, vectorized=True)
    assert fast.difference == pytest.approx(plain.difference)
    assert (fast.low, fast.high) == pytest.approx((plain.low, plain.high))
