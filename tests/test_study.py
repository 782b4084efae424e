"""`genrobust reproduce` on two tiny models, two attacks and a handful of images: every file, every
table, a self-contained HTML report, and a second run served from the cache."""

from __future__ import annotations

import json
from html.parser import HTMLParser

import pytest

from genrobust import data, robustness
from genrobust.cli import main
from genrobust.study import PRESETS, StudyConfig, reproduce
from genrobust.study import chunks, runner
from genrobust.study.primary import Ensemble
from tests.conftest import tiny_model


class Images(HTMLParser):
    def __init__(self):
        super().__init__()
        self.srcs: list[str] = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.srcs.append(dict(attrs)["src"])


CURVE_PARAMS = {"pgd": {"steps": 2, "samples": 2}, "apgd": {"steps": 2, "samples": 2, "accept_draws": 2}}
# the primary endpoint's ensemble at toy strength: every member runs, on a handful of images
TINY_PRIMARY = {"restarts": 1, "steps": 2, "pgd_steps": 2, "pgd_eot": 1, "square_queries": 10, "transfer_eot": 1,
                "curve_eps": [0.1], "l2_eps": 2.0}


def config(out, **kw) -> StudyConfig:
    """Tiny budgets for the attacks of the run and, with curves, for the curves' attacks."""
    used = set(kw.get("attacks", ["fgsm", "deepfool"])) | ({"fgsm", "pgd", "apgd"} if kw.get("curves", True) else set())
    params = {"fgsm": {"eps": 0.2, "samples": 2}, "deepfool": {"max_iter": 4, "samples": 2}, **CURVE_PARAMS}
    return StudyConfig(**{"models": ["tiny-dfz", "tiny-gfz"], "attacks": ["fgsm", "deepfool"],
                          "params": {a: v for a, v in params.items() if a in used},
                          "limit": 6, "clean_limit": 30, "fit_limit": 60, "eval_samples": 2, "eval_draws": 3,
                          "out": out, "chunk_size": 4, "adaptive_params": {"steps": 2, "samples": 2},
                          "curve_eps": {"linf": [0, 0.1, 0.3], "l2": [0, 2.0]}, "replicates": 1, "masking": False,
                          "primary": TINY_PRIMARY, **kw})


