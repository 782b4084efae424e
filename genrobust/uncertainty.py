"""Uncertainty for the numbers the study reports: intervals, paired comparisons, Holm correction, verdicts.

- A rate (accuracy, success, robust accuracy, detection rate, FPR) gets a Wilson 95% interval
  (``scipy.stats.binomtest``), exact enough at the n of a study and sensible at 0 or n successes.
- A per-image statistic (rho, a median norm, an AUC) gets a bootstrap interval over images
  (``scipy.stats.bootstrap``, BCa; the percentile method where BCa is undefined, e.g. on constant data).
- Two models compared on the same test images get a *paired* bootstrap: images are resampled once and both
  models' statistics are recomputed on the same resample, so image difficulty cancels. The p-value comes
  from the resampled differences shifted to the null; p-values of one table are Holm-corrected
  (``statsmodels``). A verdict then reads "holds", "reversed" or "not distinguishable at this n" with the
  smallest difference the comparison could have detected (80% power at the 5% level).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import numpy as np
from scipy import stats
from statsmodels.stats.multitest import multipletests

from genrobust.errors import GenrobustError

CONFIDENCE = 0.95
ALPHA = 1 - CONFIDENCE
N_RESAMPLES = 2000
POWER = 0.8


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
    """``statistic`` of per-image values with a bootstrap 95% interval over the images."""
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    if len(x) == 0:
        return Estimate(None, None, None, 0)
    value = float(statistic(x))
    if len(x) == 1 or np.all(x == x[0]):  # no spread to resample: the interval is the point
        return Estimate(value, value, value, len(x))
    rng = np.random.default_rng(seed)
    res = stats.bootstrap((x,), statistic, confidence_level=CONFIDENCE, n_resamples=n_resamples, method="BCa",
                          random_state=rng, vectorized=False)
    low, high = res.confidence_interval
    if not (np.isfinite(low) and np.isfinite(high)):  # BCa undefined (e.g. a degenerate jackknife)
        res = stats.bootstrap((x,), statistic, confidence_level=CONFIDENCE, n_resamples=n_resamples,
                              method="percentile", random_state=np.random.default_rng(seed), vectorized=False)
        low, high = res.confidence_interval
    return Estimate(value, float(low), float(high), len(x))


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

    def as_dict(self) -> dict:
        return asdict(self)


Statistic = Callable[[np.ndarray], float]  # per-model statistic of a resampled image index array


def paired(stat_a: Statistic, stat_b: Statistic, n: int, seed: int = 0,
           n_resamples: int = N_RESAMPLES) -> Comparison:
    """Paired bootstrap of stat_a - stat_b over n shared images. Each statistic receives an array of image
    indices (with repeats) and returns its value on those images, or NaN when undefined there (e.g. rho of
    a resample without successes; such resamples are dropped)."""
    if n < 1:
        return Comparison(None, None, None, None, 0, None)
    everything = np.arange(n)
    observed = stat_a(everything) - stat_b(everything)
    if not np.isfinite(observed):
        return Comparison(None, None, None, None, n, None)
    rng = np.random.default_rng(seed)
    diffs = np.array([stat_a(idx) - stat_b(idx) for idx in rng.integers(0, n, size=(n_resamples, n))])
    diffs = diffs[np.isfinite(diffs)]
    if len(diffs) < n_resamples // 2:
        return Comparison(float(observed), None, None, None, n, None)
    low, high = np.quantile(diffs, [ALPHA / 2, 1 - ALPHA / 2])
    spread = diffs.std(ddof=1)
    if spread == 0:  # identical on every resample: no evidence of any difference, or an exact one
        p = 1.0 if observed == 0 else 0.0
    else:
        # shift the resampled differences to the null (mean 0) and ask how often one is as extreme
        p = float((np.sum(np.abs(diffs - diffs.mean()) >= abs(observed)) + 1) / (len(diffs) + 1))
    z = stats.norm.ppf(1 - ALPHA / 2) + stats.norm.ppf(POWER)
    return Comparison(float(observed), float(low), float(high), p, n, float(z * spread))


def paired_rates(a: Sequence[bool], b: Sequence[bool], mask: Sequence[bool] | None = None, seed: int = 0,
                 n_resamples: int = N_RESAMPLES) -> Comparison:
    """Paired comparison of two per-image success flags (rate over ``mask``, e.g. correctly classified)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.shape != b.shape:
        raise GenrobustError(f"paired flags need the same images, got {a.shape} and {b.shape}")
    m = np.ones(len(a), dtype=bool) if mask is None else np.asarray(mask, dtype=bool)

    def over(flags):
        return lambda idx: flags[idx][m[idx]].mean() if m[idx].any() else np.nan

    return paired(over(a), over(b), len(a), seed, n_resamples)


def holm(comparisons: list[Comparison]) -> list[Comparison]:
    """The same comparisons with Holm-adjusted p-values (those without a p-value are left as they are)."""
    tested = [i for i, c in enumerate(comparisons) if c.p is not None]
    out = list(comparisons)
    if tested:
        adjusted = multipletests([comparisons[i].p for i in tested], alpha=ALPHA, method="holm")[1]
        for i, p in zip(tested, adjusted):
            out[i] = Comparison(**{**comparisons[i].as_dict(), "p_adjusted": float(p)})
    return out


def verdict(c: Comparison, expected_sign: int, alpha: float = ALPHA) -> str:
    """Whether a comparison supports the expected direction (+1: A above B, -1: A below B)."""
    p = c.p_adjusted if c.p_adjusted is not None else c.p
    if c.difference is None or p is None:
        return "not testable at this n"
    if p < alpha and c.difference != 0:
        word = "holds" if np.sign(c.difference) == np.sign(expected_sign) else "reversed"
        return f"{word} ({_p(p)})"
    detect = f"{c.detectable:.3g}" if c.detectable is not None else "unknown"
    return f"not distinguishable at this n ({_p(p)}; smallest detectable difference {detect})"


def _p(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"
