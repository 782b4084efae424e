"""Gradient-masking checks (genrobust.masking): planted masking models are flagged, a plain CNN passes, the
McNemar decision on planted outcomes, the CLI and the study's section. Tiny models and budgets throughout."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from statsmodels.stats.contingency_tables import mcnemar as sm_mcnemar
from torch import nn

from genrobust.attacks import ATTACKS
from genrobust.cli import main
from genrobust.errors import GenrobustError
from genrobust.masking import (LETTERS, MaskingConfig, _Ctx, check_b, check_masking, images_needed, mcnemar,
                               paired)

SQUARE = "square" in ATTACKS

# tiny budgets; eps 0.2 sits where the plain CNN below is fooled by gradients but not by chance
TEST_CONFIG = dict(images={"a": 12, "b": 10, "c": 12, "d": 16, "e": 12, "f": 6}, eps=0.2, eps_grid=[0.1, 0.2, 0.5],
                   steps=[2, 5, 20], eot=[1, 4], restarts=[1, 2], ladder_steps=5, apgd_steps=20, pgd_steps=10,
                   deepfool_iter=50, cw_steps=20, cw_binary_steps=3, eval_draws=3,
                   params={"square": {"queries": 200}} if SQUARE else {})


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models gain nothing from threads, and a shared CPU loses a lot to them."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def synthetic(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Ten classes, each a bright 7x7 block at its own place on a noisy dark background: separable."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 10, (n,), generator=g)
    x = 0.1 + 0.1 * torch.rand(n, 1, 28, 28, generator=g)
    for i, k in enumerate(y.tolist()):
        r, c = divmod(k, 4)
        x[i, 0, 7 * r:7 * r + 7, 7 * c:7 * c + 7] += 0.6
    return x.clamp(0, 1), y


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 8, 5, stride=2, padding=2)
        self.c2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.fc = nn.Linear(16 * 7 * 7, 10)

    def forward(self, x):
        return self.fc(F.relu(self.c2(F.relu(self.c1(x)))).flatten(1))


class Quantised(nn.Module):
    """x -> round(255 x) / 255 in front of the network: the same predictions, a gradient of exactly zero."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(torch.round(x * 255) / 255)


class FreshGradientNoise(nn.Module):
    """Adds huge fresh noise at every call where only the gradient sees it: logits + <x - sg(x), N> with N ~
    N(0, scale^2) per image, class and pixel, so the predictions are the network's and every gradient is mostly
    noise. Declares itself stochastic, so EOT averages its draws."""

    stochastic = True

    def __init__(self, net: nn.Module, scale: float = 100.0):
        super().__init__()
        self.net, self.scale = net, scale

    def forward(self, x):
        z = self.net(x)
        d = (x - x.detach()).flatten(1)
        noise = torch.randn(x.shape[0], z.shape[1], d.shape[1], device=x.device) * self.scale
        return z + torch.einsum("nd,ncd->nc", d, noise)


