"""The primary endpoint: live-points-only ensembles, nested budgets, replicate pairs, the two-level interval,
and the answer's wording for every outcome (synthetic data with known answers)."""

from __future__ import annotations

import numpy as np
import pytest

from genrobust.study import decision, effects
from genrobust.study.effects import Effect, PairEffect, two_level
from genrobust.study.primary import Ensemble, Level, MemberRun, ModelRun, run_level


def test_members_run_only_on_live_images_and_each_fooled_image_names_its_member():
    seen = []
    plan = {"a": {1, 4}, "b": {2}, "c": {1, 2, 4, 5}}  # what each member would fool

    def run(attack, idx, key):
        seen.append((attack, idx.tolist()))
        return np.array([i in plan[attack] for i in idx])

    live = np.array([True, True, True, False, True, True])  # image 3: wrong on the clean image, never attacked
    level = run_level(run, [("a", "a", None), ("b", "b", None), ("c", "c", None)], 0.03, "linf", live, lambda: 0.0)
    assert seen == [("a", [0, 1, 2, 4, 5]), ("b", [0, 2, 5]), ("c", [0, 5])]
    assert level.robust == [True, False, False, False, False, False]
    assert level.fooled_by == [None, "a", "b", None, "a", "c"]
    assert [m.fooled for m in level.members] == [2, 1, 1] and [m.images for m in level.members] == [5, 3, 2]


def test_a_member_with_nothing_left_to_attack_is_skipped():
    calls = []
    level = run_level(lambda a, i, k: calls.append(a) or np.ones(len(i), bool), [("a", "a", None), ("b", "b", None)],
                      0.1, "linf", np.array([True, False]), lambda: 0.0)
    assert calls == ["a"] and level.members[1].images == 0 and level.robust == [False, False]


def _run(name, kind, seed, clean, robust_by_eps, matched=None) -> ModelRun:
    levels = [Level(eps=e, norm="linf", robust=list(r), fooled_by=[None] * len(r),
                    members=[MemberRun(label="m", images=len(r), fooled=0, seconds=0.0)])
              for e, r in robust_by_eps.items()]
    return ModelRun(name=name, structure="GFZ" if kind == "generative" else "DFZ", kind=kind, seed=seed,
                    matched_to=matched, n=len(clean), clean_correct=list(clean), linf=levels, seconds=0.0)


def test_the_area_under_an_image_curve_is_the_trapezoid_through_its_nested_budgets():
    r = _run("g", "generative", 0, [True, True, False], {0.03: [True, False, False], 0.05: [True, False, False],
                                                          0.1: [False, False, False]})
    # image 0: robust to 0.05, fooled at 0.1: 0.03 + 0.02 + 0.05 / 2 over 0.1; image 1: the first trapezoid's half
    assert r.area() == pytest.approx([(0.03 + 0.02 + 0.025) / 0.1, 0.015 / 0.1, 0.0])
    flat = _run("g", "generative", 0, [True], {0.03: [True]})  # nothing run beyond 0.03: flat to 0.1
    assert flat.area() == pytest.approx([1.0])


def test_replicate_pairs_match_seeds_and_matched_checkpoints_pair_with_their_seed():
    runs = {n: _run(n, k, s, [True], {0.03: [True]}, m) for n, k, s, m in [
        ("g0", "generative", 0, None), ("g1", "generative", 1, None), ("d1", "discriminative", 1, None),
        ("d0", "discriminative", 0, None), ("d1-at", "discriminative", 1, "0.879")]}
    assert effects.replicate_pairs(runs) == [("g0", "d0"), ("g1", "d1")]
    assert effects.matched_pairs(runs) == [("g1", "d1-at")]


def test_with_more_structures_the_pairs_stay_gfz_against_dfz_else_the_first_of_each_kind():
    def run(name, structure, kind, seed, matched=None):
        return _run(name, kind, seed, [True], {0.03: [True]}, matched).model_copy(update={"structure": structure})

    specs = [("gbz", "GBZ", "generative"), ("gfz", "GFZ", "generative"), ("dbx", "DBX", "discriminative"),
             ("dfz", "DFZ", "discriminative")]
    runs = {f"{n}{s}": run(f"{n}{s}", st, k, s) for n, st, k in specs for s in (0, 1)}
    runs["dbx1-at"] = run("dbx1-at", "DBX", "discriminative", 1, "0.87")
    runs["dfz1-at"] = run("dfz1-at", "DFZ", "discriminative", 1, "0.87")
    # four generative structures against one DFZ would count its seeds four times: one structure against one
    assert effects.replicate_pairs(runs) == [("gfz0", "dfz0"), ("gfz1", "dfz1")]
    assert effects.matched_pairs(runs) == [("gfz1", "dfz1-at")]
    others = {k: v for k, v in runs.items() if v.structure in ("GBZ", "DBX")}
    assert effects.replicate_pairs(others) == [("gbz0", "dbx0"), ("gbz1", "dbx1")]


