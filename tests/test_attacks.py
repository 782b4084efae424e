"""Attacks: invariants, analytic answers on linear models, black-box guarantees, metrics by hand."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from genrobust.attacks import ATTACKS, L2NORM, Attack, AttackOutput, MinimalAttack, make_attack, margin
from genrobust.attacks.deepfool import class_jacobian
from genrobust.attacks.base import LogitsFn
from genrobust.errors import GenrobustError
from genrobust.robustness import run_attack
from tests.conftest import TRANSFER_SOURCE, tiny_model

FAST = {  # small budgets so every attack runs in a second on tiny models
    "fgsm": {"eps": 0.1}, "pgd": {"eps": 0.1, "alpha": 0.02, "steps": 5}, "deepfool": {"max_iter": 10},
    "truncated-deepfool": {"max_iter": 10, "bisection_steps": 4}, "cw": {"steps": 10, "binary_steps": 2},
    "zoo": {"steps": 5, "coords": 16}, "apgd": {"steps": 5}, "autoattack": {"steps": 4, "eot": 2, "queries": 40},
    "square": {"queries": 30},
    "transfer": {"source": TRANSFER_SOURCE, "params": {"eps": 0.1, "alpha": 0.02, "steps": 3}},
}


def _needs_store(name, request):
    """A transfer's source must be stored: the fixture puts one in a fresh store."""
    if name == "transfer":
        request.getfixturevalue("transfer_source")


class Linear(nn.Module):
    """A deterministic linear classifier with a constant shift (shift < 0 makes every logit negative)."""

    def __init__(self, seed=0, shift=0.0, scale=0.05):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w = nn.Parameter(torch.randn(10, 784, generator=g) * scale)
        self.b = nn.Parameter(torch.randn(10, generator=g) * 0.1 + shift)

    def forward(self, x):
        return x.flatten(1) @ self.w.T + self.b


def _points(n=8, seed=0, lo=0.3, hi=0.7):
    g = torch.Generator().manual_seed(seed)
    return lo + (hi - lo) * torch.rand(n, 1, 28, 28, generator=g)


def _labels(model, x):
    with torch.no_grad():
        return model(x).argmax(1)


def test_registry_has_the_study_attacks():
    assert list(ATTACKS)[:6] == ["fgsm", "pgd", "deepfool", "truncated-deepfool", "cw", "zoo"]
    assert set(FAST) == set(ATTACKS), "add new attacks to FAST so the parametrised tests cover them"


@pytest.mark.parametrize("name", list(ATTACKS))
def test_every_attack_on_a_latent_classifier(name, images, request):
    """Shape, box, seeded reproducibility, and that it accepts a genrobust classifier directly."""
    _needs_store(name, request)
    model = tiny_model("GFZ")
    y = torch.arange(len(images)) % 10
    attack = make_attack(name, FAST[name] | {"samples": 2})
    a = attack(model, images, y, seed=3)
    b = attack(model, images, y, seed=3)
    assert a.adversarial.shape == images.shape
    assert a.adversarial.min() >= 0 and a.adversarial.max() <= 1
    assert torch.equal(a.adversarial, b.adversarial)
    assert (a.queries is not None) == ATTACKS[name].black_box


@pytest.mark.parametrize("name", list(ATTACKS))
def test_every_attack_on_a_plain_module(name, request):
    _needs_store(name, request)
    model = Linear(shift=-500.0)
    x = _points()
    out = make_attack(name, FAST[name])(model, x, _labels(model, x))
    assert out.adversarial.shape == x.shape and torch.isfinite(out.adversarial).all()


