"""EOT, robust acceptance, APGD, the autoattack ensemble and the robust success metric (tiny, CPU)."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from genrobust import seeding
from genrobust.attacks import ATTACKS, L2NORM, Attack, AttackOutput, MinimalAttack, make_attack
from genrobust.attacks.apgd import APGD, APGDTargeted, checkpoints, dlr_targeted_loss
from genrobust.attacks.autoattack import AutoAttack
from genrobust.attacks.base import FORWARD, LogitsFn, expected_gradient
from genrobust.attacks.square import Square
from genrobust.errors import GenrobustError
from genrobust.robustness import merge_reports, run_attack
from tests.conftest import tiny_model
from tests.test_attacks import Linear, _labels, _points


def test_eot_gradient_is_the_mean_of_single_draw_gradients():
    model = tiny_model("GFZ").eval()
    x, y = _points(5), torch.arange(5)
    M, K = 4, 2
    f = LogitsFn(model, K, torch.Generator().manual_seed(7), eot=M)
    f.grad_rows = lambda device: 6  # force several chunks across the tiled batch
    grad, logits = expected_gradient(f, x, lambda z, i: F.cross_entropy(z, y[i], reduction="none"))
    # the same noise (drawn pass by pass, as one (M*N) draw, draw-major), then one pass per draw
    noise = model.draw_noise(M * 5, K, torch.Generator().manual_seed(7))
    singles, single_logits = [], []
    for m in range(M):
        xr = x.clone().requires_grad_(True)
        z = model.logits(xr, K, noise=noise[m * 5:(m + 1) * 5])
        singles.append(torch.autograd.grad(F.cross_entropy(z, y, reduction="none").sum(), xr)[0])
        single_logits.append(z.detach())
    torch.testing.assert_close(grad, torch.stack(singles).mean(0), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(logits, torch.stack(single_logits), rtol=1e-5, atol=1e-5)
    assert f.queries == M * 5


def test_eot_collapses_to_one_pass_on_a_deterministic_module():
    model = Linear()
    x = _points(4)
    f = LogitsFn(model, 10, torch.Generator().manual_seed(0), eot=20)
    grad, logits = expected_gradient(f, x, lambda z, i: z[:, 0])
    assert logits.shape == (1, 4, 10) and f.queries == 4
    torch.testing.assert_close(grad, model.w[0].detach().view(1, 1, 28, 28).expand(4, -1, -1, -1))


class CoinFlip(nn.Module):
    """A stochastic 10-class model with controlled noise: class 1 beats the true class 0 with probability
    equal to the image's first pixel, drawn from the module's own seeded generator."""

    stochastic = True

    def __init__(self, seed=0):
        super().__init__()
        self.gen = torch.Generator().manual_seed(seed)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        p = x.flatten(1)[:, 0]
        flip = torch.rand(len(x), generator=self.gen) < p
        z = torch.full((len(x), 10), -10.0)
        z[:, 0] = 0.0
        z[:, 1] = torch.where(flip, 1.0, -1.0)
        return z


def test_robust_acceptance_rejects_an_iterate_only_some_draws_misclassify():
    x = torch.zeros(3, 1, 28, 28)
    x[0, 0, 0, 0], x[1, 0, 0, 0], x[2, 0, 0, 0] = 0.5, 1.0, 0.0  # half the draws / every draw / none
    y = torch.zeros(3, dtype=torch.long)
    f = LogitsFn(CoinFlip(), 1, torch.Generator().manual_seed(0))
    frac = f.fooled_fraction(x, y, draws=200)
    assert 0.35 < frac[0] < 0.65 and frac[1] == 1.0 and frac[2] == 0.0
    strict = make_attack("deepfool", {"accept_draws": 50, "accept_fraction": 0.9})
    assert strict.accepted(f, x, y, torch.arange(3)).tolist() == [False, True, False]
    # a single lucky draw is what the plain attack accepts: over repeated tests x[0] gets through
    lax = make_attack("deepfool", {"accept_draws": 1})
    assert any(lax.accepted(f, x[:1], y[:1], torch.arange(1)).item() for _ in range(20))


def test_acceptance_draws_are_frozen_per_image_and_apart_from_the_attackers_noise():
    """A latent classifier's acceptance draws belong to the image, not to the call: the same verdicts
    whatever subset an image comes in and however often it is tested, and drawn from their own stream."""
    model = tiny_model("GFZ").eval()
    x = _points(6, seed=3)
    y = torch.zeros(6, dtype=torch.long)
    f = LogitsFn(model, 2, torch.Generator().manual_seed(0), accept_seed=seeding.derive(0, "acceptance"),
                 n_images=6)
    every = torch.arange(6)
    whole = f.fooled_fraction(x, y, 5, index=every)
    subset = torch.tensor([4, 1])
    assert torch.equal(f.fooled_fraction(x[subset], y[subset], 5, index=subset), whole[subset])
    assert torch.equal(f.fooled_fraction(x, y, 5, index=every), whole)  # a second test sees the same draws
    # the frozen logits are those of the acceptance stream's noise, not of the attacker's generator
    noise = f.frozen_noise(5, x.device)
    attacker = model.draw_noise(30, 2, torch.Generator().manual_seed(0))
    assert not torch.equal(noise.reshape(30, *noise.shape[2:]), attacker)
    with torch.no_grad():
        direct = model.logits(x.repeat(5, 1, 1, 1), 2, noise=noise.reshape(30, *noise.shape[2:]))
    assert torch.equal((direct.argmax(-1).view(5, 6) != y).float().mean(0), whole)


def test_jacobian_under_given_noise_equals_the_logits_under_it():
    model = tiny_model("GFZ").eval()
    x = _points(3, seed=4)
    noise = model.draw_noise(3, 2, torch.Generator().manual_seed(5))
    logits, jac = model.logits_and_jacobian(x, 2, noise=noise)
    assert torch.allclose(logits, model.logits(x, 2, noise=noise), atol=1e-5)
    xr = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(model.logits(xr, 2, noise=noise)[:, 3].sum(), xr)
    assert torch.allclose(jac[:, 3], g.flatten(1), atol=1e-4)


def test_deepfool_returns_what_every_frozen_draw_misclassifies():
    """With R frozen draws and fraction 1, every image DeepFool reports fooled is misclassified by all R of
    its own acceptance draws (the attack aims at the farthest draw until then)."""
    model = tiny_model("GFZ").eval()
    x = _points(8, seed=6)
    with torch.no_grad():
        y = model.logits(x, 4, torch.Generator().manual_seed(0)).argmax(1)
    f = LogitsFn(model, 4, torch.Generator(), accept_seed=seeding.derive(3, "acceptance"), n_images=8)
    fractions = {}
    for max_iter in (1, 100):
        attack = make_attack("deepfool", {"samples": 4, "accept_draws": 5, "max_iter": max_iter})
        adv = attack(model, x, y, seed=3).adversarial
        fractions[max_iter] = f.fooled_fraction(adv, y, 5, index=torch.arange(8))
    assert (fractions[1] < 1).any()  # one step leaves some images short of a draw's boundary
    assert (fractions[100] == 1).all()


def test_robust_acceptance_costs_nothing_on_a_deterministic_module():
    class Counting(Linear):
        calls = 0

        def forward(self, x):
            type(self).calls += len(x)
            return super().forward(x)

    model = Counting(shift=-500.0)
    x = _points(6)
    y = _labels(model, x)
    counts, advs = [], []
    for R in (1, 25):
        Counting.calls = 0
        advs.append(make_attack("cw", {"steps": 10, "binary_steps": 2, "accept_draws": R})(model, x, y).adversarial)
        counts.append(Counting.calls)
    assert counts[0] == counts[1] and torch.equal(advs[0], advs[1])


def test_cw_with_robust_acceptance_returns_robust_adversarials():
    """Under CoinFlip-like noise, CW keeps only iterates most draws misclassify (tiny latent model)."""
    model = tiny_model("GFZ")
    x = _points(8, seed=2)
    with torch.no_grad():
        y = model.eval().logits(x, 10, torch.Generator().manual_seed(0)).argmax(1)
    params = {"steps": 30, "binary_steps": 3, "lr": 0.05, "samples": 1}
    strict = make_attack("cw", params | {"accept_draws": 20, "accept_fraction": 0.9})
    adv = strict(model, x, y, seed=1).adversarial
    changed = (adv - x).flatten(1).norm(dim=1) > 0
    f = LogitsFn(model, 1, torch.Generator().manual_seed(99))  # draws independent of the attacker's
    assert changed.any()
    assert (f.fooled_fraction(adv[changed], y[changed], draws=200) > 0.7).all()


class Affine(nn.Module):
    """Logit 1 - logit 0 = w.x + b; every other class far below: the minimal distance to the boundary is
    |w.x + b| / ||w||_1 (L-infinity) or / ||w||_2 (L2) while the box does not bind."""

    def __init__(self, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w = torch.randn(784, generator=g) * 0.01

    def forward(self, x):
        d = x.flatten(1) @ self.w - 0.5 * self.w.sum() + 0.05  # ~0.05 at the box's centre
        z = torch.full((len(x), 10), -1000.0)
        z[:, 0], z[:, 1] = -d / 2, d / 2
        return z


@pytest.mark.parametrize("norm, loss", [("linf", "ce"), ("linf", "dlr"), ("l2", "ce"), ("l2", "dlr")])
def test_apgd_reaches_the_minimal_eps_of_a_linear_model_and_stays_in_the_ball(norm, loss):
    model = Affine(seed=3)
    x = _points(6, seed=4, lo=0.45, hi=0.55)
    y = _labels(model, x)
    with torch.no_grad():
        d = model(x)[:, 1] - model(x)[:, 0]
    dual = model.w.abs().sum() if norm == "linf" else model.w.norm()
    eps_min = d.abs() / dual
    assert (eps_min < (0.2 if norm == "linf" else 3.0)).all()  # small enough that the box stays far
    for factor, fooled in ((1.03, True), (0.97, False)):
        eps = factor * eps_min
        for i in range(6):
            xi, yi = x[i:i + 1], y[i:i + 1]
            params = {"eps": eps[i].item(), "norm": norm, "loss": loss, "steps": 50}
            adv = make_attack("apgd", params)(model, xi, yi).adversarial
            delta = (adv - xi).flatten()
            assert (delta.abs().max() if norm == "linf" else delta.norm()) <= eps[i] * (1 + 1e-5) + 1e-7
            assert adv.min() >= 0 and adv.max() <= 1
            assert (_labels(model, adv) != yi).item() == fooled


def test_apgd_checkpoints_follow_the_paper():
    assert checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]


def test_autoattack_keeps_per_image_the_first_attack_that_fools_it(monkeypatch):
    calls = []

    class Fake:
        def __init__(self, value, fools):
            self.value, self.fools = value, fools

        def attack(self, f, x, y, index=None):
            calls.append((y.tolist(), index.tolist()))
            fooled = torch.tensor([int(label) in self.fools for label in y])
            return torch.full_like(x, self.value), fooled

    monkeypatch.setattr(AutoAttack, "sequence", lambda self: [Fake(0.1, {0, 2}), Fake(0.2, {0, 1, 3}), Fake(0.3, set())])
    x, y = torch.zeros(5, 1, 28, 28), torch.arange(5)  # label i identifies image i
    out = make_attack("autoattack", {"eps": 1.0})(Linear(), x, y)
    # later attacks see only the still-robust images, each with its position in the batch (frozen draws)
    assert calls == [([0, 1, 2, 3, 4], [0, 1, 2, 3, 4]), ([1, 3, 4], [1, 3, 4]), ([4], [4])]
    assert out.adversarial.flatten(1)[:, 0].tolist() == pytest.approx([0.1, 0.2, 0.1, 0.2, 0.3])
    assert out.member.dtype == torch.int64 and out.member.tolist() == [0, 1, 0, 1, -1]


def test_autoattack_versions_and_real_run():
    rand = make_attack("autoattack", {"version": "rand"})
    assert rand.params.eot == 20 and rand.params.restarts == 1
    assert [a.params.loss for a in rand.sequence()] == ["ce", "dlr"] and rand.members() == ["apgd-ce", "apgd-dlr"]
    assert all(a.params.eot == 20 for a in rand.sequence())
    assert all(a.params.restarts == 3 for a in make_attack("autoattack", {"version": "rand", "restarts": 3}).sequence())
    assert make_attack("autoattack", {"version": "rand", "eot": 3}).params.eot == 3
    standard = make_attack("autoattack", {"norm": "l2", "eps": 1.5, "restarts": 2})
    assert standard.params.eot == 1 and standard.members() == ["apgd-ce", "apgd-t", "square"]
    ce, targeted, square = standard.sequence()
    assert isinstance(ce, APGD) and ce.params.loss == "ce" and isinstance(targeted, APGDTargeted)
    assert isinstance(square, Square) and square.params.queries == 5000 and square.params.p_init == 0.8
    assert not square.params.rescale_schedule and square.params.norm == "l2" and square.params.eps == 1.5
    assert targeted.params.targets == 9 and all(a.params.restarts == 2 for a in standard.sequence())
    assert standard.passes() == pytest.approx(sum(a.passes() for a in standard.sequence()))
    assert rand.passes() == pytest.approx(sum(a.passes() for a in rand.sequence()))
    assert rand.cost(1) > make_attack("autoattack", {"version": "rand", "eot": 1}).cost(1)
    model = tiny_model("GFZ")
    x = _points(4)
    out = make_attack("autoattack", {"version": "rand", "eot": 2, "steps": 3, "samples": 1})(model, x, torch.arange(4))
    assert (out.adversarial - x).abs().max() <= 0.1 + 1e-6
    assert out.member is not None and ((out.member >= -1) & (out.member < 2)).all()


class Masked(Linear):
    """Gradient masking: a linear model of the image quantised to 1/8, whose gradient is 0 almost
    everywhere. APGD only gets its random start; Square, which never uses gradients, still fools it."""

    def forward(self, x):
        return super().forward(torch.round(x * 8) / 8)


@pytest.mark.parametrize("masked, eps, members", [(False, 0.014, {-1, 0, 1}), (True, 0.1, {-1, 2})])
def test_autoattack_members_run_only_on_the_still_robust_images(monkeypatch, masked, eps, members):
    """The real standard members, spied on: each sees exactly the images no earlier member fooled, and the
    per-image attribution names the member that did, through run_attack and a merge of its chunks."""
    seen = []
    real_sequence = AutoAttack.sequence

    class Spy:
        def __init__(self, inner):
            self.inner = inner

        def attack(self, f, x, y, index=None):
            adv, fooled = self.inner.attack(f, x, y, index=index)
            seen.append((index.tolist(), index[fooled].tolist()))
            return adv, fooled

    monkeypatch.setattr(AutoAttack, "sequence", lambda self: [Spy(a) for a in real_sequence(self)])
    model = (Masked if masked else Linear)(scale=0.01)
    x = _points(12, seed=3)
    y = _labels(model, x)
    attack = make_attack("autoattack", {"eps": eps, "steps": 3, "targets": 2, "queries": 300})
    out = attack(model, x, y, seed=seeding.derive(0, "attacker", 0))  # run_attack's seed for its first batch
    assert len(seen) == 3 and seen[0][0] == list(range(12))
    for (ran, fooled), (ran_next, _) in zip(seen, seen[1:]):
        assert ran_next == [i for i in ran if i not in fooled]
    member = [-1] * 12
    for j, (_, fooled) in enumerate(seen):
        for i in fooled:
            member[i] = j
    assert out.member.tolist() == member and members <= set(member)
    fooled = (_labels(model, out.adversarial) != y).nonzero().squeeze(1).tolist()
    assert [i for i, m in enumerate(member) if m >= 0] == fooled
    seen.clear()
    report, _ = run_attack(model, attack, x, y, batch_size=12)
    assert report.members == ["apgd-ce", "apgd-t", "square"] and report.per_image["member"] == member
    a, _ = run_attack(model, attack, x[:6], y[:6])
    b, _ = run_attack(model, attack, x[6:], y[6:])
    merged = merge_reports([a, b], seed=0)
    assert merged.members == report.members
    assert merged.per_image["member"] == a.per_image["member"] + b.per_image["member"]
    plain, _ = run_attack(model, make_attack("fgsm"), x, y)
    assert plain.members is None and plain.per_image["member"] is None


def test_apgd_t_targets_the_top_classes_by_clean_logits(monkeypatch):
    targets = []
    real = APGD.attack

    def spy(self, f, x, y, t=None, index=None):
        targets.append(t.tolist())
        return real(self, f, x, y, t, index)

    monkeypatch.setattr(APGD, "attack", spy)
    model = Linear(scale=0.01)
    x = _points(5, seed=1)
    y = _labels(model, x)
    with torch.no_grad():
        clean = model(x).scatter(1, y[:, None], float("-inf"))
    order = clean.argsort(1, descending=True)
    f = LogitsFn(model, 1, torch.Generator().manual_seed(0))
    adv, fooled = APGDTargeted(eps=0.0, steps=2, targets=4).attack(f, x, y)  # eps 0: nobody is fooled
    assert not fooled.any() and targets == [order[:, k].tolist() for k in range(4)]
    assert APGDTargeted(targets=4).passes() == pytest.approx(4 * APGD(loss="dlr").passes() + FORWARD)


def test_targeted_dlr_by_hand():
    z = torch.tensor([[4.0, 3.0, 1.0, 0.0, -2.0]])
    y, t = torch.tensor([0]), torch.tensor([3])
    # -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2) = -(4 - 0) / (4 - (1 + 0) / 2)
    assert dlr_targeted_loss(z, y, t).item() == pytest.approx(-4 / 3.5)
    assert dlr_targeted_loss(z - 100, y, t).item() == pytest.approx(-4 / 3.5)  # shift invariant (negative logits)


@pytest.mark.parametrize("name, params, message", [
    ("fgsm", {"eot": 0}, "eot"), ("pgd", {"eot": 1001}, "eot"), ("deepfool", {"accept_draws": 0}, "accept_draws"),
    ("cw", {"accept_fraction": 0}, "accept_fraction"), ("zoo", {"accept_fraction": 1.5}, "accept_fraction"),
    ("truncated-deepfool", {"accept_draws": "many"}, "accept_draws"), ("apgd", {"eps": -0.1}, "eps"),
    ("apgd", {"loss": "hinge"}, "loss"), ("apgd", {"norm": "l1"}, "norm"), ("apgd", {"restarts": 0}, "restarts"),
    ("apgd", {"steps": 0}, "steps"), ("autoattack", {"version": "plus"}, "version"),
    ("autoattack", {"eot": 0}, "eot"), ("autoattack", {"restarts": -1}, "restarts"),
    ("autoattack", {"loss": "dlr"}, "loss"),
])
def test_new_parameters_reject_bad_values_clearly(name, params, message):
    with pytest.raises(GenrobustError, match=f"invalid parameters for {name}: {message}"):
        make_attack(name, params)


def test_every_attack_has_eot_and_the_minimal_ones_robust_acceptance():
    for name, cls in ATTACKS.items():
        assert "eot" in cls.Params.model_fields, name
    for name in ("deepfool", "truncated-deepfool", "cw", "zoo"):
        assert {"accept_draws", "accept_fraction"} <= set(ATTACKS[name].Params.model_fields)


class Identity(MinimalAttack, register=False):
    name = "identity"
    norm = L2NORM

    def passes(self):
        return 0.0

    def run(self, f, x, y, targets):
        return AttackOutput(x.clone())


def test_robust_metrics_by_hand_and_through_a_merge():
    """p_misclassified from R fresh draws of CoinFlip; robust accuracy = strict majority correct."""
    x = torch.zeros(4, 1, 28, 28)
    x[1, 0, 0, 0] = 1.0  # every draw flips image 1 to class 1; none flips the others
    y = torch.zeros(4, dtype=torch.long)
    model = CoinFlip()
    identity = Identity()
    report, _ = run_attack(model, identity, x, y, eval_draws=16)
    pm = report.per_image["p_misclassified"]
    assert pm[1] == 1.0 and pm[0] == pm[2] == pm[3] == 0.0
    assert report.robust_accuracy == 0.75 and report.eval_draws == 16
    correct = report.per_image["correct"]
    assert report.misclassification_probability == pytest.approx(
        sum(p for p, c in zip(pm, correct) if c) / sum(correct))
    a, _ = run_attack(model, identity, x[:2], y[:2], eval_draws=16)
    b, _ = run_attack(model, identity, x[2:], y[2:], eval_draws=16)
    merged = merge_reports([a, b], seed=0)
    assert merged.per_image["p_misclassified"] == a.per_image["p_misclassified"] + b.per_image["p_misclassified"]
    assert merged.robust_accuracy == pytest.approx(0.75) and merged.eval_draws == 16
    with pytest.raises(GenrobustError, match="eval draws"):
        run_attack(model, identity, x, y, eval_draws=0)


def test_robust_metric_on_a_latent_model_is_a_probability():
    model = tiny_model("GFZ")
    x = _points(6)
    report, _ = run_attack(model, make_attack("fgsm", {"samples": 1}), x, torch.arange(6), eval_samples=1,
                           eval_draws=8)
    pm = torch.tensor(report.per_image["p_misclassified"])
    assert ((pm >= 0) & (pm <= 1)).all() and ((pm * 8).round() == pm * 8).all()
    assert report.robust_accuracy == pytest.approx((pm < 0.5).float().mean().item())


@pytest.mark.parametrize("fraction", [1.0, 0.7, 0.3])
def test_draw_by_draw_acceptance_equals_testing_all_draws_at_once(fraction):
    """accept_frozen gives the verdict of all R frozen draws at once, for any accept_fraction, and a second
    test starts at the draw that rejected each image, so a repeated rejection costs one pass per image."""
    from genrobust.attacks.apgd import APGD

    model = tiny_model("GFZ")
    x = torch.rand(12, 1, 28, 28, generator=torch.Generator().manual_seed(4))
    y = torch.arange(12) % 10
    attack = APGD(accept_draws=7, accept_fraction=fraction, samples=2)
    f = LogitsFn(model, 2, torch.Generator().manual_seed(0), accept_seed=11, n_images=12)
    every = torch.arange(12)
    ok, fail = f.accept_frozen(x, y, every, 7, attack.draws_needed())
    assert torch.equal(ok, attack.enough(f.fooled_fraction(x, y, 7, index=every)))
    assert ((fail >= 0) | ok).all()  # every rejection names a draw that failed
    rejected = (~ok).nonzero().squeeze(1)
    if fraction == 1.0 and len(rejected):
        assert (fail[ok] == -1).all()  # at fraction 1 an accepted image met no failing draw
        before = f.queries
        again, _ = f.accept_frozen(x[rejected], y[rejected], rejected, 7, attack.draws_needed())
        assert not again.any() and f.queries - before == len(rejected)