def test_tiny_reproduce_writes_everything_and_resumes_from_cache(tiny_store, tmp_path, monkeypatch):
    out = tmp_path / "report"
    fractions = []
    results = reproduce(config(out), tiny_store, progress=fractions.append)

    for f in ("report.md", "report.html", "results.json"):
        assert (out / f).is_file() and (out / f).stat().st_size > 0
    saved = json.loads((out / "results.json").read_text())
    # the primary endpoint first, then the paper's tables (table 9, families, needs > 2 models)
    assert list(saved["tables"])[:2] == ["primary", "effects"]
    assert set(saved["tables"]) == {"primary", "effects"} | {f"table{i}" for i in range(1, 9)}
    for tab in saved["tables"].values():
        assert tab["rows"] and tab["verdict"] and all(len(r) == len(tab["columns"]) for r in tab["rows"])
        assert all(len(r) == len(tab["comparison_columns"]) for r in tab.get("comparisons", []))
    # intervals everywhere: rates (Wilson) and per-image statistics (bootstrap) bracket their values
    for m in saved["attacks"].values():
        for e in m.values():
            for name, d in e["estimates"].items():
                if d["value"] is not None:
                    assert d["low"] - 1e-9 <= d["value"] <= d["high"] + 1e-9, name
            assert e["estimates"]["robust_accuracy"]["n"] == 6
    # the study's pair is compared on every attack, Holm-corrected, each with a verdict
    rows = saved["analysis"]["tables"]["success"]
    assert {(r["metric"], r["attack"]) for r in rows} == {(k, a) for k in ("robust_accuracy", "success_rate")
                                         for a in ("fgsm", "deepfool")}
    assert all([r["a"], r["b"]] == ["tiny-gfz", "tiny-dfz"] for r in rows)
    assert all(r["verdict"].startswith(("holds", "reversed", "not distinguishable", "not testable")) for r in rows)
    assert saved["tables"]["table3"]["comparisons"]
    # the primary endpoint: every model on the same images, nested budgets, the effect and its family
    pr = saved["primary"]
    assert set(pr["models"]) == {"tiny-dfz", "tiny-gfz"}
    for r in pr["models"].values():
        assert r["n"] == 6 and [lv["eps"] for lv in r["linf"]] == [Ensemble().eps, 0.1] and r["l2"]["eps"] == 2.0
        labels = [m["label"] for m in r["linf"][0]["members"]]
        assert labels[:3] == ["autoattack-rand", "pgd-eot1", "square"] and labels[3].startswith("transfer from")
        # robust needs a correct clean prediction, and a larger budget only removes robust images
        assert not any(rb and not c for rb, c in zip(r["linf"][0]["robust"], r["clean_correct"]))
        assert not any(b and not a for a, b in zip(r["linf"][0]["robust"], r["linf"][1]["robust"]))
    assert pr["primary"]["key"] == "primary" and pr["primary"]["pairs"][0]["generative"] == "tiny-gfz"
    assert [e["key"] for e in pr["secondary"]] == ["area", "linf-0.1", "l2-2", "all-correct"]
    # the answer opens the report, written from the results
    assert saved["answer"]["strength"] and "tiny-gfz" in saved["answer"]["answer"]
    md = (out / "report.md").read_text()
    assert md.index("## The answer") < md.index("Table 1")
    # curves: the clean point, then every budget, with Wilson bands; the FGS reconstruction says what it found
    lin = saved["curves"]["tiny-gfz"]["linf"]
    assert set(lin) == {"fgsm", "pgd", "apgd"} and [p["eps"] for p in lin["pgd"]] == [0.0, 0.1, 0.3]
    assert set(saved["curves"]["tiny-gfz"]["l2"]) == {"pgd", "apgd"}
    assert all(p["robust_accuracy"]["n"] == 6 for p in lin["pgd"])
    assert "eps" in saved["fgs"]["tiny-gfz"] and saved["fgs"]["tiny-gfz"]["target_rho"] == 0.6138
    assert {"figures/curve-robust-linf.png", "figures/curve-robust-l2.png", "figures/curve-minimal-l2.png"} <= \
        {f["file"] for f in saved["figures"]}
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
    monkeypatch.setattr(chunks, "run_attack", no_attacks)
    monkeypatch.setattr(robustness, "run_attack", no_attacks)
    again = reproduce(config(out), tiny_store)
    assert all(e["cached"] for m in again["attacks"].values() for e in m.values())
    assert all(r["cached"] for m in again["adaptive"].values() for r in m.values())
    for m in results["attacks"]:
        for a in results["attacks"][m]:
            assert again["attacks"][m][a]["success_rate"] == results["attacks"][m][a]["success_rate"]
            assert again["attacks"][m][a]["detection"]["logit"]["rate"] == \
                results["attacks"][m][a]["detection"]["logit"]["rate"]
    assert again["curves"] == {m: {n: {a: [{**p, "cached": True} for p in pts] for a, pts in by.items()}
                                   for n, by in c.items()} for m, c in results["curves"].items()}


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
    assert main(["reproduce", "--models", "tiny-dfz", "--images", "fgsm", "--out", str(tmp_path)]) == 2
    assert "--images takes ATTACK=N" in capsys.readouterr().err
    assert main(["reproduce", "--models", "tiny-dfz", "--images", "nope=3", "--out", str(tmp_path)]) == 2
    assert "unknown attack 'nope'" in capsys.readouterr().err
    assert main(["reproduce", "--models", "tiny-dfz", "--quick", "--preset", "gpu", "--out", str(tmp_path)]) == 2
    assert "contradict" in capsys.readouterr().err
    assert main(["reproduce", "--models", "tiny-dfz", "--primary", "bogus=1", "--out", str(tmp_path)]) == 2
    assert "primary.bogus" in capsys.readouterr().err
    assert main(["reproduce", "--models", "tiny-dfz", "--primary", "eps=2", "--out", str(tmp_path)]) == 2
    assert "primary.eps" in capsys.readouterr().err


def test_an_interrupted_run_resumes_mid_attack_with_identical_results(tiny_store, tmp_path, monkeypatch):
    kw = dict(attacks=["deepfool"], adaptive=False, curves=False, chunk_size=2)
    whole = reproduce(config(tmp_path / "whole", **kw), tiny_store)

    calls = {"n": 0}
    real = chunks.run_attack

    def dies_on_the_third_chunk(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*a, **k)
    monkeypatch.setattr(chunks, "run_attack", dies_on_the_third_chunk)
    with pytest.raises(KeyboardInterrupt):
        reproduce(config(tmp_path / "cut", **kw), tiny_store)
    done = sorted((tmp_path / "cut" / "cache" / "tiny-dfz").glob("deepfool-*/*.json"))
    assert len(done) == 2  # the first two chunks of three are on disk

    ran = []
    monkeypatch.setattr(chunks, "run_attack", lambda *a, **k: ran.append(a[1].name) or real(*a, **k))
    resumed = reproduce(config(tmp_path / "cut", **kw), tiny_store)
    assert ran.count("deepfool") == 1 + 3  # tiny-dfz's last chunk, then all of tiny-gfz
    for m in whole["attacks"]:
        a, b = whole["attacks"][m]["deepfool"], resumed["attacks"][m]["deepfool"]
        for key in ("success", "p_misclassified", "l2", "pred_after"):
            assert a[key] == b[key], (m, key)
        assert a["estimates"] == b["estimates"]


