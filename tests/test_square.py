"""Square Attack: the paper's schedule and shapes, no gradients, exact query counts, the analytic boundary of
linear models, the ball and the box, seeding, common random numbers and robust acceptance (tiny, CPU)."""

import math

import pytest
import torch
from torch import nn

from genrobust import seeding
from genrobust.attacks import make_attack
from genrobust.attacks.base import FORWARD, LogitsFn
from genrobust.attacks.square import Square, bump, signed_bump, square_fraction
from genrobust.errors import GenrobustError
from tests.conftest import tiny_model
from tests.test_attacks import Counting, Linear, _labels, _points
from tests.test_eot_apgd import Affine


class Blocky(nn.Module):
    """Logit 1 - logit 0 = w.x + b with w constant on 4 x 4 blocks; every other class far below. The minimal
    distance to the boundary is |w.x + b| / ||w||_1 (L-infinity) or / ||w||_2 (L2) while the box does not bind."""

    def __init__(self, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w = nn.functional.interpolate(torch.randn(1, 1, 7, 7, generator=g), scale_factor=4).flatten() * 0.01

    def forward(self, x):
        d = x.flatten(1) @ self.w - 0.5 * self.w.sum() + 0.05
        z = torch.full((len(x), 10), -1000.0)
        z[:, 0], z[:, 1] = -d / 2, d / 2
        return z


def _size(delta, norm):
    delta = delta.flatten(1)
    return delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)


def test_schedule_halves_p_at_the_papers_iterations():
    assert [square_fraction(0.8, k) for k in (0, 10, 11, 50, 51, 200, 201)] == [0.8, 0.8, 0.4, 0.4, 0.2, 0.2, 0.1]
    assert square_fraction(0.8, 8001) == 0.8 / 512 and square_fraction(0.8, 10**6) == 0.8 / 512
    # rescaled: iteration k of a 1,000-evaluation run is iteration 10 k of the paper's 10,000
    assert square_fraction(0.8, 1, 1000) == 0.8 and square_fraction(0.8, 2, 1000) == 0.4
    assert square_fraction(0.8, 801, 1000) == 0.8 / 512


def test_l2_update_is_the_papers_signed_bump():
    b = bump(3, 5)  # centre (1, 2): Chebyshev distance 0 -> 1 + 1/4 + 1/9, 1 -> 1/4 + 1/9, 2 -> 1/9
    raw = torch.tensor([[1 / 9, 13 / 36, 13 / 36, 13 / 36, 1 / 9], [1 / 9, 13 / 36, 49 / 36, 13 / 36, 1 / 9],
                        [1 / 9, 13 / 36, 13 / 36, 13 / 36, 1 / 9]])
    torch.testing.assert_close(b, raw / raw.norm())
    s = signed_bump(7)
    assert s.shape == (7, 7) and torch.isclose(s.norm(), torch.tensor(1.0))
    assert (s[:3] > 0).all() and (s[3:] < 0).all()  # one half up, the other down


@pytest.mark.parametrize("norm, eps", [("linf", 0.05), ("l2", 1.0)])
def test_square_never_uses_gradients_and_counts_every_query(norm, eps):
    inner = Linear(scale=0.01)  # parameters require grad: any autograd use would reach NoBackward
    model = Counting(inner)
    x = _points(6, seed=9)
    y = _labels(inner, x)
    out = make_attack("square", {"eps": eps, "norm": norm, "queries": 150})(model, x, y, seed=1)
    fooled = _labels(inner, out.adversarial) != y
    assert out.queries.dtype == torch.int64 and int(out.queries.sum()) == model.seen
    assert (out.queries <= 150).all() and (out.queries[~fooled] == 150).all()  # a robust image spends it all
    assert fooled.any()


def test_square_reaches_the_linf_boundary_of_a_linear_model():
    model = Blocky(seed=3)
    x = _points(1, seed=4, lo=0.45, hi=0.55).repeat(4, 1, 1, 1)  # four independent searches, one eps
    y = _labels(model, x)
    with torch.no_grad():
        d = (model(x)[:, 1] - model(x)[:, 0])[0]
    eps_min = (d.abs() / model.w.abs().sum()).item()
    assert eps_min < 0.04  # the box stays far
    for factor, queries, fooled in ((1.1, 2000, True), (0.97, 200, False)):
        out = make_attack("square", {"eps": factor * eps_min, "queries": queries})(model, x, y, seed=0)
        assert ((_labels(model, out.adversarial) != y) == fooled).all(), factor
        assert (_size(out.adversarial - x, "linf") <= factor * eps_min * (1 + 1e-5)).all()


def test_square_l2_fools_a_linear_model_past_its_l2_boundary_and_never_short_of_it():
    model = Affine(seed=3)  # dense random w: L2 random search aligns with it slowly (2.5 x the minimum here)
    x = _points(1, seed=4, lo=0.45, hi=0.55).repeat(4, 1, 1, 1)
    y = _labels(model, x)
    with torch.no_grad():
        d = (model(x)[:, 1] - model(x)[:, 0])[0]
    eps_min = (d.abs() / model.w.norm()).item()
    for factor, queries, fooled in ((2.5, 1500, True), (0.97, 200, False)):
        out = make_attack("square", {"eps": factor * eps_min, "norm": "l2", "queries": queries})(model, x, y)
        assert ((_labels(model, out.adversarial) != y) == fooled).all(), factor
        assert (_size(out.adversarial - x, "l2") <= factor * eps_min * (1 + 1e-5)).all()


