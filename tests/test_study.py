"""`genrobust reproduce` on two tiny models, two attacks and a handful of images: every file, every
table, a self-contained HTML report, and a second run served from the cache."""

from __future__ import annotations

import json
from html.parser import HTMLParser

import pytest

from genrobust import robustness
from genrobust.cli import main
from genrobust.store import ModelStore
from genrobust.study import StudyConfig, reproduce
from genrobust.study import runner
from tests.conftest import tiny_model


class Images(HTMLParser):
    def __init__(self):
        super().__init__()
        self.srcs: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.srcs.append(dict(attrs)["src"])


@pytest.fixture
def tiny_store(env):
    store = ModelStore()
    for s in ("DFZ", "GFZ"):
        m = tiny_model(s)
        store.save(f"tiny-{s.lower()}", m, {"structure": s, "kind": m.structure.kind, "logits_have_density": True,
                                            "config": m.config.model_dump(mode="json")})
    return store


def config(out) -> StudyConfig:
    return StudyConfig(models=["tiny-dfz", "tiny-gfz"], attacks=["fgsm", "deepfool"],
                       params={"fgsm": {"eps": 0.2, "samples": 2}, "deepfool": {"max_iter": 4, "samples": 2}},
                       limit=6, clean_limit=30, fit_limit=60, eval_samples=2, out=out,
                       adaptive_params={"steps": 2, "samples": 2})


def test_tiny_reproduce_writes_everything_and_resumes_from_cache(tiny_store, tmp_path, monkeypatch):
    out = tmp_path / "report"
    fractions = []
    results = reproduce(config(out), tiny_store, progress=fractions.append)

    for f in ("report.md", "report.html", "results.json"):
        assert (out / f).is_file() and (out / f).stat().st_size > 0
    saved = json.loads((out / "results.json").read_text())
    assert set(saved["tables"]) == {f"table{i}" for i in range(1, 7)}
    for tab in saved["tables"].values():
        assert tab["rows"] and tab["verdict"] and all(len(r) == len(tab["columns"]) for r in tab["rows"])
    assert set(saved["attacks"]) == {"tiny-dfz", "tiny-gfz"}
    assert set(saved["attacks"]["tiny-gfz"]) == {"fgsm", "deepfool"}
    assert set(saved["adaptive"]["tiny-gfz"]) == {"pgd", "detector-aware-pgd"}
    assert saved["models"]["tiny-gfz"]["detection_applicable"] is True

    pngs = sorted(p.name for p in (out / "figures").glob("*.png"))
    assert "examples-tiny-dfz.png" in pngs and "examples-tiny-gfz.png" in pngs
    assert len(pngs) == 2 + len(results["figures"])
    parser = Images()
    parser.feed((out / "report.html").read_text())
    assert len(parser.srcs) == len(pngs) and all(s.startswith("data:image/png;base64,") for s in parser.srcs)
    md = (out / "report.md").read_text()
    assert "Table 5" in md and "0.8891" in md and all(f"figures/{p}" in md for p in pngs)
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert all(not e["cached"] for m in saved["attacks"].values() for e in m.values())

    # second run: nothing is attacked again, the numbers are the same
    def no_attacks(*a, **k):
        raise AssertionError("run_attack called although the result is cached")
    monkeypatch.setattr(runner, "run_attack", no_attacks)
    monkeypatch.setattr(robustness, "run_attack", no_attacks)
    again = reproduce(config(out), tiny_store)
    assert all(e["cached"] for m in again["attacks"].values() for e in m.values())
    assert all(r["cached"] for m in again["adaptive"].values() for r in m.values())
    for m in results["attacks"]:
        for a in results["attacks"][m]:
            assert again["attacks"][m][a]["success_rate"] == results["attacks"][m][a]["success_rate"]
            assert again["attacks"][m][a]["detection"]["logit"]["rate"] == \
                results["attacks"][m][a]["detection"]["logit"]["rate"]


def test_reproduce_cli_errors_are_one_line(tiny_store, capsys, tmp_path):
    assert main(["reproduce", "--models", "tiny-dfz,nope", "--out", str(tmp_path)]) == 2
    assert "unknown model 'nope'" in capsys.readouterr().err
    assert main(["reproduce", "--models", "tiny-dfz", "--attacks", "fgsm,bogus", "--out", str(tmp_path)]) == 2
    assert "unknown attack" in capsys.readouterr().err
    assert main(["reproduce", "--models", "tiny-dfz", "--attacks", "fgsm", "--param", "fgsm.eps=-1",
                 "--out", str(tmp_path)]) == 2
    assert "invalid parameters for fgsm" in capsys.readouterr().err
    assert main(["reproduce", "--models", "tiny-dfz", "--attacks", "fgsm", "--param", "cw.c=1",
                 "--out", str(tmp_path)]) == 2
    assert "not in the run" in capsys.readouterr().err