def test_curve_points_equal_separate_single_eps_runs(tiny_store, tmp_path):
    cfg = config(tmp_path / "r", attacks=["fgsm"], adaptive=False)
    results = reproduce(cfg, tiny_store)
    model, _ = tiny_store.load("tiny-gfz")
    test = data.load("fashion-mnist", "test", limit=6)
    for norm, attack, eps in (("linf", "pgd", 0.1), ("l2", "apgd", 2.0), ("linf", "fgsm", 0.3)):
        point = next(p for p in results["curves"]["tiny-gfz"][norm][attack] if p["eps"] == eps)
        alone = robustness.run_attack_chunked(model, runner.curve_attack(attack, norm, eps, cfg.params.get(attack)),
                                              test.images, test.labels, seed=cfg.seed, chunk_size=cfg.chunk_size,
                                              eval_samples=cfg.eval_samples, eval_draws=cfg.eval_draws)
        assert point["robust_accuracy"]["value"] == pytest.approx(alone.robust_accuracy)
        assert point["success_rate"]["value"] == pytest.approx(alone.success_rate)
        assert point["robustness"] == alone.robustness


def test_the_fgs_eps_is_interpolated_along_the_curve():
    pts = [{"eps": 0.0, "robustness": None}, {"eps": 0.1, "robustness": 0.2}, {"eps": 0.2, "robustness": 0.4},
           {"eps": 0.3, "robustness": 0.5}]
    assert runner.fgs_eps(pts, 0.3) == pytest.approx(0.15)
    assert runner.fgs_eps(pts, 0.45) == pytest.approx(0.25)
    assert runner.fgs_eps(pts, 0.9) is None and runner.fgs_eps(pts, 0.1) is None


def test_all_structures_get_a_family_table(tiny_store, tmp_path):
    m = tiny_model("DFX")
    tiny_store.save("tiny-dfx", m, {"structure": "DFX", "kind": "discriminative", "logits_have_density": False,
                                    "config": m.config.model_dump(mode="json")})
    results = reproduce(config(tmp_path / "r", models=["tiny-dfz", "tiny-gfz", "tiny-dfx"], attacks=["fgsm", "deepfool"],
                               adaptive=False, curves=False), tiny_store)
    fam = results["tables"]["table9"]
    metrics = {r["metric"]: r for r in results["analysis"]["family"]["rows"]}
    assert set(metrics) == {"robust_accuracy", "median_l2", "auc"}
    assert set(metrics["robust_accuracy"]["discriminative"]) == {"tiny-dfz", "tiny-dfx"}
    assert set(metrics["auc"]["discriminative"]) == {"tiny-dfz"}  # DFX has no density, so no detector
    assert all(r[-1].startswith(("holds", "reversed", "not distinguishable", "not testable", "descriptive"))
               for r in fam["rows"])
    assert metrics["auc"]["p"] is None and metrics["auc"]["verdict"].startswith(("descriptive", "not testable"))
    dfx = results["attacks"]["tiny-dfx"]["fgsm"]
    assert dfx["detection"] is None and results["models"]["tiny-dfx"]["detection_applicable"] is False
    # every pair is compared in results.json (generative minus discriminative), the study's pair first
    assert results["analysis"]["pairs"] == [["tiny-gfz", "tiny-dfz"], ["tiny-gfz", "tiny-dfx"], ["tiny-dfx", "tiny-dfz"]]
    assert {(r["a"], r["b"]) for r in results["analysis"]["tables"]["success"]} == {
        ("tiny-gfz", "tiny-dfz"), ("tiny-gfz", "tiny-dfx"), ("tiny-dfx", "tiny-dfz")}