@pytest.fixture(scope="module")
def net() -> nn.Module:
    """A small CNN trained for about a second."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = SmallCNN()
    x, y = synthetic(2000, 0)
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    for _ in range(3):
        for s in range(0, len(x), 100):
            loss = F.cross_entropy(model(x[s:s + 100]), y[s:s + 100])
            opt.zero_grad()
            loss.backward()
            opt.step()
    torch.set_num_threads(threads)
    return model.eval()


@pytest.fixture(scope="module")
def test_set():
    return synthetic(32, 123)


def run(model, test_set, **kw):
    torch.manual_seed(0)  # the planted noise comes from torch's global generator
    x, y = test_set
    return check_masking(model, x, y, MaskingConfig(**{**TEST_CONFIG, **kw}), model_name=type(model).__name__)


def test_a_plain_cnn_passes_every_check_that_runs(net, test_set):
    x, y = test_set
    assert (net(x).argmax(1) == y).float().mean() > 0.9  # the task is learnt
    report = run(net, test_set)
    status = {c.letter: c.status for c in report.checks}
    assert report.flagged == [], [(c.letter, c.key_numbers) for c in report.checks if c.status == "flag"]
    assert all(status[c] == "pass" for c in "abcef")
    d = report.check("d")
    if SQUARE:
        assert d.status == "pass" and any(r.label.startswith("Square") for r in d.rates)
    else:
        assert d.status == "not run" and "unavailable" in d.explanation
    # no transfer source was given: said so, not hidden
    assert any("Transfer not run" in n for n in d.notes)
    # a deterministic model: the EOT ladder is skipped with a note
    assert any("EOT ladder not run" in n for n in report.check("b").notes)
    # every check carries numbers with intervals and n
    for c in report.checks:
        for r in c.rates:
            assert r.n > 0 and r.low <= r.value <= r.high
    # the APGD run at the check eps is shared by (b), (c) and (d): one run, not three
    labels = [r.label for r in report.runs]
    assert len(labels) == len(set(labels))
    assert sum(r.attack == "apgd" and r.params["eps"] == 0.2 and r.params["steps"] == 20 for r in report.runs) == 1


def test_a_zero_gradient_quantiser_in_front_is_flagged(net, test_set):
    q = Quantised(net)
    x, y = test_set
    xg = x[:4].clone().requires_grad_(True)
    F.cross_entropy(q(xg), y[:4]).backward()
    assert torch.count_nonzero(xg.grad) == 0  # the planted masking: no gradient at all
    assert torch.equal(q(x).argmax(1), net(x).argmax(1))  # same predictions as the plain model
    report = run(q, test_set)
    flagged = set(report.flagged)
    # FGSM's sign of a zero gradient never moves: robust accuracy does not fall with eps; nothing reaches the
    # boundary at L-infinity 0.5; the minimal attacks fool nothing
    assert {"a", "e", "f"} <= flagged
    if SQUARE:
        assert "d" in flagged  # the query-only attack beats the gradients
    for c in report.checks:
        if c.status == "flag":
            assert "Try" in c.explanation and c.key_numbers
    f = report.check("f")
    assert f.rates[-1].robust > MaskingConfig(**TEST_CONFIG).tolerance


def test_fresh_huge_gradient_noise_is_flagged(net, test_set):
    noisy = FreshGradientNoise(net)
    x, y = test_set
    assert torch.equal(noisy(x).argmax(1), net(x).argmax(1))  # its noise never changes a prediction
    report = run(noisy, test_set)
    assert report.stochastic
    assert "f" in report.flagged  # DeepFool and CW steps are mostly noise: nothing is fooled
    if SQUARE:
        assert "d" in report.flagged
    # a stochastic model gets the EOT ladder
    assert any("eot 4" in c.stronger for c in report.check("b").comparisons)


class PlantedRuns:
    """Stands in for the runs: the robust outcomes of every APGD rung are planted by its step count."""

    def __init__(self, outcomes: dict[int, np.ndarray]):
        self.outcomes = outcomes

    def robust(self, label, name, params, n, optional=False):
        return self.outcomes.get(params["steps"], self.outcomes[min(self.outcomes)])[:n]

    def error(self, name, params):
        return None


def _ladder_result(rise: int, n: int = 20):
    config = MaskingConfig(**{**TEST_CONFIG, "images": {"b": n}, "steps": [10, 100], "restarts": [1, 2]})
    low = np.zeros(n, dtype=bool)
    low[:2] = True  # 2 images robust under 10 steps
    high = low.copy()
    high[2:2 + rise] = True  # 100 steps leave `rise` more images robust, on the same images
    return check_b(_Ctx(PlantedRuns({10: low, 100: high}), config, stochastic=False, model_name="planted"))


def test_mcnemar_decision_on_planted_outcomes():
    n = 30
    weaker = np.zeros(n, dtype=bool)
    stronger = weaker.copy()
    stronger[:8] = True  # robust under the stronger attack only, on 8 images; none the other way
    b, c, p_hi, p_lo = mcnemar(stronger, weaker)
    assert (b, c) == (8, 0)
    assert p_hi == pytest.approx(0.5 ** 8) and p_lo == 1.0  # exact: P(Binomial(8, 1/2) >= 8)
    # one side of statsmodels' exact (two-sided) McNemar on the same 2x2 table
    table = [[0, b], [c, n - b - c]]
    assert p_hi == pytest.approx(sm_mcnemar(table, exact=True).pvalue / 2)
    assert paired("strong", stronger, "weak", weaker, 0.05).beyond_noise
    assert not paired("strong", weaker, "weak", stronger, 0.05).beyond_noise  # the expected direction never flags
    # discordance both ways, balanced: noise
    mixed = weaker.copy()
    mixed[8:16] = True
    r = paired("strong", stronger, "weak", mixed, 0.05)
    assert (r.b, r.c) == (8, 8) and not r.beyond_noise and r.p_higher > 0.5
    # identical outcomes: nothing to test
    assert mcnemar(stronger, stronger)[2:] == (1.0, 1.0)
    with pytest.raises(GenrobustError):
        mcnemar(stronger, stronger[:5])
    # through a check: 5 more robust images with more steps is beyond noise (p = 1/32), 4 is not (1/16)
    flagged = _ladder_result(rise=5)
    assert flagged.status == "flag" and "100 steps" in flagged.explanation
    rise = next(c for c in flagged.comparisons if "100 steps" in c.stronger and "10 steps" in c.weaker)
    assert (rise.b, rise.c) == (5, 0) and rise.p_higher == pytest.approx(1 / 32)
    assert _ladder_result(rise=4).status == "pass"


def test_config_presets_and_validation():
    default = MaskingConfig()
    assert default == MaskingConfig.from_preset("default")
    capped = MaskingConfig.from_preset("default", limit=7)
    assert max(capped.images.values()) == 7 and images_needed(capped) == 7
    assert images_needed(default, ["f"]) == default.images["f"]
    assert MaskingConfig(steps=[100, 10]).steps == [10, 100]
    with pytest.raises(GenrobustError):
        MaskingConfig.from_preset("huge")
    with pytest.raises(ValueError):
        MaskingConfig(params={"nosuchattack": {}})
    with pytest.raises(ValueError):
        MaskingConfig(eot=[5])  # a ladder needs two rungs
    with pytest.raises(GenrobustError):
        check_masking(nn.Identity(), torch.rand(2, 1, 28, 28), torch.zeros(2, dtype=torch.long), default,
                      checks=["z"])


def test_cli_check(tiny_store, capsys):
    args = ["check", "tiny-gfz", "--preset", "quick", "--limit", "2", "--checks", "a,d", "--no-progress",
            "--transfer-source", "tiny-dfz", "--param", "apgd.samples=2", "--param", "pgd.samples=2",
            "--param", "square.queries=20", "--param", "square.samples=2"] if SQUARE else \
        ["check", "tiny-gfz", "--preset", "quick", "--limit", "2", "--checks", "a,d", "--no-progress",
         "--transfer-source", "tiny-dfz", "--param", "apgd.samples=2", "--param", "pgd.samples=2"]
    assert main(args + ["--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [c["letter"] for c in report["checks"]] == ["a", "d"]
    d = report["checks"][1]
    if "transfer" in ATTACKS:
        assert any(r["label"].startswith("transfer from tiny-dfz") for r in d["rates"])
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "(a) unbounded budgets" in out and "key numbers" in out
    assert main(["check", "no-such-model"]) == 2
    assert main(["check", "tiny-gfz", "--checks", "z"]) == 2
    assert main(["check", "tiny-gfz", "--param", "apgd.nosuch=1", "--checks", "a"]) == 2


def test_study_has_a_masking_section(tiny_store, tmp_path):
    from genrobust.study import StudyConfig, reproduce
    from tests.test_study import TINY_PRIMARY

    out = tmp_path / "report"
    overrides = {**TEST_CONFIG, "images": {k: 2 for k in LETTERS}, "steps": [2, 3], "eot": [1, 2],
                 "restarts": [1, 2], "ladder_steps": 2, "apgd_steps": 2, "pgd_steps": 2, "deepfool_iter": 3,
                 "cw_steps": 2, "cw_binary_steps": 1, "eps_grid": [0.2, 0.5],
                 "params": {a: {"samples": 2} for a in ("fgsm", "pgd", "apgd", "deepfool", "cw")}
                 | ({"square": {"queries": 10, "samples": 2}} if SQUARE else {})}
    config = StudyConfig(models=["tiny-gfz"], attacks=["fgsm"], params={"fgsm": {"samples": 2}}, limit=4,
                         clean_limit=10, fit_limit=60, eval_samples=2, eval_draws=3, out=out, adaptive=False,
                         curves=False, masking=True, masking_overrides=overrides, preset="quick",
                         replicates=1, matched=False, primary=TINY_PRIMARY)  # else it trains 2 more seeds
    results = reproduce(config, tiny_store)
    section = results["masking"]["tiny-gfz"]
    assert [c["letter"] for c in section["checks"]] == list(LETTERS)
    saved = json.loads((out / "results.json").read_text())
    assert saved["masking"]["tiny-gfz"]["checks"][0]["status"] in ("pass", "flag", "not run")
    md = (out / "report.md").read_text()
    assert "## Gradient-masking checks" in md and "(f) minimal attacks succeed" in md
    assert "Gradient-masking checks" in (out / "report.html").read_text()
