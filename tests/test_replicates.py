"""Replicate sets (seeds of one recipe) and accuracy-matched checkpoints (``keep_at``)."""

import pytest
import torch

from genrobust import cli
from genrobust import training as training_mod
from genrobust.errors import GenrobustError
from genrobust.models import ModelConfig
from genrobust.replicates import base_models, card_recipe, plan_replicates, replicate_sets, train_replicates
from genrobust.store import ModelStore
from genrobust.training import Trainer, TrainConfig, matched_name
from tests.conftest import TINY

TINY_CONFIG = ModelConfig(structure="GFZ", **TINY)
CFG = TrainConfig(epochs=2, limit=200, test_limit=50, batch_size=50)


@pytest.fixture(autouse=True)
def small_validation(monkeypatch):
    """200 validation images instead of 5,000: these tests are about names, seeds and checkpoints."""
    real = training_mod.data_mod.load
    monkeypatch.setattr(training_mod.data_mod, "load", lambda dataset, split, limit=None: real(
        dataset, split, 200 if split == "validation" else limit))


def _weights(name):
    return ModelStore().load(name)[0].state_dict()


def test_a_set_trains_one_model_per_seed_with_stable_names_and_equal_recipes(env):
    cards = train_replicates(TINY_CONFIG, CFG, 3, "tiny", progress=False)
    assert [c["name"] for c in cards] == ["tiny", "tiny-s1", "tiny-s2"]
    assert [c["training"]["seed"] for c in cards] == [0, 1, 2]
    assert card_recipe(cards[0]) == card_recipe(cards[1]) == card_recipe(cards[2])
    w = [_weights(n) for n in ("tiny", "tiny-s1", "tiny-s2")]
    assert not torch.equal(w[0]["q_head.linear.weight"], w[1]["q_head.linear.weight"])  # the seeds differ
    # seed 0 of a set is the same model as a plain run with seed 0
    Trainer(TINY_CONFIG, CFG, "plain", progress=False).fit()
    assert all(torch.equal(v, _weights("plain")[k]) for k, v in w[0].items())

    (s,) = [s for s in replicate_sets() if "tiny-s1" in [c["name"] for c in s.members]]
    # "plain" shares the recipe and seed 0: the same weights (above), listed but not counted as a replicate
    assert s.seeds == [0, 1, 2] and s.duplicates == ["plain"] and s.name == "tiny"
    acc = s.test_accuracy()
    accs = [c["test_accuracy"]["accuracy"] for c in s.members]
    assert acc["n"] == 3 and acc["mean"] == pytest.approx(sum(accs) / 3)
    assert acc["low"] <= acc["mean"] <= acc["high"] and acc["sd"] >= 0

    # asking again trains nothing: every member is kept as it is
    before = {n: ModelStore().card(n)["created"] for n in ("tiny", "tiny-s1", "tiny-s2")}
    again = train_replicates(TINY_CONFIG, CFG, 3, "tiny", progress=False)
    assert {c["name"]: c["created"] for c in again} == before


def test_an_interrupted_set_resumes_losing_at_most_the_epoch_in_progress(env, monkeypatch):
    real_epoch = Trainer._epoch
    ran = []

    def crash_in_seed1_epoch2(self, train, epoch):
        ran.append((self.cfg.seed, epoch))
        if (self.cfg.seed, epoch) == (1, 2):
            raise KeyboardInterrupt
        return real_epoch(self, train, epoch)

    monkeypatch.setattr(Trainer, "_epoch", crash_in_seed1_epoch2)
    with pytest.raises(KeyboardInterrupt):
        train_replicates(TINY_CONFIG, CFG, 3, "half", progress=False)
    assert ran == [(0, 1), (0, 2), (1, 1), (1, 2)]
    seed0 = ModelStore().card("half")["created"]

    monkeypatch.setattr(Trainer, "_epoch", real_epoch)
    resumed = []
    monkeypatch.setattr(Trainer, "_maybe_resume", lambda self, real=Trainer._maybe_resume: (
        real(self), resumed.append((self.cfg.seed, self.resumed_from))))
    progress = []
    cards = train_replicates(TINY_CONFIG, CFG, 3, "half", progress=False, on_epoch=lambda d, t: progress.append((d, t)))
    assert resumed == [(1, 1), (2, 0)]  # seed 0 kept, seed 1 resumed after its first epoch
    assert cards[0]["created"] == seed0
    assert progress[0] == (5, 9) and progress[-1] == (9, 9)  # 3 seeds x (2 epochs + final evaluation)
    # the resumed seed is the model an uninterrupted run gives
    Trainer(TINY_CONFIG, CFG.model_copy(update={"seed": 1}), "straight", progress=False).fit()
    assert all(torch.equal(v, _weights("straight")[k]) for k, v in _weights("half-s1").items())


