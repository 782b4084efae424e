"""The exact and rank tests of the study's comparisons against hand-computed cases, another implementation and
their null distributions: exact McNemar with Newcombe's interval, the censored signed-rank test, the sign-flip
permutation test, Holm's detectable difference, and which test each metric of the analysis gets."""

from dataclasses import replace
from itertools import product

import numpy as np
import pytest
from scipy import stats
from statsmodels.stats.contingency_tables import mcnemar as sm_mcnemar

from genrobust import uncertainty as unc
from genrobust.errors import GenrobustError
from genrobust.study import analysis


def flags(both: int, only_a: int, only_b: int, neither: int) -> tuple[np.ndarray, np.ndarray]:
    """Paired flags with the given 2x2 table (both, A only, B only, neither), shuffled."""
    a = np.array([1] * both + [1] * only_a + [0] * only_b + [0] * neither, bool)
    b = np.array([1] * both + [0] * only_a + [1] * only_b + [0] * neither, bool)
    order = np.random.default_rng(both + 7 * only_a + 13 * only_b).permutation(len(a))
    return a[order], b[order]


def test_exact_mcnemar_hand_computed_cases():
    c = unc.mcnemar(*flags(0, 3, 0, 0))  # 3 discordant pairs all one way: 2 * (1/2)^3
    assert (c.b, c.c, c.n, c.test) == (3, 0, 3, "exact McNemar") and c.p == pytest.approx(0.25)
    assert unc.verdict(c, +1).startswith("not distinguishable")  # the bootstrap read 0.042 here
    assert unc.mcnemar(*flags(20, 7, 7, 10)).p == pytest.approx(1.0)  # b = c
    none = unc.mcnemar(*flags(20, 0, 0, 10))
    assert none.p == 1.0 and none.difference == 0 and none.detectable > 0
    c = unc.mcnemar(*flags(5, 10, 2, 20))  # 2 P(Bin(12, 1/2) <= 2) = 2 (1 + 12 + 66) / 4096
    assert c.p == pytest.approx(2 * 79 / 4096) and c.p == pytest.approx(0.0386, abs=1e-4)
    assert c.difference == pytest.approx(8 / 37) and (c.b, c.c) == (10, 2)
    assert unc.mcnemar([], []).p is None and unc.verdict(unc.mcnemar([], []), +1) == "not testable at this n"
    with pytest.raises(GenrobustError):
        unc.mcnemar([True, False], [True])


def test_mcnemar_mask_restricts_the_images():
    a, b = flags(10, 6, 1, 8)
    mask = np.ones(len(a), bool)
    mask[np.flatnonzero(a & ~b)[:4]] = False  # drop four of A's discordant images
    c = unc.mcnemar(a, b, mask)
    assert (c.n, c.b, c.c) == (len(a) - 4, 2, 1)


def test_mcnemar_agrees_with_statsmodels_on_random_tables():
    rng = np.random.default_rng(0)
    for _ in range(60):
        both, only_a, only_b, neither = rng.integers(0, 25, 4)
        c = unc.mcnemar(*flags(both, only_a, only_b, neither))
        if both + only_a + only_b + neither == 0:
            continue
        ref = sm_mcnemar([[both, only_a], [only_b, neither]], exact=True).pvalue
        assert c.p == pytest.approx(min(1.0, ref) if only_a + only_b else 1.0)


def test_newcombe_interval_published_case_and_invariants():
    # Fagerland, Lydersen & Laake, Statistical Analysis of Contingency Tables (2017), ch. 8: complete response
    # before and after consolidation therapy (Cavo et al. 2012), table [[59, 6], [16, 80]]: Newcombe's
    # square-and-add interval -0.0621 (-0.1186 to -0.0046), as the R package contingencytables also computes
    c = unc.mcnemar(*flags(59, 6, 16, 80))
    assert c.difference == pytest.approx(-0.0621, abs=5e-5)
    assert (c.low, c.high) == pytest.approx((-0.1186, -0.0046), abs=5e-5)
    rng = np.random.default_rng(1)
    for _ in range(40):
        table = rng.integers(0, 30, 4)
        c = unc.mcnemar(*flags(*table))
        if c.n == 0:
            continue
        assert -1 <= c.low <= c.difference <= c.high <= 1
    widths = [unc.mcnemar(*flags(*(k * np.array([30, 12, 5, 40])))) for k in (1, 4, 16)]
    assert widths[0].high - widths[0].low > widths[1].high - widths[1].low > widths[2].high - widths[2].low
    all_a = unc.mcnemar(*flags(0, 10, 0, 0))  # the largest possible difference
    assert all_a.difference == 1.0 and all_a.high == 1.0 and all_a.low > 0