@pytest.mark.parametrize("norm, eps", [("linf", 0.3), ("l2", 3.0)])
def test_square_stays_in_the_ball_and_the_box(norm, eps):
    x = torch.rand(6, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    x[0], x[1] = 0.0, 1.0  # the box binds everywhere
    for model in (Linear(shift=-500.0), tiny_model("GFZ")):
        y = torch.arange(6) % 10
        params = {"eps": eps, "norm": norm, "queries": 20, "samples": 1, "restarts": 2}
        adv = make_attack("square", params)(model, x, y, seed=4).adversarial
        assert adv.min() >= 0 and adv.max() <= 1
        assert (_size(adv - x, norm) <= eps * (1 + 1e-5) + 1e-7).all()


def test_square_is_reproducible_by_seed():
    model = tiny_model("GFZ")
    x = _points(4, seed=1)
    y = torch.arange(4)
    attack = make_attack("square", {"queries": 12, "samples": 1, "eps": 0.05})
    a, b, c = (attack(model, x, y, seed=s) for s in (5, 5, 6))
    assert torch.equal(a.adversarial, b.adversarial) and torch.equal(a.queries, b.queries)
    assert not torch.equal(a.adversarial, c.adversarial)


def test_candidate_and_current_point_share_each_iterations_noise(monkeypatch):
    """Common random numbers: after the start, the model is asked in pairs (candidate, current point) with
    one seed and one batch shape; a deterministic model is asked once per iteration."""
    calls = []
    real = LogitsFn.draws

    def spy(self, x, m=None, seed=None):
        calls.append((seed, x.shape[0]))
        return real(self, x, m, seed)

    monkeypatch.setattr(LogitsFn, "draws", spy)
    monkeypatch.setattr(Square, "accepted", lambda self, f, x, *a, **k: torch.zeros(len(x), dtype=torch.bool))
    model = tiny_model("GFZ")
    x = _points(3, seed=2)
    make_attack("square", {"queries": 15, "samples": 1, "eps": 0.02, "accept_draws": 1})(model, x, torch.arange(3))
    start, pairs = calls[0], calls[1:]
    assert start[0] is None and len(pairs) == 2 * 7  # (15 - 1) // 2 iterations of two evaluations
    for (s1, n1), (s2, n2) in zip(pairs[::2], pairs[1::2]):
        assert s1 is not None and s1 == s2 and n1 == n2
    assert len({s for s, _ in pairs[::2]}) == 7  # a fresh draw every iteration
    # one seed, one shape: every row gets the same latent draws, so unchanged rows score exactly the same
    f = LogitsFn(model, 1, torch.Generator().manual_seed(0), eot=2)
    moved = x.clone()
    moved[1] += 0.1
    a, b = Square()._score(f, x, torch.arange(3), seed=5), Square()._score(f, moved, torch.arange(3), seed=5)
    assert a[0] == b[0] and a[2] == b[2] and a[1] != b[1]
    calls.clear()
    inner = Linear(scale=0.01)
    make_attack("square", {"queries": 15, "eps": 1e-4})(inner, x, _labels(inner, x))
    assert len(calls) == 15  # the start and 14 iterations, the current point's stored score is exact


def test_square_accepts_only_what_every_frozen_draw_misclassifies():
    model = tiny_model("GFZ").eval()
    x = _points(8, seed=6)
    with torch.no_grad():
        y = model.logits(x, 4, torch.Generator().manual_seed(0)).argmax(1)
    attack = make_attack("square", {"queries": 40, "samples": 4, "eps": 0.3, "accept_draws": 5})
    f = LogitsFn(model, 4, torch.Generator().manual_seed(3), accept_seed=seeding.derive(3, "acceptance"), n_images=8)
    with torch.device(x.device):
        adv, done, queries = attack.search(f, x, y)
    assert done.any()
    judge = LogitsFn(model, 4, torch.Generator(), accept_seed=seeding.derive(3, "acceptance"), n_images=8)
    assert (judge.fooled_fraction(adv[done], y[done], 5, index=done.nonzero().squeeze(1)) == 1).all()
    # queries: each image within budget; acceptance charged at its most (R), so the sum bounds the real count
    assert (queries <= 40).all() and f.queries <= int(queries.sum())


def test_restarts_run_only_on_the_images_still_robust(monkeypatch):
    runs = []
    real = Square._once

    def spy(self, f, x0, y, index):
        out = real(self, f, x0, y, index)
        runs.append((index.tolist(), index[out[1]].tolist()))  # (images run, images accepted)
        return out

    monkeypatch.setattr(Square, "_once", spy)
    model = Linear(scale=0.01)
    x = _points(8, seed=3)
    y = _labels(model, x)
    out = make_attack("square", {"eps": 0.04, "queries": 300, "restarts": 3})(model, x, y)
    assert runs[0][0] == list(range(8)) and runs[0][1] and len(runs) >= 2
    for (ran, accepted), (ran_next, _) in zip(runs, runs[1:]):
        assert ran_next == [i for i in ran if i not in accepted]
    fooled = (_labels(model, out.adversarial) != y).nonzero().squeeze(1).tolist()
    assert sorted(fooled) == sorted(i for _, acc in runs for i in acc)
    assert (out.queries <= 3 * 300).all()


def test_square_cost_and_parameters():
    attack = make_attack("square", {"queries": 1000, "restarts": 2})
    assert attack.passes() == 1000 * 2 * FORWARD and attack.black_box
    assert attack.params.p_init == 0.8 and make_attack("square", {"norm": "l2"}).params.p_init == 0.1
    for params, message in (({"queries": 0}, "queries"), ({"p_init": 0}, "p_init"), ({"p_init": 1.5}, "p_init"),
                            ({"restarts": 0}, "restarts"), ({"norm": "l1"}, "norm"),
                            ({"queries": 5, "eot": 10}, "queries")):
        with pytest.raises(GenrobustError, match=f"invalid parameters for square: .*{message}"):
            make_attack("square", params)
    assert not math.isnan(attack.cost(10))