def test_a_set_whose_recipes_differ_is_refused(env):
    train_replicates(TINY_CONFIG, CFG, 1, "mixed", progress=False)
    with pytest.raises(GenrobustError, match=r"'mixed' was trained with another recipe \(epochs: 3 vs 2"):
        plan_replicates(TINY_CONFIG, CFG.model_copy(update={"epochs": 3}), 2, "mixed")
    with pytest.raises(GenrobustError, match="another recipe .*hidden: 33 vs 32"):
        plan_replicates(TINY_CONFIG.model_copy(update={"hidden": 33}), CFG, 2, "mixed")
    # settings that do not change the weights are not part of the recipe
    assert len(plan_replicates(TINY_CONFIG, CFG.model_copy(update={"test_limit": 20, "keep_at": 0.5}), 2, "mixed")) == 2
    # a shipped model is seed 0 of its recipe: another recipe under its name is refused, its own is used
    with pytest.raises(GenrobustError, match="the shipped model 'fmnist-gfz' was trained with another recipe"):
        plan_replicates(ModelConfig(structure="GFZ"), TrainConfig(), 3)
    card = ModelStore().card("fmnist-gfz")  # the shipped recipe, read from its card
    shipped_training = {k: v for k, v in card["training"].items() if k in TrainConfig.model_fields}
    plan = plan_replicates(ModelConfig(**card["config"]), TrainConfig(**shipped_training), 3)
    # seeds 1 and 2 ship too: the whole set is found, nothing left to train
    assert [(n, c is not None) for n, _, c in plan] == [("fmnist-gfz", True), ("fmnist-gfz-s1", True),
                                                        ("fmnist-gfz-s2", True)]
    (gfz,) = [s for s in replicate_sets() if s.name == "fmnist-gfz"]
    assert gfz.shipped_seed0 == "fmnist-gfz" and gfz.seeds == [0, 1, 2]


def test_cli_trains_a_set_and_models_lists_it(env, capsys):
    args = ["train", "gfz", "--name", "cli-set", "--replicates", "2", "--epochs", "1", "--limit", "200",
            "--test-limit", "40", "--batch-size", "50", "--hidden", "32", "--latent-dim", "8",
            "--enc-channels", "4,8,8", "--dec-channels", "8,8,4", "--no-progress"]
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert "cli-set-s1: seed 1" in out and "95% t-interval over 2 seeds" in out
    assert cli.main(["models"]) == 0
    out = capsys.readouterr().out
    assert "replicate sets" in out and "cli-set" in out and "seeds 0,1" in out
    assert cli.main(args[:-1] + ["--epochs", "2", "--no-progress"]) == 2  # another recipe under the same names
    assert "another recipe (epochs: 2 vs 1" in capsys.readouterr().err


def _scripted_matching(monkeypatch, values):
    """The validation accuracies at the card's K that decide the matched checkpoint, in turn."""
    seq = iter(values)
    monkeypatch.setattr(Trainer, "matched_validation", lambda self, val: {"accuracy": next(seq), "n": 200, "samples": 10})