def test_mcnemar_detectable_difference():
    # never below k / n, k = 6 discordant pairs all one way being the fewest with an exact p below 0.05
    assert 2 * 0.5**6 < 0.05 <= 2 * 0.5**5
    assert unc.mcnemar_detectable(100, 0) == pytest.approx(6 / 100)
    big = unc.mcnemar_detectable(10_000, 800)
    assert big == pytest.approx((stats.norm.ppf(0.975) + stats.norm.ppf(0.8)) * np.sqrt(0.08 / 10_000))
    assert unc.mcnemar_detectable(40_000, 3200) < big  # the same discordant rate, four times the images
    assert unc.mcnemar_detectable(10_000, 800, alpha=0.005) > big


def test_holm_sets_the_detectable_difference_at_the_adjusted_level():
    rng = np.random.default_rng(2)
    x = rng.normal(1, 1, 60)
    rows = [unc.mcnemar(*flags(40, 9, 5, 30)), unc.mcnemar(*flags(40, 5, 5, 30)),
            unc.signed_rank(x + rng.normal(0, 0.5, 60), x, statistic=np.mean),
            unc.paired(lambda i: x[i].mean(), lambda i: x[i].mean() + 1, 60)]  # descriptive: left alone
    adjusted = unc.holm(rows)
    for before, after in zip(rows[:3], adjusted[:3]):
        assert after.detectable_adjusted >= before.detectable > 0
    assert adjusted[0].detectable_adjusted == pytest.approx(unc.mcnemar_detectable(84, 14, 0.05 / 3))
    assert adjusted[3].p_adjusted is None and adjusted[3].detectable_adjusted is None
    assert unc.verdict(adjusted[3], +1) == "descriptive (no test)"
    v = unc.verdict(adjusted[1], +1)
    assert v.startswith("not distinguishable") and "smallest detectable difference at the adjusted level" in v
    alone = unc.holm(rows[:1])[0]  # one test: the adjusted level is the level
    assert alone.detectable_adjusted == pytest.approx(alone.detectable)


def test_bootstrap_gives_intervals_only():
    rng = np.random.default_rng(3)
    a, b = rng.normal(1, 1, 200), rng.normal(0, 1, 200)
    c = unc.paired(lambda i: a[i].mean(), lambda i: b[i].mean(), 200)
    assert c.p is None and c.test is None and c.low < c.difference < c.high


def test_signed_rank_against_scipy_and_ties():
    rng = np.random.default_rng(4)
    a, b = rng.normal(1, 1, 40), rng.normal(0.6, 1, 40)
    c = unc.signed_rank(a, b)
    assert c.p == pytest.approx(stats.wilcoxon(a - b).pvalue) and c.test == "Wilcoxon signed-rank"
    assert c.difference == pytest.approx(np.median(a) - np.median(b)) and c.n == 40
    assert unc.signed_rank(a, a).p == 1.0
    assert unc.signed_rank(a, b, statistic=np.mean).difference == pytest.approx(a.mean() - b.mean())
    # three positive differences: the exact p is 2 / 2^3
    assert unc.signed_rank([1.0, 2.0, 3.0], [0.0, 0.0, 0.0]).p == pytest.approx(0.25)
    nan = unc.signed_rank([1.0, np.nan, 3.0, 4.0], [0.0, 1.0, np.nan, 2.0])
    assert nan.n == 2  # undefined pairs are dropped, and n says so


def test_censored_norms_never_vanish():
    x = np.arange(1.0, 31.0)
    unfooled = x.copy()
    unfooled[:12] = np.inf  # A: twelve images the attack never fooled, B fooled at their norms
    c = unc.signed_rank(unfooled, x)
    assert c.n == 30 and c.p < 0.01 and c.difference > 0  # dropping them would leave A = B and p = 1
    assert unc.verdict(c, +1).startswith("holds")
    # inf - x ranks above every finite difference: the same p as a stand-in far above every value
    rng = np.random.default_rng(5)
    a, b = rng.gamma(2, 1, 30), rng.gamma(2, 1, 30)
    a[:5], b[3:8] = np.inf, np.inf  # images 3, 4: never fooled on either side, a tie
    big = 1e6
    expected = stats.wilcoxon(np.where(np.isinf(a), big, a) - np.where(np.isinf(b), big, b)).pvalue
    assert unc.signed_rank(a, b).p == pytest.approx(expected)
    # inf vs inf is a tie: only those images differ, so nothing to find
    same = rng.gamma(2, 1, 20)
    a, b = same.copy(), same.copy()
    a[:4] = b[:4] = np.inf
    assert unc.signed_rank(a, b).p == 1.0 and unc.signed_rank(a, b).difference == 0
    # over half never fooled on one side: the median is infinite, the direction known (None in results.json)
    more = unc.signed_rank(np.r_[np.full(20, np.inf), x[:10]], x)
    assert more.difference == np.inf and more.as_dict()["difference"] is None and more.p < 0.01
    both = unc.signed_rank(np.full(10, np.inf), np.r_[np.full(8, np.inf), 1.0, 2.0])
    assert both.difference is None and both.p is None and unc.verdict(both, +1).startswith("not testable")
    with pytest.raises(GenrobustError):
        unc.signed_rank([-np.inf], [1.0])


