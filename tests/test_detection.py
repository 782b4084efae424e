"""Detectors: thresholds on known Gaussian scores, calibrated FPR, hand counts, ROC vs scikit-learn,
refusal for DFX/DBX, persistence, and the detector-aware attack."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score, roc_curve

from genrobust.attacks.detector_aware_pgd import DetectorAwarePGD
from genrobust.cli import main
from genrobust.detection import (DETECTORS, Detection, DetectionNotApplicable, KLDetector, LogitDetector,
                                 MarginalDetector, detection_rate, false_positive_rate, fit_detectors, load_detector,
                                 roc)
from genrobust.errors import GenrobustError
from genrobust.store import ModelStore
from tests.conftest import tiny_model

C = 10
Z95 = 1.6448536269514722  # standard normal 95% quantile


def gaussian_logits(n: int, mu: torch.Tensor, sigma: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits whose predicted class is the label and whose log p(x, label) ~ N(mu_c, sigma_c)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, C, (n,), generator=g)
    score = mu[labels] + sigma[labels] * torch.randn(n, generator=g)
    logits = score[:, None] - 50.0 - torch.rand(n, C, generator=g)  # every other class far below
    logits[torch.arange(n), labels] = score
    return logits, labels


MU = torch.linspace(-300.0, -120.0, C)
SIGMA = torch.linspace(5.0, 40.0, C)


@pytest.fixture
def gfz():
    return tiny_model("GFZ")


def test_thresholds_on_known_gaussian_scores(gfz):
    n = 40_000
    train, ytrain = gaussian_logits(n, MU, SIGMA, seed=1)
    held, _ = gaussian_logits(n, MU, SIGMA, seed=2)
    det = LogitDetector(gfz).fit_logits(train, ytrain).calibrate_logits(held, 0.05)
    per_class = n / C
    assert (det.mu - MU).abs().max() < 4 * SIGMA.max() / math.sqrt(per_class)
    assert ((det.sigma / SIGMA) - 1).abs().max() < 4 / math.sqrt(2 * per_class)
    # the standardised scores are N(0, 1), so alpha is the 95% quantile of N(0,1) and delta = mu - 1.645 sigma
    assert abs(det.alpha - Z95) < 0.05
    out = det.detect_logits(held[:5])
    pred = held[:5].argmax(1)
    assert torch.allclose(out.threshold, det.mu[pred] - det.alpha * det.sigma[pred])
    assert torch.allclose(out.threshold, MU[pred] - Z95 * SIGMA[pred], rtol=0.02)


def test_fpr_on_fresh_clean_data_is_five_percent(gfz):
    train, ytrain = gaussian_logits(20_000, MU, SIGMA, seed=3)
    held, _ = gaussian_logits(5_000, MU, SIGMA, seed=4)
    test, _ = gaussian_logits(20_000, MU, SIGMA, seed=5)
    for cls in DETECTORS.values():
        det = cls(gfz).fit_logits(train, ytrain).calibrate_logits(held, 0.05)
        fpr = false_positive_rate(det.detect_logits(test))
        # binomial error of the calibration set plus that of the test set, 4 standard deviations
        tol = 4 * math.sqrt(0.05 * 0.95 * (1 / 5_000 + 1 / 20_000))
        assert abs(fpr - 0.05) < tol, (cls.name, fpr)


def test_fpr_on_real_held_out_images(fmnist_root, gfz):
    from genrobust import data
    train = data.load("fashion-mnist", "train", limit=400, root=fmnist_root)
    val = data.load("fashion-mnist", "validation", limit=600, root=fmnist_root)
    test = data.load("fashion-mnist", "test", limit=600, root=fmnist_root)
    det = MarginalDetector(gfz, samples=2).fit(train.images, train.labels, x_heldout=val.images)
    fpr = false_positive_rate(det.detect(test.images, seed=7))
    assert abs(fpr - 0.05) < 4 * math.sqrt(0.05 * 0.95 * (1 / 600 + 1 / 600))


def test_detection_rate_matches_hand_count(gfz):
    det = LogitDetector(gfz)
    det.mu, det.sigma, det.alpha = torch.arange(C, dtype=torch.float32) * -10, torch.full((C,), 2.0), 1.5
    logits = torch.full((6, C), -1000.0)
    # (predicted class, log p(x, class)): threshold of class c is -10c - 3
    cases = [(0, -2.0), (0, -4.0), (3, -32.9), (3, -33.1), (9, -50.0), (9, -200.0)]
    for i, (c, v) in enumerate(cases):
        logits[i, c] = v
    out = det.detect_logits(logits)
    hand = [v < -10 * c - 3.0 for c, v in cases]
    assert out.is_adversarial.tolist() == hand == [False, True, False, True, False, True]
    success = [True, True, False, True, True, False]
    flagged_successes = sum(h for h, s in zip(hand, success, strict=True) if s)
    assert detection_rate(out, success) == pytest.approx(flagged_successes / sum(success))  # 2 of 4
    assert detection_rate(out, [False] * 6) is None
    assert out.prediction.tolist() == [c for c, _ in cases]


def test_marginal_and_kl_scores(gfz):
    logits = torch.randn(50, C) * 5 - 100
    labels = logits.argmax(1)
    m = MarginalDetector(gfz).fit_logits(logits, labels)
    assert torch.allclose(m.raw_score(logits, labels), torch.logsumexp(logits, 1))
    k = KLDetector(gfz).fit_logits(logits, labels)
    present = labels.unique()
    assert torch.allclose(k.pbar[present].sum(1), torch.ones(len(present)))
    assert (k.raw_score(logits, labels) >= -1e-6).all()
    # an image whose p(y|x) equals the class mean distribution has zero divergence
    c = int(present[0])
    assert k.raw_score(k.pbar[c].log()[None], torch.tensor([c])).abs().item() < 1e-5
    # the KL detector flags large divergences: threshold mu_c + alpha sigma_c, flagged above it
    k.calibrate_logits(logits)
    out = k.detect_logits(logits)
    assert torch.allclose(out.threshold, k.mu[out.prediction] + k.alpha * k.sigma[out.prediction])
    assert torch.equal(out.is_adversarial, out.score > out.threshold)


def test_roc_agrees_with_sklearn_and_with_pair_counting():
    g = torch.Generator().manual_seed(0)
    clean_z = torch.randn(300, generator=g)
    adv_z = torch.randn(120, generator=g) - 1.0
    mk = lambda z: Detection(z < -1.645, z, z, torch.zeros(len(z), dtype=torch.long), z)  # noqa: E731
    success = torch.rand(120, generator=g) < 0.7
    r = roc(mk(clean_z), mk(adv_z), success)
    labels = np.r_[np.zeros(300), np.ones(int(success.sum()))]
    scores = -np.r_[clean_z.numpy(), adv_z[success].numpy()]
    fpr, tpr, _ = roc_curve(labels, scores)
    assert r["auc"] == pytest.approx(roc_auc_score(labels, scores))
    assert np.allclose(r["fpr"], fpr) and np.allclose(r["tpr"], tpr)
    # AUC = P(adversarial more suspicious than clean), counted over all pairs
    a, c = -adv_z[success][:, None], -clean_z[None, :]
    pairs = ((a > c).double() + 0.5 * (a == c).double()).mean().item()
    assert r["auc"] == pytest.approx(pairs)
    assert r["n_adversarial"] == int(success.sum()) and r["n_clean"] == 300
    assert roc(mk(clean_z), mk(adv_z), torch.zeros(120, dtype=torch.bool)) is None


@pytest.mark.parametrize("structure", ["DFX", "DBX"])
def test_detectors_refuse_models_without_density(structure, env):
    model = tiny_model(structure)
    for cls in DETECTORS.values():
        with pytest.raises(DetectionNotApplicable, match="not applicable.*p_D\\(x\\)"):
            cls(model)
    store = ModelStore()
    store.save("tiny-nodensity", model, {"structure": structure, "config": model.config.model_dump(mode="json")})
    with pytest.raises(DetectionNotApplicable):
        fit_detectors(store, "tiny-nodensity", limit=20)
    with pytest.raises(DetectionNotApplicable):
        load_detector(store, "tiny-nodensity", "logit")


def test_fit_save_load_round_trip_and_cli(env, capsys):
    model = tiny_model("GFZ")
    store = ModelStore()
    store.save("tiny-gfz", model, {"structure": "GFZ", "config": model.config.model_dump(mode="json")})
    with pytest.raises(GenrobustError, match="no fitted detectors.*fit-detectors"):
        load_detector(store, "tiny-gfz", "logit")
    rec = fit_detectors(store, "tiny-gfz", samples=2, limit=120)
    assert set(rec["detectors"]) == set(DETECTORS) and rec["n_train"] == 120
    from genrobust import data
    x = data.load("fashion-mnist", "test", limit=30).images
    for name in DETECTORS:
        fresh = load_detector(store, "tiny-gfz", name)
        mem = DETECTORS[name].from_dict(rec["detectors"][name], model)
        a, b = fresh.detect(x, seed=3), mem.detect(x, seed=3)
        assert torch.equal(a.is_adversarial, b.is_adversarial) and torch.allclose(a.score, b.score)
    with pytest.raises(GenrobustError, match="unknown detector"):
        load_detector(store, "tiny-gfz", "nope")
    assert main(["detect", "tiny-gfz", "--detector", "all", "--limit", "10", "--json"]) == 0
    out = capsys.readouterr().out
    import json
    parsed = json.loads(out)
    assert set(parsed) == set(DETECTORS) and len(parsed["logit"]["scores"]) == 10
    assert main(["detect", "tiny-gfz", "--detector", "bogus"]) == 2
    assert "unknown detector" in capsys.readouterr().err


def test_cli_refuses_dfx_with_a_clear_message(env, capsys):
    model = tiny_model("DFX")
    ModelStore().save("tiny-dfx", model, {"structure": "DFX", "config": model.config.model_dump(mode="json")})
    assert main(["fit-detectors", "tiny-dfx", "--limit", "20"]) == 2
    err = capsys.readouterr().err
    assert "not applicable" in err and "Traceback" not in err


def test_detector_aware_pgd_stays_in_budget_and_needs_a_logit_detector(fmnist_root):
    from genrobust import data
    model = tiny_model("GFZ")
    train = data.load("fashion-mnist", "train", limit=100, root=fmnist_root)
    det = LogitDetector(model, samples=2).fit(train.images, train.labels)
    x, y = train.images[:6], train.labels[:6]
    attack = DetectorAwarePGD(det, eps=0.05, alpha=0.02, steps=3, samples=2, lam=5.0)
    adv = attack(model, x, y, seed=1).adversarial
    assert (adv - x).abs().max() <= 0.05 + 1e-6 and adv.min() >= 0 and adv.max() <= 1
    with pytest.raises(GenrobustError, match="logit detector"):
        DetectorAwarePGD(MarginalDetector(model).fit_logits(torch.randn(20, C), torch.randn(20, C).argmax(1)))
    # the hinge is zero exactly when log p(x, F(x)) sits kappa sigma above the threshold
    logits = torch.full((1, C), -1e4)
    logits[0, 2] = float(det.mu[2] - det.alpha * det.sigma[2] + attack.params.kappa * det.sigma[2])
    assert attack._hinge_terms(logits).item() == pytest.approx(-attack.params.kappa, abs=1e-4)