def test_presets_and_per_attack_image_counts():
    c = StudyConfig()
    assert c.images("fgsm") == PRESETS["default"]["limits"]["fgsm"] and c.clean_images() == 10_000
    assert StudyConfig(preset="quick").images("cw") == PRESETS["quick"]["limits"]["cw"]
    assert StudyConfig(limit=50).images("fgsm") == 50 and StudyConfig(limit=50).curve_images("pgd") <= 50
    assert StudyConfig(limits={"cw": 7}).images("cw") == 7
    # --quick trains no replicates unless asked: one seed; the default preset 3, the gpu preset 5
    assert StudyConfig(preset="quick").replicate_count() == 1 and StudyConfig().replicate_count() == 3
    assert StudyConfig(preset="gpu").replicate_count() == 5
    assert StudyConfig(preset="quick", replicates=2).replicate_count() == 2
    with pytest.raises(ValueError, match="unknown attack"):
        StudyConfig(limits={"nope": 3})
    with pytest.raises(ValueError, match="between 1 and"):
        StudyConfig(limits={"cw": 0})
    with pytest.raises(ValueError, match="curve_eps.linf"):
        StudyConfig(curve_eps={"linf": [0.1, 2.0]})


def _replicate(store, name: str, structure: str, seed: int, matched: dict | None = None) -> None:
    """A tiny model stored as seed ``seed`` of its set (the card records the seed, as `genrobust train` does)."""
    m = tiny_model(structure, seed)
    card = {"structure": structure, "kind": m.structure.kind, "logits_have_density": True,
            "config": m.config.model_dump(mode="json"), "training": {"seed": seed}}
    if matched:
        card["matched"] = matched
    store.save(name, m, card)


def test_the_primary_endpoint_runs_on_replicates_and_the_matched_checkpoint(tiny_store, tmp_path):
    for s in ("dfz", "gfz"):
        _replicate(tiny_store, f"tiny-{s}-s1", s.upper(), 1)
    _replicate(tiny_store, "tiny-dfz-s1-at0.5", "DFZ", 1, {"of": "tiny-dfz-s1", "target": 0.5, "epoch": 1})
    with pytest.raises(Exception, match="tiny-dfz-s2"):  # a missing replicate is named, never silently skipped
        reproduce(config(tmp_path / "x", attacks=["fgsm"], adaptive=False, curves=False, replicates=3,
                         train_missing=False), tiny_store)
    results = reproduce(config(tmp_path / "r", attacks=["fgsm"], adaptive=False, curves=False, replicates=2),
                        tiny_store)
    pr = results["primary"]
    assert list(pr["models"]) == ["tiny-dfz", "tiny-dfz-s1", "tiny-gfz", "tiny-gfz-s1", "tiny-dfz-s1-at0.5"]
    assert [(p["generative"], p["discriminative"]) for p in pr["primary"]["pairs"]] == [
        ("tiny-gfz", "tiny-dfz"), ("tiny-gfz-s1", "tiny-dfz-s1")]
    assert pr["primary"]["n_pairs"] == 2 and pr["primary"]["n_images"] == 6
    matched = next(e for e in pr["secondary"] if e["key"] == "matched")
    assert [(p["generative"], p["discriminative"]) for p in matched["pairs"]] == [("tiny-gfz-s1", "tiny-dfz-s1-at0.5")]
    # transfers come from every model of the other kind
    labels = [m["label"] for m in pr["models"]["tiny-gfz"]["linf"][0]["members"]]
    assert {lb for lb in labels if lb.startswith("transfer")} <= {
        "transfer from tiny-dfz", "transfer from tiny-dfz-s1", "transfer from tiny-dfz-s1-at0.5"}
    # the secondary family is Holm-adjusted together; the primary alone
    assert pr["primary"]["p_adjusted"] is None
    assert results["answer"]["strength"] in ("strong", "weak", "reversed", "not distinguishable", "masking flagged")


def test_results_json_round_trips_through_its_model_and_an_old_one_is_refused(tiny_store, tmp_path):
    from genrobust.errors import GenrobustError
    from genrobust.study.results import StudyResults, load_results

    out = tmp_path / "r"
    reproduce(config(out, attacks=["fgsm"], adaptive=False, curves=False), tiny_store)
    loaded = load_results(out)
    assert isinstance(loaded, StudyResults) and loaded.schema_version == 2
    assert loaded.model_dump(mode="json") == json.loads((out / "results.json").read_text())
    assert loaded.primary.primary is not None and loaded.answer.strength
    old = json.loads((out / "results.json").read_text())
    del old["schema_version"], old["primary"]
    (tmp_path / "old.json").write_text(json.dumps(old))
    with pytest.raises(GenrobustError, match="schema 1.*reproduce"):
        load_results(tmp_path / "old.json")
