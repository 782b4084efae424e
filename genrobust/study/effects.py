"""The primary endpoint's effect, per replicate pair and pooled, and the pre-declared secondary family.

A *pair* is a generative and a discriminative model of one training seed (GFZ seed k against DFZ seed k). Per
pair the effect is the difference in robust accuracy on the same test images, tested by the exact McNemar
test on the discordant images (b: robust on the generative model only, c: on the discriminative only).

Pooled over pairs, the effect is the mean of the pairs' differences. Its interval comes from a two-level
bootstrap (resample the pairs, then the images, one image resample shared by every pair since they are the
same images), so it widens with the variance between training seeds, which no image bootstrap of one
checkpoint can see. Its p-value is a Wilcoxon signed-rank test over images of the per-image sum of the pairs'
differences: the image is the unit, so an image that is hard for every seed counts once (with one pair,
the exact McNemar p). Neither is a resampling floor.

With more than one structure of a kind (``--models all``) the pairs stay one structure against one: GFZ
against DFZ, the study's question, when both ran, else the first of each kind in the run's order. The other
models' robust accuracies are reported beside them, not tested: twenty "pairs" of four generative structures
against one DFZ would share its seeds and shrink the interval with no new training run.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from pydantic import BaseModel, Field
from scipy import stats

from genrobust import uncertainty as unc
from genrobust.study.primary import ModelRun

N_BOOT = 2000
DETECT_TARGET = 0.03  # the difference the primary endpoint should be able to detect for a "strong" answer


class Interval(BaseModel):
    value: float | None
    low: float | None = None
    high: float | None = None
    n: int = 0


class PairEffect(BaseModel):
    generative: str
    discriminative: str
    seed: int | None
    generative_rate: Interval
    discriminative_rate: Interval
    difference: float | None
    low: float | None
    high: float | None
    p: float | None
    b: int | None = None
    c: int | None = None
    n: int
    test: str | None = None
    detectable: float | None = None


class Effect(BaseModel):
    """One endpoint: per pair and pooled, generative minus discriminative (positive: the generative model is
    more robust)."""

    key: str = Field(description="Stable identifier, e.g. 'primary', 'linf-0.05', 'area', 'l2-1', 'all-correct'.")
    title: str
    primary: bool = False
    pairs: list[PairEffect]
    difference: float | None
    low: float | None
    high: float | None
    p: float | None
    p_adjusted: float | None = None
    n_images: int
    n_pairs: int
    test: str | None
    detectable: float | None = Field(None, description="Smallest pooled difference detectable at 80% power, 5% level.")
    detectable_adjusted: float | None = Field(None, description="The same at the family's adjusted level (secondary "
                                                                "endpoints: Bonferroni alpha / m, Holm's strictest step).")
    note: str = ""

    def holds_every_pair(self) -> bool:
        return bool(self.pairs) and all(p.low is not None and p.low > 0 for p in self.pairs)


PRIMARY_STRUCTURES = ("GFZ", "DFZ")  # the pair the study asks about, when a run holds more structures


def _primary_structure(candidates: list[ModelRun], preferred: str) -> list[ModelRun]:
    """The runs of one structure of a kind: ``preferred`` if any ran, else the first in the run's order."""
    if not candidates:
        return []
    chosen = preferred if any(r.structure == preferred for r in candidates) else candidates[0].structure
    return [r for r in candidates if r.structure == chosen]


def _compared(runs: dict[str, ModelRun], generative: bool, matched: bool = False) -> list[ModelRun]:
    return _primary_structure([r for r in runs.values() if (r.kind == "generative") == generative
                               and (r.matched_to is not None) == matched],
                              PRIMARY_STRUCTURES[0 if generative else 1])


def replicate_pairs(runs: dict[str, ModelRun]) -> list[tuple[str, str]]:
    """(generative, discriminative) of each training seed both compared structures have (module docstring),
    matched checkpoints excluded; a run without seeds pairs its models in order."""
    gen, dis = _compared(runs, True), _compared(runs, False)
    by_seed = {r.seed: r.name for r in dis}
    pairs = [(g.name, by_seed[g.seed]) for g in gen if g.seed in by_seed]
    return pairs or [(g.name, d.name) for g, d in zip(gen, dis)]