def test_fgsm_respects_eps_and_box_and_follows_the_gradient_sign():
    model = Linear()
    x = torch.rand(16, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    y = _labels(model, x)
    adv = make_attack("fgsm", {"eps": 0.07})(model, x, y).adversarial
    assert (adv - x).abs().max() <= 0.07 + 1e-6
    assert adv.min() >= 0 and adv.max() <= 1
    # analytic gradient of CE for a linear model: W^T (softmax(z) - onehot(y))
    with torch.no_grad():
        p = model(x).softmax(1)
        grad = (p - nn.functional.one_hot(y, 10).float()) @ model.w
    expected = (x.flatten(1) + 0.07 * grad.sign()).clamp(0, 1)
    torch.testing.assert_close(adv.flatten(1), expected)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_pgd_stays_in_the_ball(norm):
    model = Linear()
    x = torch.rand(10, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    eps = 0.05 if norm == "linf" else 1.0
    adv = make_attack("pgd", {"eps": eps, "alpha": eps / 4, "steps": 10, "norm": norm})(
        model, x, _labels(model, x)).adversarial
    eta = (adv - x).flatten(1)
    size = eta.abs().amax(1) if norm == "linf" else eta.norm(dim=1)
    assert (size <= eps + 1e-5).all()
    assert adv.min() >= 0 and adv.max() <= 1


def _deepfool_l2_steps(model, x, y, feasible=lambda w: w):
    """Per image of a Linear model: the nearest class k by the linearised L2 distance along the ``feasible``
    part of w = W - W_y, and the step |d_k| / ||w_k||^2 * w_k onto its boundary."""
    W, b = model.w.detach(), model.b.detach()
    f = x.flatten(1) @ W.T + b
    for i in range(len(x)):
        w = feasible(W - W[y[i]])
        d = f[i] - f[i, y[i]]
        ratio = d.abs() / w.norm(dim=1)
        ratio[y[i]] = math.inf
        k = int(ratio.argmin())
        yield k, (d[k].abs() + 1e-4) / w[k].norm() ** 2 * w[k]


def test_deepfool_l2_on_a_linear_model_is_the_analytic_projection():
    """One step reaches the nearest linearised boundary: eta = |d_l| / ||w_l||^2 * w_l."""
    model = Linear(scale=0.01)
    x = _points(6)
    y = _labels(model, x)
    out = make_attack("deepfool", {"p": 2, "overshoot": 0.0, "max_iter": 1})(model, x, y).adversarial
    for i, (k, expected) in enumerate(_deepfool_l2_steps(model, x, y)):
        torch.testing.assert_close((out[i] - x[i]).flatten(), expected, atol=1e-5, rtol=1e-4)
        # and it sits on the boundary: classes y and k are (almost) tied, k just ahead
        z = model(out[i:i + 1])[0]
        assert z[k] >= z[y[i]] and (z[k] - z[y[i]]).abs() < 1e-3
    assert (_labels(model, out) != y).all()


def test_deepfool_steps_only_where_the_box_allows():
    """Pixels at 0 or 1 cannot move out of [0, 1]: the linearised boundary is measured along the directions
    the box allows, so one step of a linear model lands on the boundary even when half the pixels sit at 0
    (a step along the unmasked w would be clipped there and fall short)."""
    model = Linear(scale=0.01)
    x = _points(6)
    x.view(6, -1)[:, :392] = 0.0  # a black half, as Fashion-MNIST's background
    y = _labels(model, x)
    out = make_attack("deepfool", {"p": 2, "overshoot": 0.0, "max_iter": 1})(model, x, y).adversarial
    at_zero = lambda w: torch.cat([w[:, :392].clamp_min(0.0), w[:, 392:]], 1)  # at 0 a pixel can only rise
    for i, (k, expected) in enumerate(_deepfool_l2_steps(model, x, y, at_zero)):
        torch.testing.assert_close((out[i] - x[i]).flatten(), expected, atol=1e-5, rtol=1e-4)
        z = model(out[i:i + 1])[0]
        assert z[k] >= z[y[i]]
    assert (out >= 0).all() and (_labels(model, out) != y).all()


def test_deepfool_linf_gives_smaller_linf_than_l2():
    model = Linear(scale=0.01)
    x = _points(12, seed=4)
    y = _labels(model, x)
    adv2 = make_attack("deepfool", {"p": 2})(model, x, y).adversarial
    advi = make_attack("deepfool", {"p": "inf"})(model, x, y).adversarial
    assert (_labels(model, advi) != y).all() and (_labels(model, adv2) != y).all()
    linf = lambda a: (a - x).flatten(1).abs().amax(1).mean()  # noqa: E731
    assert linf(advi) < linf(adv2)


def test_deepfool_general_p_changes_labels():
    model = Linear(scale=0.01)
    x = _points(6, seed=5)
    y = _labels(model, x)
    for p in (1.5, 3, 8):
        adv = make_attack("deepfool", {"p": p})(model, x, y).adversarial
        assert (_labels(model, adv) != y).all(), p


@pytest.mark.parametrize("structure", ["DFZ", "GFZ", "DBX"])
def test_the_three_jacobian_modes_agree(structure):
    """Replicated single backward, vmapped backward and per-class loop give the same logits and gradients."""
    model = tiny_model(structure).eval()
    x = _points(3)
    fn = lambda: LogitsFn(model, 2, torch.Generator().manual_seed(0))  # noqa: E731
    la, a = class_jacobian(fn(), x, "auto")
    lb, b = class_jacobian(fn(), x, "vmap")
    lc, c = class_jacobian(fn(), x, "loop")
    with torch.no_grad():
        direct = model.logits(x, 2, torch.Generator().manual_seed(0))
    for logits in (la, lb, lc):
        torch.testing.assert_close(logits, direct, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-3)
    torch.testing.assert_close(b, c, atol=1e-4, rtol=1e-3)


def test_truncated_deepfool_is_never_longer_and_still_fools():
    model = Linear(scale=0.01)
    x = _points(10, seed=6)
    y = _labels(model, x)
    params = {"p": 2, "overshoot": 0.5}  # a generous overshoot leaves something to cut back
    df = make_attack("deepfool", params)(model, x, y).adversarial
    tdf = make_attack("truncated-deepfool", params | {"bisection_steps": 12})(model, x, y).adversarial
    n_df, n_tdf = (df - x).flatten(1).norm(dim=1), (tdf - x).flatten(1).norm(dim=1)
    assert (n_tdf <= n_df + 1e-6).all() and n_tdf.mean() < 0.9 * n_df.mean()
    assert (_labels(model, tdf) != y).all()


def test_margin_masks_true_class_with_minus_inf():
    logits = torch.tensor([[-500.0, -510.0, -505.0]])
    # with (1 - onehot) * Z the masked entry would be 0 and win the max; the correct other-max is -505
    assert margin(logits, torch.tensor([0])).item() == pytest.approx(5.0)


def test_cw_works_when_every_logit_is_negative():
    model = Linear(scale=0.01, shift=-1000.0)
    x = _points(6, seed=7)
    y = _labels(model, x)
    with torch.no_grad():
        assert (model(x) < 0).all()
    adv = make_attack("cw", {"steps": 100, "binary_steps": 4, "lr": 0.05})(model, x, y).adversarial
    assert (_labels(model, adv) != y).all()
    assert ((adv - x).flatten(1).norm(dim=1) < 5).all()


def test_cw_targeted_reaches_the_target():
    model = Linear(scale=0.01, shift=-1000.0)
    x = _points(6, seed=8)
    y = _labels(model, x)
    t = (y + 3) % 10
    adv = make_attack("cw", {"steps": 150, "binary_steps": 4, "lr": 0.05})(model, x, y, targets=t).adversarial
    assert (_labels(model, adv) == t).all()


class NoBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z):
        return z.clone()

    @staticmethod
    def backward(ctx, grad):
        raise AssertionError("backward through the model")


class Counting(nn.Module):
    """Counts every image it sees and fails on any backward pass through it."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.seen = inner, 0

    def forward(self, x):
        assert not torch.is_grad_enabled() and not x.requires_grad, "ZOO must not use gradients"
        self.seen += x.shape[0]
        return NoBackward.apply(self.inner(x))


def test_zoo_succeeds_without_gradients_and_counts_queries_exactly():
    inner = Linear(scale=0.01)  # parameters require grad: any autograd use would reach NoBackward
    model = Counting(inner)
    x = _points(5, seed=9)
    y = _labels(inner, x)
    out = make_attack("zoo", {"steps": 300, "coords": 64, "c": 10.0, "lr": 0.05})(model, x, y, seed=1)
    assert (_labels(inner, out.adversarial) != y).all()
    assert int(out.queries.sum()) == model.seen
    assert (out.queries % (2 * 64 + 1) == 0).all()  # whole iterations of 2 * coords + 1 queries each


def test_zoo_targeted():
    inner = Linear(scale=0.01)
    x = _points(3, seed=10)
    y = _labels(inner, x)
    t = (y + 1) % 10
    out = make_attack("zoo", {"steps": 400, "coords": 64, "c": 10.0})(inner, x, y, targets=t)
    assert (_labels(inner, out.adversarial) == t).all()


@pytest.mark.parametrize("name, params, message", [
    ("fgsm", {"eps": -0.1}, "eps"), ("pgd", {"steps": 0}, "steps"), ("pgd", {"norm": "l3"}, "norm"),
    ("deepfool", {"p": 1}, "p"), ("deepfool", {"p": 0.5}, "p"), ("deepfool", {"overshoot": -1}, "overshoot"),
    ("cw", {"c": 0}, "c"), ("cw", {"binary_steps": 0}, "binary_steps"), ("zoo", {"coords": 0}, "coords"),
    ("zoo", {"h": -1}, "h"), ("fgsm", {"samples": 0}, "samples"), ("fgsm", {"epsilon": 0.1}, "epsilon"),
    ("deepfool", {"p": "nan"}, "p"),
])
def test_invalid_parameters_are_clear(name, params, message):
    with pytest.raises(GenrobustError, match=f"invalid parameters for {name}: {message}"):
        make_attack(name, params)


def test_unknown_attack_and_bad_inputs(images):
    with pytest.raises(GenrobustError, match="unknown attack 'nope'"):
        make_attack("nope")
    attack = make_attack("fgsm")
    model = Linear()
    with pytest.raises(GenrobustError, match="shape"):
        attack(model, torch.zeros(2, 3, 28, 28), [0, 1])
    with pytest.raises(GenrobustError, match="labels"):
        attack(model, images, [0] * (len(images) + 1))
    with pytest.raises(GenrobustError, match="no targeted mode"):
        attack(model, images, [0] * len(images), targets=[1] * len(images))


class Toy(MinimalAttack, register=False):
    """Adds a fixed perturbation per image (for checking the metrics by hand)."""

    name = "toy-fixed"
    norm = L2NORM

    def passes(self):
        return 0.0

    def __init__(self, delta):
        super().__init__()
        self.delta, self.offset = delta, 0

    def run(self, f, x, y, targets):  # called chunk by chunk, in order
        delta = self.delta[self.offset:self.offset + len(x)]
        self.offset += len(x)
        return AttackOutput(x + delta)


def test_metrics_match_a_hand_computation():
    # class 0 iff pixel 0 < 0.5 (deterministic), other classes far below
    class Threshold(nn.Module):
        def forward(self, x):
            v = x.flatten(1)[:, 0]
            z = torch.full((len(x), 10), -50.0)
            z[:, 0] = -v * 10
            z[:, 1] = -5.0
            return z

    x = torch.full((4, 1, 28, 28), 0.2)
    x[3, 0, 0, 0] = 0.8  # image 3 is misclassified already (label 0, predicted 1)
    y = torch.tensor([0, 0, 0, 0])
    delta = torch.zeros_like(x)
    delta[0, 0, 0, 0] = 0.6  # 0.2 -> 0.8: flips to class 1 (success)
    delta[1, 0, 0, 0] = 0.1  # 0.2 -> 0.3: stays class 0
    delta[2, 0, 0, :3] = 0.6  # flips, L0 = 3
    report, adv = run_attack(Threshold(), Toy(delta), x, y, batch_size=3)
    assert report.clean_accuracy == 0.75 and report.adversarial_accuracy == 0.25
    assert report.success_rate == pytest.approx(2 / 3)
    l2 = np.array([0.6, math.sqrt(3 * 0.36)])
    x_norm = np.array([x[0].norm().item(), x[2].norm().item()])
    assert report.mean_l2 == pytest.approx(l2.mean(), rel=1e-5)
    assert report.median_l2 == pytest.approx(np.median(l2), rel=1e-5)
    assert report.robustness == pytest.approx((l2 / x_norm).mean(), rel=1e-5)
    assert report.mean_linf == pytest.approx(0.6, rel=1e-5)
    assert report.mean_l0 == 2.0 and report.median_l0 == 2.0
    assert report.per_image["success"] == [True, False, True, False]
    assert report.queries is None and report.n == 4
    assert report.summary()["params"]["batch_size"] == 3
    report.model_dump_json()  # JSON-serialisable
    assert "toy-fixed" not in ATTACKS


def test_success_is_judged_with_fresh_noise():
    """A boundary-hugging attack fools a re-sampled stochastic model only part of the time."""
    model = tiny_model("GFZ")
    x = _points(20, seed=11)
    with torch.no_grad():
        y = model.eval().logits(x, 10, torch.Generator().manual_seed(0)).argmax(1)
    plain = make_attack("deepfool", {"overshoot": 0.0, "samples": 1, "accept_draws": 1})
    report, _ = run_attack(model, plain, x, y, seed=0, eval_samples=1, eval_draws=50)
    assert report.misclassification_probability is not None and report.misclassification_probability < 0.9
    # robust acceptance (the defaults) keeps going until all of ten draws of the attacker's noise agree
    robust, _ = run_attack(model, make_attack("deepfool", {"overshoot": 0.0, "samples": 1}), x, y, seed=0,
                           eval_samples=1, eval_draws=50)
    assert robust.misclassification_probability > report.misclassification_probability


def test_seeded_queries_share_noise_for_finite_differences():
    """ZOO's +h and -h batches use one seed: identical inputs give identical scores, across chunks too."""
    model = tiny_model("GFZ")
    f = LogitsFn(model, 2, torch.Generator().manual_seed(0))
    f.chunk = 4
    x = _points(10)
    with torch.no_grad():
        a, b, c = f(x, seed=5), f(x, seed=5), f(x, seed=6)
    assert torch.equal(a, b) and not torch.allclose(a, c)
    assert f.queries == 30
