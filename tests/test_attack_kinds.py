"""The attack hierarchy: two kinds, norm objects that own the ball, each attack's declared cost."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from genrobust.attacks import ATTACKS, L2NORM, LINF, BudgetedAttack, MinimalAttack, make_attack
from genrobust.attacks.norms import Lp, norm


def test_every_registered_attack_is_one_of_the_two_kinds(transfer_source):
    """By class, strictly; a transfer (which wraps another attack) is the kind of its inner attack."""
    for name, cls in ATTACKS.items():
        if name == "transfer":
            for inner in ("pgd", "deepfool"):
                attack = cls(source=transfer_source, attack=inner)
                own = type(attack.inner)
                assert attack.kind == own.kind and attack.norm is attack.inner.norm, inner
                assert issubclass(own, BudgetedAttack) != issubclass(own, MinimalAttack), inner
                assert attack.passes() == attack.inner.passes() and attack.cost(3) == attack.inner.cost(3)
            continue
        assert issubclass(cls, BudgetedAttack) != issubclass(cls, MinimalAttack), name
        attack = cls()
        assert attack.kind in ("budgeted", "minimal")
        assert attack.norm.size(torch.ones(2, 1, 28, 28)).shape == (2,), name  # every attack has a true norm
        assert attack.passes() > 0 and attack.cost(3) == pytest.approx(3 * attack.cost(1)), name


def test_budgeted_attacks_use_their_parameters_norm():
    assert make_attack("pgd", {"norm": "l2"}).norm is L2NORM
    assert make_attack("apgd").norm is LINF
    assert make_attack("fgsm").norm is LINF
    assert make_attack("deepfool", {"p": "inf"}).norm is LINF
    assert make_attack("deepfool", {"p": 3}).norm.p == 3.0
    assert make_attack("cw").norm is L2NORM and make_attack("zoo").norm is L2NORM


def test_cost_scales_with_samples_and_iterations():
    base = make_attack("pgd", {"steps": 10})
    assert make_attack("pgd", {"steps": 20}).cost(1) == pytest.approx(2 * base.cost(1))
    assert base.cost(1, samples=20) == pytest.approx(2 * base.cost(1))
    assert make_attack("pgd", {"steps": 10, "eot": 4}).cost(1) == pytest.approx(4 * base.cost(1))


deltas = st.integers(0, 2**31 - 1).map(lambda s: torch.randn(4, 1, 6, 6, generator=torch.Generator().manual_seed(s)))
radii = st.floats(1e-3, 5.0)
scales = st.floats(1e-3, 10.0)


@settings(max_examples=60, deadline=None)
@given(delta=deltas, eps=radii, scale=scales)
def test_projection_lands_in_the_ball_and_is_the_identity_inside(delta, eps, scale):
    for n in (LINF, L2NORM):
        d = delta * scale
        p = n.project(d, eps)
        assert (n.size(p) <= eps * (1 + 1e-5)).all()
        inside = n.size(d) <= eps
        assert torch.equal(p[inside], d[inside])
        # the projection is the nearest point: never farther from d than the radial shrink d * eps / |d|
        shrink = d * (eps / n.size(d).clamp_min(1e-12)).clamp(max=1).view(-1, 1, 1, 1)
        assert (L2NORM.size(p - d) <= L2NORM.size(shrink - d) * (1 + 1e-5) + 1e-6).all()


@settings(max_examples=30, deadline=None)
@given(delta=deltas, eps=radii)
def test_random_points_lie_in_the_ball_and_unit_steps_have_unit_norm(delta, eps):
    g = torch.Generator().manual_seed(1)
    for n in (LINF, L2NORM):
        r = n.random(delta.shape, eps, g)
        assert (n.size(r) <= eps * (1 + 1e-5)).all()
        u = n.unit(delta)
        assert torch.allclose(n.size(u), torch.ones(4), atol=1e-5)
        # the unit step maximises <g, u> over the unit ball: it attains the dual norm of g
        assert torch.allclose((delta * u).flatten(1).sum(1), n.dual_size(delta.flatten(1)), rtol=1e-4)


def test_lp_norm_and_its_dual():
    v = torch.tensor([[3.0, -4.0]])
    assert norm(2) is L2NORM and norm(math.inf) is LINF and norm("linf") is LINF
    assert Lp(3).size(v.view(1, 1, 1, 2)).item() == pytest.approx((27 + 64) ** (1 / 3))
    assert Lp(3).q == pytest.approx(1.5)
    assert LINF.dual_size(v).item() == 7.0 and L2NORM.dual_size(v).item() == pytest.approx(5.0)
    with pytest.raises(ValueError):
        Lp(1.0)


def test_a_budgeted_result_never_leaves_the_ball():
    """The kind's final projection: even an algorithm that overshoots returns a point in the ball."""

    class Overshoot(BudgetedAttack, register=False):
        name = "overshoot"

        def passes(self):
            return 1.0

        def run(self, f, x, y, targets):
            from genrobust.attacks import AttackOutput
            return AttackOutput(x + 0.5)

    x = torch.full((3, 1, 28, 28), 0.25)
    for normname, eps in (("linf", 0.1), ("l2", 1.0)):
        adv = Overshoot(eps=eps, norm=normname)(torch.nn.Flatten(), x, [0, 1, 2]).adversarial
        assert (Overshoot(norm=normname).norm.size(adv - x) <= eps * (1 + 1e-5)).all()
        assert adv.min() >= 0 and adv.max() <= 1
