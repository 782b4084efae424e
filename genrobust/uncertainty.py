"""Uncertainty for the numbers the study reports: intervals, paired comparisons, Holm correction, verdicts.

- A rate (accuracy, success, robust accuracy, detection rate, FPR) gets a Wilson 95% interval
  (``scipy.stats.binomtest``), exact enough at the n of a study and sensible at 0 or n successes.
- A per-image statistic (rho, a median norm, an AUC) gets a bootstrap interval over images
  (``scipy.stats.bootstrap``, BCa; the percentile method where BCa is undefined, e.g. on constant data).
- Two models compared on the same test images get an exact or rank test fit for the data, paired per image
  so that image difficulty cancels: paired binary outcomes an exact McNemar test (``mcnemar``: b, c and a
  Newcombe interval for the difference of rates), paired continuous values a Wilcoxon signed-rank test
  (``signed_rank``; an image the attack never fooled counts as +inf, never dropped), a few paired timings a
  sign-flip permutation test (``paired_permutation``, exact enumeration at small n). No p-value is a
  resampling floor: the bootstrap (``paired``) only gives intervals of non-rate statistics, and a descriptive
  comparison (an AUC) has no p. p-values of one table are Holm-corrected (``statsmodels``). A verdict then
  reads "holds", "reversed", "not distinguishable at this n" with the smallest difference the comparison
  could have detected (80% power) at the Holm-adjusted level, or "descriptive (no test)".
"""

from __future__ import annotations

import inspect
import warnings
from dataclasses import asdict, dataclass, replace
from typing import Callable, Sequence

import numpy as np
from scipy import stats
from statsmodels.stats.multitest import multipletests

from genrobust.errors import GenrobustError

CONFIDENCE = 0.95
ALPHA = 1 - CONFIDENCE
N_RESAMPLES = 2000
POWER = 0.8
MIN_PAIRED = 5  # fewer shared images (or chunks) than this: a bootstrap over them says nothing (no interval)
PERMUTATIONS = 100_000  # Monte-Carlo sign flips: resolution 2 / 100,001, far below any adjusted level used
MCNEMAR, SIGNED_RANK, PERMUTATION = "exact McNemar", "Wilcoxon signed-rank", "permutation"
MONTE_CARLO = "permutation (Monte Carlo)"


@dataclass(frozen=True)
class Estimate:
    """A value with its 95% interval and the number of observations behind it (value None when n = 0)."""

    value: float | None
    low: float | None
    high: float | None
    n: int

    def as_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        return format_estimate(self)


def format_estimate(e: Estimate, digits: int = 3) -> str:
    """``value [low, high] (n N)``, or ``– (n 0)``."""
    if e.value is None:
        return f"– (n {e.n})"
    return f"{e.value:.{digits}f} [{e.low:.{digits}f}, {e.high:.{digits}f}] (n {e.n})"


def rate(successes: int, n: int) -> Estimate:
    """A proportion with its Wilson 95% interval."""
    successes, n = int(successes), int(n)
    if n < 0 or not 0 <= successes <= max(n, 0):
        raise GenrobustError(f"a rate needs 0 <= successes <= n, got {successes} of {n}")
    if n == 0:
        return Estimate(None, None, None, 0)
    ci = stats.binomtest(successes, n).proportion_ci(confidence_level=CONFIDENCE, method="wilson")
    return Estimate(successes / n, float(ci.low), float(ci.high), n)


def proportion(flags: Sequence[bool] | np.ndarray) -> Estimate:
    flags = np.asarray(flags, dtype=bool)
    return rate(int(flags.sum()), len(flags))