def test_permutation_exact_small_n_by_enumeration():
    a, b = np.array([1.0, 2.0, 3.0, -0.5, 0.7]), np.array([0.2, 0.1, 0.4, 0.3, 0.9])
    d = a - b
    flips = np.array(list(product((1, -1), repeat=len(d))))
    means = (flips * d).mean(1)
    expected = np.mean(np.abs(means) >= abs(d.mean()) - 1e-12)
    c = unc.paired_permutation(a, b)
    assert c.test == "permutation" and c.p == pytest.approx(expected) and c.difference == pytest.approx(d.mean())
    assert unc.paired_permutation(a, a).p == 1.0


def test_permutation_p_values_are_uniform_under_the_null():
    rng = np.random.default_rng(6)
    ps = np.array([unc.paired_permutation(*rng.normal(0, 1, (2, 10))).p for _ in range(300)])
    # exchangeable pairs: P(p <= 0.05) = 0.05 up to the 2^10 flips' discreteness; 3 binomial sd around it
    sd = np.sqrt(0.05 * 0.95 / len(ps))
    assert abs(np.mean(ps <= 0.05) - 0.05) < 3 * sd + 1 / 2**9
    assert abs(np.mean(ps <= 0.5) - 0.5) < 3 * np.sqrt(0.25 / len(ps)) + 1 / 2**9
    assert stats.kstest(ps, "uniform").pvalue > 0.001


def test_monte_carlo_permutation_reads_as_a_bound():
    rng = np.random.default_rng(7)
    a = rng.normal(5, 1, 20)
    c = unc.paired_permutation(a, a - 3)  # 2^20 flips > PERMUTATIONS: Monte Carlo, at its floor
    assert c.test == "permutation (Monte Carlo)" and unc.at_resolution(c.test, c.p)
    assert c.p == pytest.approx(2 / (unc.PERMUTATIONS + 1))
    holmed = replace(c, p_adjusted=c.p * 200)  # a long table: the floor times m is still a bound
    assert unc.verdict(holmed, +1) == "holds (p <= 0.004 (Monte-Carlo resolution))"
    assert not unc.at_resolution("permutation", c.p)


def entry(correct, success, l2, p_mis=None, rel=None):
    n = len(correct)
    return {"correct": list(correct), "success": list(success), "l2": list(l2),
            "p_misclassified": list(p_mis if p_mis is not None else np.asarray(success, float)),
            "rel_l2": list(rel if rel is not None else np.asarray(l2) / 10),
            "chunk_images": [n // 2, n - n // 2], "chunk_seconds": [1.0, 2.0]}


def test_analysis_uses_the_test_fit_for_each_metric():
    rng = np.random.default_rng(8)
    n = 60
    ca, cb = rng.random(n) < 0.9, rng.random(n) < 0.9
    sa, sb = ca & (rng.random(n) < 0.5), cb & (rng.random(n) < 0.8)
    la, lb = rng.gamma(3, 1, n), rng.gamma(3, 1, n)
    ea, eb = entry(ca, sa, la), entry(cb, sb, lb)
    both = ca & cb
    s = analysis.compare(ea, eb, "success_rate")
    assert s.test == "exact McNemar" and s.n == both.sum()
    assert (s.b, s.c) == ((sa & ~sb & both).sum(), (~sa & sb & both).sum())
    m = analysis.compare(ea, eb, "median_l2")  # censored: every image both classify correctly, fooled or not
    assert m.test == "Wilcoxon signed-rank" and m.n == both.sum()
    assert m.difference is None or m.difference > 0  # A is fooled on fewer images: its minimal norms read larger
    r = analysis.compare(ea, eb, "robustness")  # rho over the images both attacks fooled
    assert r.test == "Wilcoxon signed-rank" and r.n == (sa & sb).sum()
    t = analysis.compare(ea, eb, "seconds_per_image")  # two chunks: below MIN_PAIRED, not testable
    assert t.test == "permutation" and t.p is None and unc.verdict(t, +1) == "not testable at this n"
    key = analysis._key
    rows = analysis.comparison_rows([(key("success_rate", "x"), "A", "B", s), (key("median_l2", "x"), "A", "B", m),
                                     (key("seconds_per_image", "x"), "A", "B", t)])
    assert (rows[0]["metric"], rows[0]["attack"]) == ("success_rate", "x")  # fields, not a "metric:attack" string
    assert all(r["verdict"].startswith(("holds", "reversed", "not distinguishable", "not testable")) for r in rows)
    assert (rows[0]["a"], rows[0]["b"]) == ("A", "B")  # the models' names, not overwritten by the counts
    assert (rows[0]["discordant_b"], rows[0]["discordant_c"]) == (s.b, s.c) and rows[0]["test"] == "exact McNemar"
    assert rows[2]["p_adjusted"] is None


def test_one_chunk_is_not_testable_rather_than_an_error():
    from genrobust import uncertainty as unc
    c = unc.paired_permutation([1.0], [2.0])
    assert c.p is None and c.difference == -1.0 and unc.verdict(c, +1) == "not testable at this n"