def test_the_matched_checkpoint_is_the_first_epoch_that_reaches_the_value(env, monkeypatch):
    _scripted_matching(monkeypatch, [0.2, 0.5])  # asked only until the target is reached
    cfg = CFG.model_copy(update={"epochs": 4, "keep_at": 0.45})
    card = Trainer(TINY_CONFIG, cfg, "run", progress=False).fit()
    m = ModelStore().card(matched_name("run", 0.45))
    assert m["name"] == "run-at0.45" and m["status"] == "trained"
    assert m["validation_accuracy"]["accuracy"] == 0.5 and m["test_accuracy"]["n"] == 50  # measured when saved
    assert m["matched"]["of"] == "run" and m["matched"]["epoch"] == 2 and m["matched"]["val_samples"] == 10
    assert m["epochs"] == 2 and [h["epoch"] for h in m["history"]] == [1, 2]
    assert [h.get("val_accuracy_card_k") for h in card["history"]] == [0.2, 0.5, None, None]
    # its weights are those after epoch 2: a constant-lr run of 2 epochs ends there (made its best epoch)
    real, rising = training_mod.accuracy, iter([0.1, 0.2])
    monkeypatch.setattr(training_mod, "accuracy", lambda model, images, labels, samples, *a, **kw: (
        {"accuracy": next(rising)} if samples == 1 else real(model, images, labels, samples, *a, **kw)))
    Trainer(TINY_CONFIG, CFG, "two", progress=False).fit()
    monkeypatch.setattr(training_mod, "accuracy", real)
    assert all(torch.equal(v, _weights("two")[k]) for k, v in _weights("run-at0.45").items())
    # not a replicate of anything
    assert all("run-at0.45" not in [c["name"] for c in s.members] for s in replicate_sets())

    _scripted_matching(monkeypatch, [0.2, 0.3])
    card = Trainer(TINY_CONFIG, CFG.model_copy(update={"keep_at": 0.9}), "never", progress=False).fit()
    assert card["matched"]["epoch"] is None and not ModelStore().exists("never-at0.9")


def test_the_matched_checkpoint_survives_a_resume(env, monkeypatch):
    _scripted_matching(monkeypatch, [0.6])
    cfg = CFG.model_copy(update={"epochs": 3, "keep_at": 0.5})
    real_epoch = Trainer._epoch
    monkeypatch.setattr(Trainer, "_epoch", lambda self, train, e: (_ for _ in ()).throw(KeyboardInterrupt)
                        if e == 3 else real_epoch(self, train, e))
    with pytest.raises(KeyboardInterrupt):
        Trainer(TINY_CONFIG, cfg, "r", progress=False).fit()
    before = _weights("r-at0.5")
    assert ModelStore().card("r-at0.5")["matched"]["epoch"] == 1
    monkeypatch.setattr(Trainer, "_epoch", real_epoch)
    _scripted_matching(monkeypatch, [])  # the resumed run never measures again: it was reached
    Trainer(TINY_CONFIG, cfg, "r", progress=False).fit()
    m = ModelStore().card("r-at0.5")
    assert m["matched"]["epoch"] == 1 and "test_accuracy" in m
    assert all(torch.equal(v, _weights("r-at0.5")[k]) for k, v in before.items())


def test_all_models_leaves_out_replicates_of_stored_models_and_matched_checkpoints():
    def card(name, seed=0, of=None):
        return {"name": name, "training": {"seed": seed}, **({"matched": {"of": of, "epoch": 3}} if of else {})}

    cards = [card("a"), card("a-s1", 1), card("a-s2", 2), card("a-s1-at0.8", 1, of="a-s1"),
             card("b-s3", 3),          # seed 3 of a set whose seed 0 is not stored: a model of its own
             card("c-s1", 0)]          # named like a replicate but trained with seed 0: its own
    assert base_models(cards) == ["a", "b-s3", "c-s1"]