def test_the_two_level_interval_widens_with_between_seed_variance():
    rng = np.random.default_rng(0)
    n = 400
    base = rng.normal(0.1, 0.3, n)  # per-image differences shared by the seeds: the same images
    alike = np.stack([base + rng.normal(0, 0.05, n) for _ in range(5)])
    apart = np.stack([base + shift + rng.normal(0, 0.05, n) for shift in (-0.2, -0.1, 0.0, 0.1, 0.2)])
    lo1, hi1, sd1 = two_level(alike, seed=1)
    lo2, hi2, sd2 = two_level(apart, seed=1)
    assert lo1 < alike.mean() < hi1 and lo2 < apart.mean() < hi2
    assert hi2 - lo2 > 2 * (hi1 - lo1) and sd2 > 2 * sd1
    one = two_level(base[None], seed=1)  # one pair: the image bootstrap alone, about the normal-theory width
    assert one[1] - one[0] == pytest.approx(2 * 1.96 * base.std(ddof=1) / np.sqrt(n), rel=0.15)


def _effect(diff, low, high, p, pairs_low=(0.01, 0.02), detectable=0.02) -> Effect:
    pairs = [PairEffect(generative=f"g{i}", discriminative=f"d{i}", seed=i, generative_rate={"value": 0.5},
                        discriminative_rate={"value": 0.4}, difference=diff, low=lo, high=lo + 0.2, p=p, b=9, c=2,
                        n=200, test="exact McNemar") for i, lo in enumerate(pairs_low)]
    return Effect(key="primary", title="robust accuracy", primary=True, pairs=pairs, difference=diff, low=low,
                  high=high, p=p, n_images=200, n_pairs=len(pairs), test="Wilcoxon", detectable=detectable)


@pytest.mark.parametrize("effect, masking, strength", [
    (_effect(0.08, 0.04, 0.12, 0.001), {"g0": [], "d0": []}, "strong"),
    (_effect(0.08, 0.04, 0.12, 0.001, pairs_low=(0.01, -0.02)), {"g0": [], "d0": []}, "weak"),  # one seed's CI has 0
    (_effect(0.08, 0.04, 0.12, 0.001), None, "weak"),  # masking checks not run
    (_effect(0.08, 0.04, 0.12, 0.001, detectable=0.06), {"g0": []}, "weak"),  # underpowered
    (_effect(-0.08, -0.12, -0.04, 0.001), {"g0": []}, "reversed"),
    (_effect(0.01, -0.03, 0.05, 0.4), {"g0": []}, "not distinguishable"),
    (_effect(0.08, 0.04, 0.12, 0.001), {"g0": ["b"], "d0": []}, "masking flagged"),
])
def test_the_answer_wording_follows_the_numbers(effect, masking, strength):
    a = decision.answer(effect, masking)
    assert a.strength == strength
    assert f"{effect.difference:+.3f}" in a.answer  # the effect itself is always stated
    if strength == "weak":
        assert "Weak because" in a.answer
    if strength == "masking flagged":
        assert a.answer.startswith("No claim") and "g0" in a.answer
    assert any("masking checks" in c for c in a.conditions)


def test_the_secondary_family_reports_the_detectable_difference_at_its_adjusted_level():
    family = [_effect(0.01, -0.03, 0.05, p) for p in (0.4, 0.03, 0.2)]
    effects.holm(family)
    assert [round(e.p_adjusted, 6) for e in family] == [0.4, 0.09, 0.4]  # Holm: 3 x 0.03, then max(2 x 0.2, ..)
    for e in family:  # alpha / 3 asks for a larger difference than alpha
        assert e.detectable_adjusted > e.detectable


def test_no_pair_no_claim():
    assert decision.answer(None, None).strength == "no comparison"


def test_the_ensemble_declares_its_budgets_and_refuses_bad_ones():
    e = Ensemble(eps=0.03, curve_eps=[0.1, 0.05, 0.02])
    assert e.budgets() == [0.03, 0.05, 0.1]  # nested upwards from the primary eps
    with pytest.raises(ValueError):
        Ensemble(curve_eps=[0.0])
    labels = [m[0] for m in Ensemble(transfer=False).members(0.03, "linf", ["x"])]
    assert labels == ["autoattack-rand", "pgd-eot10", "square"]


def test_an_ensemble_that_floors_every_model_says_so():
    e = _effect(0.0, 0.0, 0.0, 1.0)
    for p in e.pairs:
        p.generative_rate.value = p.discriminative_rate.value = 0.0
    a = decision.answer(e, {"g0": []})
    assert a.strength == "not distinguishable" and "floors every model" in a.answer
    assert any("smaller ε" in c for c in a.conditions)