def bootstrap(values: Sequence[float] | np.ndarray, statistic: Callable = np.mean, seed: int = 0,
              n_resamples: int = N_RESAMPLES) -> Estimate:
    """``statistic`` of per-image values with a bootstrap 95% interval over the images. A statistic that takes
    ``axis`` (np.mean, np.median) is evaluated on batches of resamples at once."""
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    if len(x) == 0:
        return Estimate(None, None, None, 0)
    value = float(statistic(x))
    if len(x) == 1 or np.all(x == x[0]):  # no spread to resample: the interval is the point
        return Estimate(value, value, value, len(x))
    vectorized = _takes_axis(statistic)
    # batch bounds memory: BCa's jackknife is n leave-one-out samples of n - 1 values
    kw = dict(confidence_level=CONFIDENCE, n_resamples=n_resamples, vectorized=vectorized, batch=max(1, 10**6 // len(x)))
    res = stats.bootstrap((x,), statistic, method="BCa", random_state=np.random.default_rng(seed), **kw)
    low, high = res.confidence_interval
    if not (np.isfinite(low) and np.isfinite(high)):  # BCa undefined (e.g. a degenerate jackknife)
        res = stats.bootstrap((x,), statistic, method="percentile", random_state=np.random.default_rng(seed), **kw)
        low, high = res.confidence_interval
    return Estimate(value, float(low), float(high), len(x))


def _takes_axis(fn: Callable) -> bool:
    try:
        return "axis" in inspect.signature(fn).parameters
    except (TypeError, ValueError):  # builtins without a signature
        return False


@dataclass(frozen=True)
class Comparison:
    """Model A minus model B on the same images."""

    difference: float | None
    low: float | None
    high: float | None
    p: float | None
    n: int
    detectable: float | None  # smallest |difference| detectable at 80% power, 5% level, at this n
    p_adjusted: float | None = None  # after Holm across the table's rows
    b: int | None = None  # binary outcomes: images where only A holds ...
    c: int | None = None  # ... and where only B holds (the discordant pairs McNemar tests)
    test: str | None = None  # the test behind p; None: descriptive (no p) or the earlier bootstrap p
    detectable_adjusted: float | None = None  # the same at the Bonferroni level alpha / m of the table's m tests

    def as_dict(self) -> dict:
        # JSON has no infinity (the web page parses results.json): a median beyond every measured norm is None
        return {k: (None if isinstance(v, float) and not np.isfinite(v) else v) for k, v in asdict(self).items()}


Statistic = Callable[[np.ndarray], float]  # per-model statistic of a resampled image index array
BLOCK = 100  # resamples evaluated at once by a vectorised statistic (100 x 10,000 images: 8 MB of indices)


@np.errstate(invalid="ignore")  # inf - inf (both medians beyond every measured norm): NaN, undefined
def paired(stat_a: Statistic, stat_b: Statistic, n: int, seed: int = 0,
           n_resamples: int = N_RESAMPLES, vectorized: bool = False) -> Comparison:
    """Paired bootstrap interval of stat_a - stat_b over n shared images, and no p-value: a p from resampling
    is floored by the number of resamples and anti-conservative at small n, so tests are exact or rank tests
    (``mcnemar``, ``signed_rank``, ``paired_permutation``) and this gives intervals of non-rate statistics
    only. Each statistic receives an array of image indices (with repeats) and returns its value on those
    images, or NaN when undefined there (e.g. rho of a resample without successes; such resamples are
    dropped); +inf (a median beyond every measured norm) is kept. ``vectorized`` statistics receive a
    (resamples, n) index array and return one value per row. Below MIN_PAIRED images only the observed
    difference is returned. ``detectable`` is the normal approximation (z_0.975 + z_0.8) x the bootstrap
    standard error."""
    if n < 1:
        return Comparison(None, None, None, None, 0, None)
    everything = np.arange(n)
    observed = float(np.squeeze(stat_a(everything[None] if vectorized else everything))
                     - np.squeeze(stat_b(everything[None] if vectorized else everything)))
    if np.isnan(observed):  # undefined (inf - inf: both medians beyond every measured norm)
        return Comparison(None, None, None, None, n, None)
    if n < MIN_PAIRED:
        return Comparison(observed, None, None, None, n, None)
    rng = np.random.default_rng(seed)
    if vectorized:
        parts = []
        for start in range(0, n_resamples, BLOCK):
            idx = rng.integers(0, n, size=(min(BLOCK, n_resamples - start), n))
            parts.append(np.asarray(stat_a(idx), dtype=float) - np.asarray(stat_b(idx), dtype=float))
        diffs = np.concatenate(parts)
    else:
        diffs = np.array([stat_a(idx) - stat_b(idx) for idx in rng.integers(0, n, size=(n_resamples, n))])
    diffs = diffs[~np.isnan(diffs)]
    if len(diffs) < n_resamples // 2:
        return Comparison(float(observed), None, None, None, n, None)
    # order statistics, not interpolation: an infinite resampled difference stays infinite, never NaN
    low, high = np.quantile(diffs, ALPHA / 2, method="lower"), np.quantile(diffs, 1 - ALPHA / 2, method="higher")
    spread = diffs.std(ddof=1) if np.isfinite(diffs).all() else np.nan
    detectable = float(_z(ALPHA) * spread) if np.isfinite(spread) else None
    return Comparison(float(observed), float(low), float(high), None, n, detectable)


def _z(alpha: float) -> float:
    """z_{1 - alpha/2} + z_power: a two-sided normal test at level alpha with POWER."""
    return float(stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(POWER))


def ratio_statistic(values, weights=None) -> Statistic:
    """Vectorised sum(values * weights) / sum(weights) over resampled images (a rate over a mask, a mean
    over the successful images); NaN where the resample has no weight."""
    v = np.asarray(values, dtype=float)
    w = np.ones_like(v) if weights is None else np.asarray(weights, dtype=float)
    v = np.where(w > 0, v, 0.0)  # values outside the mask may be undefined

    def stat(idx: np.ndarray) -> np.ndarray:
        den = w[idx].sum(-1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(den > 0, (v[idx] * w[idx]).sum(-1) / np.where(den > 0, den, 1), np.nan)
    return stat


def median_statistic(values, mask) -> Statistic:
    """Vectorised median of ``values`` over the masked resampled images (NaN where none is masked)."""
    v = np.where(np.asarray(mask, dtype=bool), np.asarray(values, dtype=float), np.nan)

    def stat(idx: np.ndarray) -> np.ndarray:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows: undefined, dropped by paired()
            return np.nanmedian(v[idx], axis=-1)
    return stat


def auc(negatives, positives, seed: int = 0, n_resamples: int = 1000) -> Estimate:
    """Area under the ROC curve (positives should score higher) with a bootstrap 95% interval that resamples
    both groups; the AUC is the Mann-Whitney U over n_neg x n_pos (ties count one half)."""
    neg, pos = np.asarray(negatives, dtype=float), np.asarray(positives, dtype=float)
    if len(neg) == 0 or len(pos) == 0:
        return Estimate(None, None, None, len(pos))

    def u(a, b, axis=-1):
        return stats.mannwhitneyu(b, a, axis=axis).statistic / (a.shape[axis] * b.shape[axis])

    value = float(u(neg, pos))
    if len(neg) < 2 or len(pos) < 2:
        return Estimate(value, value, value, len(pos))
    res = stats.bootstrap((neg, pos), u, confidence_level=CONFIDENCE, n_resamples=n_resamples, method="percentile",
                          random_state=np.random.default_rng(seed), vectorized=True, batch=50)
    low, high = res.confidence_interval
    return Estimate(value, float(low), float(high), len(pos))


def _pair(a, b, mask, dtype) -> tuple[np.ndarray, np.ndarray]:
    """A's and B's per-image values on the same images, restricted to ``mask``."""
    a, b = np.asarray(a, dtype=dtype), np.asarray(b, dtype=dtype)
    if a.shape != b.shape:
        raise GenrobustError(f"paired values need the same images, got {a.shape} and {b.shape}")
    if mask is not None:
        keep = np.asarray(mask, dtype=bool)
        a, b = a[keep], b[keep]
    return a, b


def mcnemar(a: Sequence[bool], b: Sequence[bool], mask: Sequence[bool] | None = None) -> Comparison:
    """Paired binary outcomes of A and B on the same images (restricted to ``mask``, e.g. both correct) by the
    exact McNemar test: under the null each of the b + c discordant images (b: A's only, c: B's only) is A's
    or B's with probability one half, so p is the two-sided binomial test of b in b + c (b = c = 0: p = 1).
    difference = rate(A) - rate(B) = (b - c) / n, with Newcombe's hybrid score interval for paired data
    (statsmodels has one only for independent samples); ``detectable``: ``mcnemar_detectable``."""
    a, b = _pair(a, b, mask, bool)
    n, only_a, only_b = len(a), int((a & ~b).sum()), int((~a & b).sum())
    if n == 0:
        return Comparison(None, None, None, None, 0, None, b=0, c=0, test=MCNEMAR)
    p = 1.0 if only_a + only_b == 0 else float(stats.binomtest(only_a, only_a + only_b, 0.5).pvalue)
    low, high = newcombe(int((a & b).sum()), only_a, only_b, n)
    return Comparison((only_a - only_b) / n, low, high, p, n, mcnemar_detectable(n, only_a + only_b),
                      b=only_a, c=only_b, test=MCNEMAR)


def paired_rates(a: Sequence[bool], b: Sequence[bool], mask: Sequence[bool] | None = None, seed: int = 0,
                 n_resamples: int = N_RESAMPLES) -> Comparison:
    """The earlier name of ``mcnemar`` (seed and n_resamples are ignored: the test is exact)."""
    return mcnemar(a, b, mask)


def newcombe(both: int, only_a: int, only_b: int, n: int) -> tuple[float, float]:
    """95% interval of rate(A) - rate(B) on n paired images (Newcombe 1998, Stat. Med. 17:2635, method 10):
    each rate's Wilson limits, squared and added with the estimated correlation phi of the two rates, whose
    numerator AD - BC is continuity-corrected by n / 2 (and phi = 0 when a margin is empty)."""
    neither = n - both - only_a - only_b
    pa, pb = (both + only_a) / n, (both + only_b) / n
    ea, eb = rate(both + only_a, n), rate(both + only_b, n)
    margins = (both + only_a) * (only_b + neither) * (both + only_b) * (only_a + neither)
    ad_bc = both * neither - only_a * only_b
    phi = 0.0 if margins == 0 or 0 <= ad_bc <= n / 2 else (ad_bc - n / 2 if ad_bc > 0 else ad_bc) / np.sqrt(margins)

    def spread(x: float, y: float) -> float:  # x, y: the two rates' distances to their opposite limits
        return float(np.sqrt(x * x - 2 * phi * x * y + y * y))

    d = pa - pb
    return (max(-1.0, d - spread(pa - ea.low, eb.high - pb)), min(1.0, d + spread(pb - eb.low, ea.high - pa)))


def mcnemar_detectable(n: int, discordant: int, alpha: float = ALPHA) -> float | None:
    """Smallest |rate difference| that McNemar's test detects with 80% power at level alpha, by the normal
    approximation to its statistic with the observed discordant rate psi = (b + c) / n as the variance both
    under the null and the alternative: (z_{1-alpha/2} + z_0.8) sqrt(psi / n), an upper bound (the
    alternative's variance psi - difference^2 is smaller). Without discordant pairs psi = 1 / n, the rate at
    which one would be expected. Never below k / n, k the fewest discordant pairs, all one way, whose exact
    p = 2^(1-k) is below alpha: no smaller difference can be significant at this n at all (above 1: none can)."""
    if n < 1:
        return None
    k = np.floor(np.log2(2 / alpha)) + 1
    return float(max(_z(alpha) * np.sqrt(max(discordant, 1) / n / n), k / n))


def _index_statistic(values: np.ndarray, statistic: Callable) -> Statistic:
    return lambda idx: statistic(values[idx], axis=-1)


def signed_rank(a: Sequence[float], b: Sequence[float], mask: Sequence[bool] | None = None,
                statistic: Callable = np.median, seed: int = 0, n_resamples: int = N_RESAMPLES) -> Comparison:
    """Paired continuous values of A and B on the same images (restricted to ``mask``) by the two-sided
    Wilcoxon signed-rank test (scipy: exact at small n without ties, a permutation at n <= 13 with ties,
    else the normal approximation). A NaN pair (undefined) is dropped, and n counts the pairs used.
    Censoring: +inf is an image the attack never fooled, its minimal norm above anything measured; it is
    never dropped: inf - x ranks above every finite difference and inf vs inf is a tie.
    difference = statistic(A) - statistic(B) over the used pairs (median, or mean for a mean metric) with a
    paired bootstrap percentile interval. With a median it is inf-aware: +inf (-inf) when only A's (B's)
    median is infinite, i.e. over half its images were never fooled, the direction known and the size not
    (None in ``as_dict``); undefined when both are: then no difference and no test. All differences 0: p = 1."""
    a, b = _pair(a, b, mask, float)
    if np.isneginf(a).any() or np.isneginf(b).any():
        raise GenrobustError("censored values are +inf (never fooled), not -inf")
    keep = ~(np.isnan(a) | np.isnan(b))
    a, b = a[keep], b[keep]
    ci = paired(_index_statistic(a, statistic), _index_statistic(b, statistic), len(a), seed, n_resamples,
                vectorized=True)
    if ci.difference is None:
        return replace(ci, test=SIGNED_RANK)
    d = np.subtract(*_uncensor(a, b))
    return replace(ci, p=1.0 if not d.any() else float(stats.wilcoxon(d).pvalue), test=SIGNED_RANK)


def _uncensor(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """+inf on both sides replaced by one common finite value, far enough above every finite value that
    top - x exceeds every finite difference: the signed ranks are those of the censored data (inf vs inf 0)."""
    finite = np.concatenate([a[np.isfinite(a)], b[np.isfinite(b)]])
    lo, hi = (finite.min(), finite.max()) if len(finite) else (0.0, 0.0)
    top = hi + (hi - lo) + 1.0
    return np.where(np.isposinf(a), top, a), np.where(np.isposinf(b), top, b)


def _mean_difference(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(x - y, axis=axis)


def paired_permutation(a: Sequence[float], b: Sequence[float], seed: int = 0) -> Comparison:
    """Mean paired difference of A and B (e.g. seconds per image, per chunk of the same images) by a two-sided
    sign-flip permutation test (``scipy.stats.permutation_test``, permutation_type="samples": under the null
    the two values of a pair are exchangeable). Exact, all 2^n flips, when 2^n <= PERMUTATIONS (test
    "permutation"); else PERMUTATIONS random flips (test "permutation (Monte Carlo)"), whose smallest p,
    2 / (PERMUTATIONS + 1), is only a bound and reads as one ("p <= ..." in ``verdict``; ``at_resolution``).
    Interval: paired bootstrap. NaN pairs are dropped."""
    a, b = _pair(a, b, None, float)
    keep = ~(np.isnan(a) | np.isnan(b))
    a, b = a[keep], b[keep]
    n = len(a)
    ci = paired(_index_statistic(a, np.mean), _index_statistic(b, np.mean), n, seed, vectorized=True)
    test = PERMUTATION if 2 ** n <= PERMUTATIONS else MONTE_CARLO
    if ci.difference is None or n < MIN_PAIRED:  # too few pairs to test (scipy needs two; MIN_PAIRED is ours)
        return replace(ci, test=test)
    if not np.any(a - b):
        return replace(ci, p=1.0, test=test)
    res = stats.permutation_test((a, b), _mean_difference, permutation_type="samples", vectorized=True,
                                 n_resamples=PERMUTATIONS, batch=max(1, 10**6 // n),
                                 random_state=np.random.default_rng(seed))
    return replace(ci, p=float(res.pvalue), test=test)


def at_resolution(test: str | None, p: float | None) -> bool:
    """A Monte-Carlo permutation p at its floor 2 / (PERMUTATIONS + 1): a bound, not a value."""
    return test == MONTE_CARLO and p is not None and p <= 2 / (PERMUTATIONS + 1) * (1 + 1e-9)


def holm(comparisons: list[Comparison]) -> list[Comparison]:
    """The same comparisons with Holm-adjusted p-values and ``detectable_adjusted``: the smallest detectable
    difference at the Bonferroni level alpha / m of the m rows with a p (Holm's first, strictest step, so a
    conservative bound), McNemar's recomputed from n and b + c, the others' normal approximations rescaled.
    Rows without a p-value are left as they are."""
    tested = [i for i, c in enumerate(comparisons) if c.p is not None]
    out = list(comparisons)
    if tested:
        adjusted = multipletests([comparisons[i].p for i in tested], alpha=ALPHA, method="holm")[1]
        level = ALPHA / len(tested)
        for i, p in zip(tested, adjusted):
            c = comparisons[i]
            out[i] = replace(c, p_adjusted=float(p), detectable_adjusted=_detectable_at(c, level))
    return out


def _detectable_at(c: Comparison, alpha: float) -> float | None:
    if c.test == MCNEMAR and c.b is not None and c.c is not None:
        return mcnemar_detectable(c.n, c.b + c.c, alpha)
    return None if c.detectable is None else c.detectable * _z(alpha) / _z(ALPHA)


def verdict(c: Comparison, expected_sign: int, alpha: float = ALPHA) -> str:
    """Whether a comparison supports the expected direction (+1: A above B, -1: A below B)."""
    p = c.p_adjusted if c.p_adjusted is not None else c.p
    if c.difference is None:
        return "not testable at this n" if c.n < 1 else "not testable (the difference is undefined)"
    if p is None:
        return "descriptive (no test)" if c.test is None else "not testable at this n"
    text = _p(p, at_resolution(c.test, c.p))
    if p < alpha and c.difference != 0:
        word = "holds" if np.sign(c.difference) == np.sign(expected_sign) else "reversed"
        return f"{word} ({text})"
    if c.detectable_adjusted is not None:
        return f"not distinguishable at this n ({text}; smallest detectable difference at the adjusted level " \
               f"{c.detectable_adjusted:.3g})"
    detect = f"{c.detectable:.3g}" if c.detectable is not None else "unknown"
    return f"not distinguishable at this n ({text}; smallest detectable difference {detect})"


def _p(p: float, bound: bool = False) -> str:
    """A Monte-Carlo p at its resolution reads as the bound it is, never as a value."""
    if p < 0.001:
        return "p < 0.001"
    return f"p <= {p:.3f} (Monte-Carlo resolution)" if bound else f"p = {p:.3f}"