def matched_pairs(runs: dict[str, ModelRun]) -> list[tuple[str, str]]:
    """(generative, accuracy-matched discriminative) pairs: each matched checkpoint of the compared structure
    against the generative model of its seed (or the first generative model)."""
    gen = {r.seed: r.name for r in _compared(runs, True)}
    first = next(iter(gen.values()), None)
    return [(gen.get(r.seed, first), r.name) for r in _compared(runs, False, matched=True) if first is not None]


def two_level(d: np.ndarray, seed: int = 0, n_boot: int = N_BOOT) -> tuple[float, float, float]:
    """95% percentile interval and SD of the mean of ``d`` (pairs x images) under a two-level bootstrap:
    pairs resampled with replacement, then images (one resample shared by the pairs: the same images)."""
    k, n = d.shape
    rng = np.random.default_rng(seed)
    ks = rng.integers(0, k, size=(n_boot, k))
    counts = np.stack([np.bincount(rng.integers(0, n, n), minlength=n) for _ in range(n_boot)])  # (B, n)
    per_pair = counts @ d.T / n  # (B, k): each pair's mean on the image resample
    means = np.take_along_axis(per_pair, ks, 1).mean(1)
    low, high = np.quantile(means, [unc.ALPHA / 2, 1 - unc.ALPHA / 2])
    return float(low), float(high), float(means.std(ddof=1))


def _signed_rank_p(sums: np.ndarray) -> float:
    if not np.any(sums != 0):
        return 1.0
    return float(stats.wilcoxon(sums, zero_method="wilcox").pvalue)


def _interval(e: unc.Estimate) -> Interval:
    return Interval(value=e.value, low=e.low, high=e.high, n=e.n)


def binary_effect(key: str, title: str, runs: dict[str, ModelRun], pairs: list[tuple[str, str]],
                  flags: Callable[[ModelRun], np.ndarray | None], mask: np.ndarray | None = None,
                  seed: int = 0, primary: bool = False, note: str = "") -> Effect | None:
    """A robust-or-not endpoint: exact McNemar per pair, pooled over pairs (module docstring)."""
    per, diffs = [], []
    for g, d in pairs:
        fg, fd = flags(runs[g]), flags(runs[d])
        if fg is None or fd is None:
            continue
        n = min(len(fg), len(fd))
        fg, fd = np.asarray(fg[:n], bool), np.asarray(fd[:n], bool)
        m = np.ones(n, bool) if mask is None else np.asarray(mask[:n], bool)
        c = unc.mcnemar(fg, fd, mask=m)
        per.append(PairEffect(generative=g, discriminative=d, seed=runs[g].seed,
                              generative_rate=_interval(unc.proportion(fg[m])),
                              discriminative_rate=_interval(unc.proportion(fd[m])),
                              difference=c.difference, low=c.low, high=c.high, p=c.p, b=c.b, c=c.c, n=c.n,
                              test=c.test, detectable=c.detectable))
        diffs.append((fg[m].astype(float) - fd[m].astype(float)))
    return _pooled(key, title, per, diffs, seed, primary, note)


def continuous_effect(key: str, title: str, runs: dict[str, ModelRun], pairs: list[tuple[str, str]],
                      values: Callable[[ModelRun], np.ndarray], seed: int = 0, note: str = "") -> Effect | None:
    """A per-image continuous endpoint (the area under the robust-accuracy curve): Wilcoxon per pair, pooled."""
    per, diffs = [], []
    for g, d in pairs:
        vg, vd = values(runs[g]), values(runs[d])
        n = min(len(vg), len(vd))
        vg, vd = vg[:n], vd[:n]
        diff = vg - vd
        p = _signed_rank_p(diff) if n >= unc.MIN_PAIRED else None
        lo, hi, sd = two_level(diff[None], seed) if n >= unc.MIN_PAIRED else (None, None, None)
        per.append(PairEffect(generative=g, discriminative=d, seed=runs[g].seed,
                              generative_rate=_interval(unc.bootstrap(vg, np.mean, seed)),
                              discriminative_rate=_interval(unc.bootstrap(vd, np.mean, seed)),
                              difference=float(diff.mean()), low=lo, high=hi, p=p, n=n,
                              test="Wilcoxon signed-rank" if p is not None else None,
                              detectable=None if sd is None else _detectable(sd)))
        diffs.append(diff)
    return _pooled(key, title, per, diffs, seed, False, note)


