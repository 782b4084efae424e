"""Training: cards, best checkpoint, resume after interruption gives the same weights."""

import pytest
import torch

from genrobust.errors import GenrobustError
from genrobust.models import ModelConfig
from genrobust.store import ModelStore
from genrobust.training import Trainer, TrainConfig
from tests.conftest import TINY, interrupt_in_epoch

CFG = dict(limit=200, test_limit=50, batch_size=50, val_samples=1)


def _trainer(name, epochs, **kw):
    return Trainer(ModelConfig(structure="GFZ", **TINY), TrainConfig(epochs=epochs, **CFG), name,
                   progress=False, **kw)


def test_train_writes_a_complete_card(env):
    card = _trainer("tiny", 2).fit()
    assert card["status"] == "trained" and card["epochs"] == 2 and card["structure"] == "GFZ"
    assert card["kind"] == "generative" and card["logits_have_density"] is True
    assert card["test_accuracy"]["n"] == 50 and card["test_accuracy"]["samples"] == 10
    assert card["validation_accuracy"]["n"] == 5000
    assert card["dataset"]["md5"]["t10k-labels-idx1-ubyte.gz"].startswith("bb300cfd")
    assert card["training"]["train_images"] == 200 and len(card["history"]) == 2
    assert {"torch", "genrobust", "python"} <= set(card["versions"])
    best = max(card["history"], key=lambda h: h["val_accuracy"])["epoch"]
    assert card["best_epoch"] == best
    assert not (env / "models" / "runs" / "tiny").exists()  # run state removed once finished


def test_resume_matches_uninterrupted_run(env, monkeypatch):
    straight = _trainer("straight", 2)
    straight.fit()

    # Interrupt the second epoch of another run: the first is saved, the second lost.
    interrupt_in_epoch(monkeypatch, _trainer("resumed", 2), 2)

    again = _trainer("resumed", 2)
    assert again.resumed_from == 1
    again.fit()
    a, _ = ModelStore().load("straight")
    b, _ = ModelStore().load("resumed")
    # same best epoch, same weights: a resumed run draws the same batches and noise
    assert ModelStore().card("straight")["best_epoch"] == ModelStore().card("resumed")["best_epoch"]
    for (k, va), (_, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        torch.testing.assert_close(va, vb, msg=k)


def test_resume_refuses_a_different_architecture(env, monkeypatch):
    t = _trainer("r", 2)
    monkeypatch.setattr(Trainer, "_epoch", lambda self, train, epoch: (_ for _ in ()).throw(KeyboardInterrupt)
                        if epoch == 2 else (1.0, 0.5))
    with pytest.raises(KeyboardInterrupt):
        t.fit()
    with pytest.raises(GenrobustError, match="different architecture"):
        Trainer(ModelConfig(structure="GFZ", **(TINY | {"hidden": 16})), TrainConfig(epochs=2, **CFG), "r",
                progress=False)
    assert _trainer("r", 2, restart=True).state["epoch"] == 0


def test_kl_weight_scales_only_the_latent_terms():
    from tests.conftest import tiny_model
    model = tiny_model("DBX").eval()
    x, y = torch.rand(4, 1, 28, 28), torch.tensor([0, 3, 5, 9])
    e = {a: model.elbo(x, y, torch.Generator().manual_seed(1), kl_weight=a) for a in (0.0, 0.3, 1.0)}
    assert torch.equal(e[1.0], model.elbo(x, y, torch.Generator().manual_seed(1)))
    assert torch.allclose(e[0.3], e[0.0] + 0.3 * (e[1.0] - e[0.0]), atol=1e-4)


def test_kl_warmup_lets_dbx_learn_where_the_plain_elbo_collapses(env):
    """DBX's label reaches x only through z; with the full KL from the start p(y|z) never starts using z
    (posterior collapse, chance accuracy). A linear KL warm-up breaks that."""
    def best_val(warmup: int, seed: int) -> float:
        cfg = TrainConfig(epochs=4, limit=3000, test_limit=50, batch_size=50, lr=3e-3, kl_warmup=warmup, seed=seed)
        card = Trainer(ModelConfig(structure="DBX", **TINY), cfg, f"dbx-{warmup}-{seed}", progress=False).fit()
        assert card["training"]["kl_warmup"] == warmup  # recorded in the card
        return max(h["val_accuracy"] for h in card["history"])

    # Whether a run this small (3,000 images, 4 epochs) escapes collapse in time depends on its seed (with
    # the warm-up, seed 0 stays at 0.10 and seed 1 reaches 0.27), so two seeds: the plain ELBO collapses on
    # both, the warm-up escapes on at least one.
    seeds = (0, 1)
    assert all(best_val(0, seed) < 0.15 for seed in seeds)  # chance 0.1 (5,000 validation images: s.e. 0.004)
    assert any(best_val(3, seed) > 0.2 for seed in seeds)
