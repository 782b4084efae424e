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
    assert set(out) == {"model", "split", "n", "samples", "accuracy", "seconds"}
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
    (["train", "gfz", "--enc-channels", "4,8"], "three positive integers"),
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
