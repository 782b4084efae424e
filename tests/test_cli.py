"""The genrobust command: train, models, evaluate, and one-line errors."""

import json

import pytest

from genrobust.cli import main

TINY_ARGS = ["--hidden", "32", "--latent-dim", "8", "--enc-channels", "4,8,8", "--dec-channels", "8,8,4"]


def test_cli_trains_lists_and_evaluates(env, capsys):
    assert main(["train", "gfz", "--name", "cli-tiny", "--epochs", "1", "--limit", "200", "--test-limit", "40",
                 "--no-progress", *TINY_ARGS]) == 0
    assert "test accuracy" in capsys.readouterr().out
    assert main(["models"]) == 0
    assert "cli-tiny" in capsys.readouterr().out
    assert main(["models", "--json"]) == 0
    cards = json.loads(capsys.readouterr().out)
    assert any(c["name"] == "cli-tiny" and c["structure"] == "GFZ" for c in cards)
    assert main(["evaluate", "cli-tiny", "--limit", "30", "--samples", "3", "--seed", "5", "--json",
                 "--no-progress"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"model", "split", "n", "samples", "accuracy", "seconds", "device"}
    assert out["model"] == "cli-tiny" and out["n"] == 30 and out["samples"] == 3 and out["split"] == "test"
    assert 0.0 <= out["accuracy"] <= 1.0
    # same seed, same accuracy; validation split works
    assert main(["evaluate", "cli-tiny", "--limit", "30", "--samples", "3", "--seed", "5", "--json",
                 "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == out["accuracy"]
    assert main(["evaluate", "cli-tiny", "--split", "validation", "--limit", "10", "--json", "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out)["split"] == "validation"


@pytest.mark.parametrize("argv, message", [
    (["train", "XYZ"], "unknown structure 'XYZ'"),
    (["train", "gfz", "--name", "../x"], "invalid model name"),
    (["train", "gfz", "--dropout", "1.5", "--epochs", "1"], "dropout"),
    (["train", "gfz", "--lr", "-1"], "lr"),
    (["evaluate", "no-such-model"], "unknown model 'no-such-model'"),
])
def test_cli_errors_are_one_line(env, capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.count("\n") == 1


@pytest.mark.parametrize("argv", [["evaluate", "x", "--samples", "0"], ["train", "gfz", "--epochs", "0"],
                                  ["train", "gfz", "--enc-channels", "4,8"], ["train", "gfz", "--schedule", "x"],
                                  ["evaluate", "x", "--split", "train"], ["train", "gfz", "--limit", "abc"]])
def test_cli_rejects_bad_flags(env, capsys, argv):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert "Traceback" not in capsys.readouterr().err


def test_cli_missing_dataset(tmp_path, monkeypatch, capsys):
    from genrobust.settings import get_settings
    from tests.test_data import URLError

    def refuse(*a, **k):
        raise URLError("offline")
    monkeypatch.setattr("urllib.request.urlopen", refuse)
    monkeypatch.setenv("GENROBUST_DATA_DIR", str(tmp_path / "empty"))
    monkeypatch.setenv("GENROBUST_MODEL_DIR", str(tmp_path / "models"))
    get_settings.cache_clear()
    try:
        assert main(["train", "gfz", "--epochs", "1", "--limit", "10", *TINY_ARGS, "--no-progress"]) == 2
    finally:
        get_settings.cache_clear()
    assert "copy the four official files" in capsys.readouterr().err


def _store_tiny(name="atk-tiny"):
    from genrobust.store import ModelStore
    from tests.conftest import tiny_model
    m = tiny_model("GFZ")
    ModelStore().save(name, m, {"structure": "GFZ", "kind": "generative", "config": m.config.model_dump(mode="json"),
                                "dataset": {"name": "fashion-mnist"}})
    return name


def test_cli_attack_json_and_out(env, capsys, tmp_path):
    name = _store_tiny()
    out_dir = tmp_path / "out"
    assert main(["attack", name, "--attack", "deepfool", "--param", "max_iter=3", "--param", "samples=2",
                 "--limit", "6", "--batch-size", "4", "--seed", "1", "--json", "--out", str(out_dir),
                 "--no-progress"]) == 0
    report = json.loads(capsys.readouterr().out)
    for key in ("model", "attack", "params", "n", "clean_accuracy", "adversarial_accuracy", "success_rate",
                "robustness", "mean_l2", "mean_linf", "seconds", "queries"):
        assert key in report
    assert report["n"] == 6 and report["params"]["max_iter"] == 3 and report["attack"] == "deepfool"
    import numpy as np
    saved = np.load(out_dir / f"{name}-deepfool.npz")
    assert saved["adversarial"].shape == (6, 1, 28, 28) and saved["labels"].shape == (6,)
    assert set(saved.files) == {"images", "adversarial", "labels", "pred_before", "pred_after"}
    full = json.loads((out_dir / f"{name}-deepfool.json").read_text())
    assert len(full["per_image"]["l2"]) == 6
    # human-readable output and the attack list
    assert main(["attack", name, "--attack", "zoo", "--param", "steps=2", "--param", "coords=8", "--limit", "2",
                 "--no-progress"]) == 0
    assert "queries" in capsys.readouterr().out
    assert main(["attacks"]) == 0
    assert "truncated-deepfool" in capsys.readouterr().out


@pytest.mark.parametrize("params, message", [
    (["--attack", "nope"], "unknown attack 'nope'"),
    (["--attack", "fgsm", "--param", "eps=-1"], "invalid parameters for fgsm: eps"),
    (["--attack", "deepfool", "--param", "p=1"], "invalid parameters for deepfool: p"),
    (["--attack", "fgsm", "--param", "eps"], "KEY=VALUE"),
    (["--attack", "pgd", "--param", "steps=abc"], "invalid parameters for pgd: steps"),
])
def test_cli_attack_errors(env, capsys, params, message):
    name = _store_tiny()
    assert main(["attack", name, *params, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
