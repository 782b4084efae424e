"""Memory stays bounded as K grows: every pass of the model holds at most a fixed number of row-samples
(rows x K), attacks draw their noise pass by pass, and frozen acceptance draws past their budget are held
for one part of the batch at a time (tiny models, CPU)."""

import pytest
import torch

from genrobust import seeding
from genrobust.attacks import ATTACKS, make_attack
from genrobust.attacks import base
from genrobust.models import classifier
from genrobust.robustness import run_attack
from tests.conftest import TRANSFER_SOURCE, tiny_model
from tests.test_attacks import _points

# small enough to bite on a tiny model at K = 60, so that every path must chunk
PASS_UNITS, GRAD_PASS_UNITS, K = 600, 150, 60

# each attack briefly, with robust acceptance and EOT where it has them
BRIEF = {
    "fgsm": {"eot": 3},
    "pgd": {"steps": 2, "eot": 3},
    "deepfool": {"max_iter": 3, "accept_draws": 3, "eot": 2},
    "truncated-deepfool": {"max_iter": 2, "accept_draws": 3, "bisection_steps": 2},
    "cw": {"steps": 2, "binary_steps": 1, "accept_draws": 3, "eot": 2},
    "zoo": {"steps": 2, "coords": 4, "accept_draws": 3, "eot": 2},
    "apgd": {"steps": 3, "eot": 2, "accept_draws": 4},
    "autoattack": {"steps": 2, "version": "rand", "eot": 2},
    "square": {"queries": 8, "eot": 2, "accept_draws": 3},
    "transfer": {"source": TRANSFER_SOURCE, "attack": "fgsm"},  # the target is only evaluated
}


def test_every_attack_is_covered():
    assert set(BRIEF) == set(ATTACKS)


@pytest.mark.parametrize("name", list(BRIEF))
def test_every_pass_of_an_attack_and_its_evaluation_is_bounded_in_rows_times_k(name, monkeypatch, request):
    if name == "transfer":
        request.getfixturevalue("transfer_source")
    monkeypatch.setitem(classifier.PASS_UNITS, "cpu", PASS_UNITS)
    monkeypatch.setitem(classifier.GRAD_PASS_UNITS, "cpu", GRAD_PASS_UNITS)
    model = tiny_model("GFZ").eval()
    passes = []
    log_weights = model.log_weights

    def counting(x, y, samples=1, *args, **kwargs):
        # row-samples of decoder work: a row is one image with all C labels (a Jacobian replica holds one)
        passes.append((x.shape[0] * y.shape[1] * samples / model.config.num_classes, torch.is_grad_enabled()))
        return log_weights(x, y, samples, *args, **kwargs)

    monkeypatch.setattr(model, "log_weights", counting)
    x = _points(12, seed=1)
    attack = make_attack(name, {"samples": K, **BRIEF[name]})
    report, adv = run_attack(model, attack, x, torch.arange(12) % 10, seed=5, eval_samples=K, eval_draws=3)
    assert adv.shape == x.shape and torch.isfinite(adv).all() and report.n == 12
    grad = [u for u, g in passes if g]
    infer = [u for u, g in passes if not g]
    assert infer and (grad or attack.black_box)  # ZOO never uses autograd
    assert max(grad, default=0) <= GRAD_PASS_UNITS and max(infer) <= PASS_UNITS
    # unbounded, the evaluator's R-draw pass alone would hold 12 images x 3 draws x K
    assert sum(infer) > PASS_UNITS


def test_rows_per_pass_shrink_in_proportion_to_k():
    assert classifier.pass_rows(10, "cpu") == classifier.PASS_UNITS["cpu"] // 10
    assert classifier.pass_rows(1000, "cpu", grad=True) == classifier.GRAD_PASS_UNITS["cpu"] // 1000
    assert classifier.pass_rows(10**7, "cpu") == 1  # one row at the least
    assert classifier.pass_rows(10, "cuda") > classifier.pass_rows(10, "cpu")


def test_noise_drawn_pass_by_pass_is_the_one_draw_for_the_whole_batch():
    """The chunked paths rely on this: on the CPU, rows of K x D values (a multiple of 16) drawn in turn
    from one generator are the numbers one draw of all rows gives."""
    model = tiny_model("GFZ")  # D = 8: K even gives rows of a multiple of 16 values
    whole = model.draw_noise(50, 6, torch.Generator().manual_seed(3))
    gen = torch.Generator().manual_seed(3)
    parts = torch.cat([model.draw_noise(len(range(s, min(s + 7, 50))), 6, gen) for s in range(0, 50, 7)])
    assert torch.equal(whole, parts)


def test_logits_without_autograd_run_in_bounded_passes_with_the_same_noise(monkeypatch):
    model = tiny_model("GBZ").eval()
    x = _points(9, seed=2)
    full = model.logits(x, 4, torch.Generator().manual_seed(1))  # autograd on: one pass
    monkeypatch.setitem(classifier.PASS_UNITS, "cpu", 8)  # two rows per pass at K = 4
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        chunked = model.logits(x, 4, gen)
    torch.testing.assert_close(chunked, full.detach(), rtol=1e-5, atol=1e-5)
    # the generator is left where one draw of the whole batch leaves it
    after = torch.Generator().manual_seed(1)
    model.draw_noise(9, 4, after)
    assert torch.equal(gen.get_state(), after.get_state())


def test_an_attack_past_its_frozen_draws_budget_runs_in_parts_with_their_own_seeds(monkeypatch):
    model = tiny_model("GFZ").eval()
    x, y = _points(7, seed=4), torch.arange(7) % 10
    attack = make_attack("zoo", {"samples": 2, "accept_draws": 4, "steps": 2, "coords": 4})
    assert attack.images_per_part(model) >= 1000  # every default fits in one part
    monkeypatch.setattr(base, "FROZEN_ROWS", 3 * 4 * 2)  # three images per part
    assert attack.images_per_part(model) == 3
    out = attack(model, x, y, seed=9)
    expect = [attack._attack(model, x[s:s + 3], y[s:s + 3], seeding.derive(9, "part", i), None)
              for i, s in enumerate(range(0, 7, 3))]
    assert torch.equal(out.adversarial, torch.cat([e.adversarial for e in expect]))
    assert torch.equal(out.queries, torch.cat([e.queries for e in expect]))
    # only frozen draws need parts: a deterministic module or R = 1 attacks the batch whole
    assert make_attack("zoo", {"samples": 2, "accept_draws": 1}).images_per_part(model) > 7


def test_a_large_k_attack_needs_no_more_passes_memory_than_k_10(monkeypatch):
    """The bound a user relies on: at K = 1000 no pass holds more row-samples than one at K = 10 does."""
    model = tiny_model("GFZ").eval()
    peaks = {}
    log_weights = model.log_weights

    def counting(x, y, samples=1, *args, **kwargs):
        peaks[k] = max(peaks.get(k, 0), x.shape[0] * y.shape[1] * samples / model.config.num_classes)
        return log_weights(x, y, samples, *args, **kwargs)

    monkeypatch.setattr(model, "log_weights", counting)
    x = _points(8, seed=7)
    for k in (10, 1000):
        make_attack("fgsm", {"samples": k})(model, x, torch.arange(8), seed=0)
    assert peaks[1000] <= max(peaks[10], classifier.GRAD_PASS_UNITS["cpu"])
