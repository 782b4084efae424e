"""The seven structures: ELBO, logits, seeding, importance-sampling behaviour."""

import math

import pytest
import torch

from genrobust.errors import GenrobustError
from genrobust.models import STRUCTURES, LatentClassifier, ModelConfig
from tests.conftest import ALL_STRUCTURES, tiny_model


@pytest.mark.parametrize("structure", ALL_STRUCTURES)
def test_elbo_finite_and_falls_when_overfitting(structure, images):
    model = tiny_model(structure)
    y = torch.arange(len(images)) % 10
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    torch.manual_seed(1)
    losses = []
    for _ in range(60):
        loss = -model.elbo(images, y).mean()
        assert torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < first - 0.1 * abs(first) or last < first - 1.0, (first, last)


@pytest.mark.parametrize("structure", ALL_STRUCTURES)
def test_logits_shape_finite_and_seeded(structure, images):
    model = tiny_model(structure).eval()
    g = lambda s: torch.Generator().manual_seed(s)  # noqa: E731
    with torch.no_grad():
        a = model.logits(images, samples=4, generator=g(7))
        b = model.logits(images, samples=4, generator=g(7))
        c = model.logits(images, samples=4, generator=g(8))
    assert a.shape == (len(images), 10)
    assert torch.isfinite(a).all()
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    # log p(x, y) is a log density of (x, y) for the structures that model x: negative on 784 pixels.
    if STRUCTURES[structure].logits_have_density:
        assert (a < 0).all()


@pytest.mark.parametrize("structure", ["GFZ", "DFZ", "GBY"])
def test_logits_are_logmeanexp_of_log_weights(structure, images):
    """logits == logsumexp_k(log w_k) - log K, computed for all classes in one tiled pass."""
    model = tiny_model(structure).eval()
    K = 5
    with torch.no_grad():
        lw = model.log_weights(images, torch.arange(10).expand(len(images), -1), K, torch.Generator().manual_seed(3))
        logits = model.logits(images, K, torch.Generator().manual_seed(3))
    assert lw.shape == (len(images), 10, K)
    torch.testing.assert_close(logits, torch.logsumexp(lw, -1) - math.log(K))


def test_importance_sampling_spread_shrinks_with_k(images):
    model = tiny_model("GFZ").eval()
    x = images[:2]

    def spread(K):
        with torch.no_grad():
            est = torch.stack([model.logits(x, K, torch.Generator().manual_seed(s)) for s in range(40)])
        return est.std(0).mean().item()

    s1, s10, s100 = spread(1), spread(10), spread(100)
    assert s100 < s10 < s1


def test_classes_share_noise_per_sample(images):
    """Common random numbers: changing the number of candidate labels does not change a label's estimate."""
    model = tiny_model("GFZ").eval()
    with torch.no_grad():
        all_ = model.log_weights(images, torch.arange(10).expand(len(images), -1), 3, torch.Generator().manual_seed(0))
        one = model.log_weights(images, torch.full((len(images), 1), 4), 3, torch.Generator().manual_seed(0))
    torch.testing.assert_close(all_[:, 4], one[:, 0])


def test_density_metadata():
    assert {s for s, st in STRUCTURES.items() if not st.logits_have_density} == {"DFX", "DBX"}
    assert {s for s, st in STRUCTURES.items() if st.kind == "generative"} == {"GFZ", "GFY", "GBZ", "GBY"}


def test_bad_structure_and_samples(images):
    with pytest.raises(ValueError, match="unknown structure"):
        ModelConfig(structure="XYZ")
    model = LatentClassifier(ModelConfig(structure="gfz", hidden=8, latent_dim=4))
    assert model.structure.name == "GFZ"
    with pytest.raises(GenrobustError, match="at least 1"):
        model.logits(images, samples=0)


def test_batched_logits_validates_and_matches_direct_call(images):
    from genrobust.evaluation import batched_logits
    model = tiny_model("GFZ")
    with torch.no_grad():
        direct = model.eval().logits(images, 3, torch.Generator().manual_seed(2))
    torch.testing.assert_close(batched_logits(model, images, samples=3, seed=2, batch_size=100), direct)
    bad = images.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(GenrobustError, match="NaN"):
        batched_logits(model, bad)
    with pytest.raises(GenrobustError, match="shape"):
        batched_logits(model, images[:, :, :20])


def test_bf16_autocast_keeps_densities_in_fp32(images):
    """Networks may run in bf16, but the 784-pixel likelihood sums stay fp32: logits stay close."""
    from genrobust.evaluation import batched_logits
    model = tiny_model("GFZ")
    fp = batched_logits(model, images, samples=4, seed=0)
    bf = batched_logits(model, images, samples=4, seed=0, bf16=True)
    assert bf.dtype == torch.float32
    torch.testing.assert_close(bf, fp, rtol=2e-3, atol=0.5)
