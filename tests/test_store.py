"""Model store: safetensors + JSON cards, exact round trips, clear errors, no pickle."""

import json

import pytest
import torch

from genrobust.errors import GenrobustError
from genrobust.store import ModelStore
from tests.conftest import tiny_model


def _card(model):
    return {"structure": model.structure.name, "config": model.config.model_dump(mode="json")}


@pytest.mark.parametrize("structure", ["DFX", "GFZ", "GBY"])
def test_round_trip_reproduces_logits_exactly(tmp_path, images, structure):
    store = ModelStore(tmp_path, extra_dirs=())
    model = tiny_model(structure).eval()
    store.save("m1", model, _card(model))
    loaded, card = store.load("m1")
    assert card["name"] == "m1" and not loaded.training
    with torch.no_grad():
        a = model.logits(images, 5, torch.Generator().manual_seed(1))
        b = loaded.logits(images, 5, torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    assert store.names() == ["m1"]
    assert not list(tmp_path.glob("*.tmp"))  # atomic writes leave nothing behind


def test_user_store_shadows_shipped(tmp_path):
    shipped, user = tmp_path / "shipped", tmp_path / "user"
    m = tiny_model("GFZ")
    ModelStore(shipped, extra_dirs=()).save("a", m, _card(m) | {"where": "shipped"})
    store = ModelStore(user, extra_dirs=(shipped,))
    assert store.card("a")["where"] == "shipped"
    store.save("a", m, _card(m) | {"where": "user"})
    assert store.card("a")["where"] == "user"


@pytest.mark.parametrize("name", ["../etc/passwd", "a/b", "", "UPPER", ".hidden", "x" * 65])
def test_names_are_not_paths(tmp_path, name):
    with pytest.raises(GenrobustError, match="invalid model name"):
        ModelStore(tmp_path, extra_dirs=()).card(name)


def test_unknown_model_lists_known(tmp_path):
    store = ModelStore(tmp_path, extra_dirs=())
    m = tiny_model("DFZ")
    store.save("known", m, _card(m))
    with pytest.raises(GenrobustError, match="unknown model 'nope'.*known"):
        store.load("nope")


def test_corrupt_and_missing_checkpoints(tmp_path):
    store = ModelStore(tmp_path, extra_dirs=())
    m = tiny_model("GFZ")
    store.save("m", m, _card(m))
    (tmp_path / "m.safetensors").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(GenrobustError, match="corrupt or unreadable checkpoint"):
        store.load("m")
    (tmp_path / "m.safetensors").unlink()
    with pytest.raises(GenrobustError, match="no weights file"):
        store.load("m")
    (tmp_path / "m.json").write_text("{not json")
    with pytest.raises(GenrobustError, match="corrupt model card"):
        store.load("m")


def test_weights_that_do_not_match_card(tmp_path):
    store = ModelStore(tmp_path, extra_dirs=())
    m = tiny_model("GFZ")
    store.save("m", m, _card(m))
    card = json.loads((tmp_path / "m.json").read_text())
    card["config"]["hidden"] = 17
    (tmp_path / "m.json").write_text(json.dumps(card))
    with pytest.raises(GenrobustError, match="does not match its card"):
        store.load("m")


def test_a_save_interrupted_between_weights_and_card_is_caught_on_load(tmp_path):
    store = ModelStore(tmp_path, extra_dirs=())
    old, new = tiny_model("GFZ", seed=0), tiny_model("GFZ", seed=1)
    store.save("m", old, _card(old))
    card = (tmp_path / "m.json").read_text()
    store.save("m", new, _card(new))
    (tmp_path / "m.json").write_text(card)  # the new weights beside the old card: killed between the writes
    with pytest.raises(GenrobustError, match="not the one its card .*m.json was written for"):
        store.load("m")
    store.save("m", new, _card(new))  # a complete save serves again
    loaded = store.load("m")[0].state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in new.state_dict().items())