def _detectable(sd: float) -> float:
    return float((stats.norm.ppf(1 - unc.ALPHA / 2) + stats.norm.ppf(unc.POWER)) * sd)


def _pooled(key: str, title: str, per: list[PairEffect], diffs: list[np.ndarray], seed: int, primary: bool,
            note: str) -> Effect | None:
    if not per:
        return None
    n = min(len(x) for x in diffs)
    d = np.stack([x[:n] for x in diffs])
    common = dict(key=key, title=title, primary=primary, pairs=per, n_images=n, n_pairs=len(per), note=note)
    if n < unc.MIN_PAIRED:
        return Effect(**common, difference=float(d.mean()) if n else None, low=None, high=None, p=None, test=None)
    low, high, sd = two_level(d, seed)
    if len(per) == 1:
        p, test = per[0].p, per[0].test
    else:
        p, test = _signed_rank_p(d.sum(0)), "Wilcoxon signed-rank over images (sum over pairs)"
    return Effect(**common, difference=float(d.mean()), low=low, high=high, p=p, test=test,
                  detectable=_detectable(sd))


def holm(effects: list[Effect]) -> list[Effect]:
    """The secondary family, Holm-adjusted together (the primary endpoint is tested alone, unadjusted)."""
    tested = [e for e in effects if e.p is not None]
    if tested:
        adjusted = unc.holm([unc.Comparison(e.difference, e.low, e.high, e.p, e.n_images, e.detectable)
                             for e in tested])
        for e, c in zip(tested, adjusted):
            e.p_adjusted, e.detectable_adjusted = c.p_adjusted, c.detectable_adjusted
    return effects


def all_correct(runs: dict[str, ModelRun]) -> np.ndarray:
    """Images every model of the primary run classifies correctly (clean majority): the confound removed."""
    n = min(r.n for r in runs.values())
    return np.logical_and.reduce([np.asarray(r.clean_correct[:n], bool) for r in runs.values()])


class PrimaryResults(BaseModel):
    """The primary run: every model's ensemble runs, the primary effect and the secondary family."""

    ensemble: dict
    models: dict[str, ModelRun]
    primary: Effect | None
    secondary: list[Effect]
    seconds: float
    training_seconds: float = Field(0.0, description="Replicates trained for this run (cached in the store).")


def analyse(runs: dict[str, ModelRun], ensemble, seed: int = 0) -> tuple[Effect | None, list[Effect]]:
    """The primary effect and the pre-declared secondary family, in its declared order."""
    pairs = replicate_pairs(runs)
    eps = ensemble.eps

    def at(e: float, norm: str = "linf") -> Callable[[ModelRun], np.ndarray | None]:
        def f(r: ModelRun) -> np.ndarray | None:
            lv = r.level(e, norm)
            return None if lv is None else np.asarray(lv.robust, bool)
        return f

    primary = binary_effect("primary", f"robust accuracy under the ensemble, L∞ ε = {eps:g}", runs, pairs, at(eps),
                            seed=seed, primary=True)
    secondary: list[Effect | None] = [
        continuous_effect("area", "area under the ensemble's robust-accuracy curve, ε ∈ [0, 0.1] (fraction of 0.1)",
                          runs, pairs, lambda r: r.area(), seed)]
    secondary += [binary_effect(f"linf-{e:g}", f"robust accuracy under the ensemble, L∞ ε = {e:g}", runs, pairs, at(e),
                                seed=seed) for e in ensemble.budgets()[1:]]
    if ensemble.l2_eps:
        secondary.append(binary_effect(f"l2-{ensemble.l2_eps:g}", f"robust accuracy under the ensemble, L2 ε = "
                                       f"{ensemble.l2_eps:g}", runs, pairs, at(ensemble.l2_eps, "l2"), seed=seed))
    ok = all_correct(runs)
    secondary.append(binary_effect("all-correct", f"primary (L∞ ε = {eps:g}) on the {int(ok.sum())} images every model "
                                   "classifies correctly", runs, pairs, at(eps), mask=ok, seed=seed,
                                   note="clean accuracy removed: robust here means survives the ensemble"))
    mp = matched_pairs(runs)
    if mp:
        secondary.append(binary_effect("matched", f"primary (L∞ ε = {eps:g}) against the accuracy-matched "
                                       "discriminative checkpoint", runs, mp, at(eps), seed=seed))
    return primary, holm([e for e in secondary if e is not None])
