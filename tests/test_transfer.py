"""Transfer attacks: crafted on the source's gradients, the target never queried while crafting, seeded,
validated when built; the CLI; the transfer matrix (every pair, crafted once per source, the diagonal the
white-box run); the study."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from genrobust.attacks import make_attack, transfer
from genrobust.cli import main
from genrobust.errors import GenrobustError
from genrobust.robustness import run_attack
from genrobust.store import ModelStore
from genrobust.transfer import transfer_matrix
from tests.conftest import save_tiny, tiny_model
from tests.test_attacks import Linear
from tests.test_study import TINY_PRIMARY

PGD = {"eps": 0.1, "alpha": 0.05, "steps": 2}
TIMING = ("seconds", "seconds_per_image")


def _x(n=5, seed=0):
    return torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed))


class Spy(nn.Module):
    """A target that counts its forward passes."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner, self.calls = inner, 0

    def forward(self, x):
        self.calls += 1
        return self.inner(x)


def _no_timing(summary: dict) -> dict:
    return {k: v for k, v in summary.items() if k not in TIMING}


def test_fgsm_from_a_linear_source_moves_any_target_by_the_source_gradient(transfer_source, monkeypatch):
    """A source with a fixed gradient: x + eps * sign(W^T (softmax(Wx + b) - onehot(y))), whatever the target."""
    source = Linear(seed=4)
    monkeypatch.setattr(transfer, "load_source", lambda name, device: source)
    x = _x(6)
    with torch.no_grad():
        y = source(x).argmax(1)
        expected = (x.flatten(1) + 0.07 * ((source(x).softmax(1) - nn.functional.one_hot(y, 10).float())
                                           @ source.w).sign()).clamp(0, 1)
    attack = make_attack("transfer", {"source": transfer_source, "attack": "fgsm", "params": {"eps": 0.07}})
    for target in (tiny_model("GFZ"), Linear(seed=9), nn.Sequential(nn.Flatten(), nn.Linear(784, 10))):
        out = attack(target, x, y, seed=2)
        torch.testing.assert_close(out.adversarial.flatten(1), expected)
        assert torch.equal(out.queries, torch.zeros(6, dtype=torch.long))


def test_a_transfer_is_the_white_box_attack_on_the_source_and_never_queries_the_target(transfer_source):
    source = ModelStore().load(transfer_source)[0]
    x, y = _x(), torch.arange(5)
    attack = make_attack("transfer", {"source": transfer_source, "params": PGD, "samples": 2})
    target = Spy(Linear())
    out = attack(target, x, y, seed=7)
    assert target.calls == 0 and out.queries.tolist() == [0] * 5
    white = make_attack("pgd", PGD | {"samples": 2})(source, x, y, seed=7)
    assert torch.equal(out.adversarial, white.adversarial)
    # a latent target: none of its passes run either
    gfz = tiny_model("GFZ")
    calls = []
    real = gfz.log_weights
    gfz.log_weights = lambda *a, **k: calls.append(1) or real(*a, **k)
    make_attack("transfer", {"source": transfer_source, "attack": "fgsm", "samples": 2})(gfz, x, y)
    assert calls == []
    # through run_attack onto the source itself: the white-box run, bit for bit (the target judges afterwards)
    report, adv = run_attack(source, attack, x, y, seed=3, eval_samples=2, eval_draws=3)
    w_report, w_adv = run_attack(source, make_attack("pgd", PGD | {"samples": 2}), x, y, seed=3, eval_samples=2,
                                 eval_draws=3)
    assert torch.equal(adv, w_adv) and report.per_image["pred_after"] == w_report.per_image["pred_after"]
    assert report.queries == 0 and w_report.queries is None
    assert report.params["source"] == transfer_source and report.params["params"]["steps"] == 2


def test_seeded_and_reproducible(transfer_source):
    x, y = _x(), torch.arange(5)
    attack = make_attack("transfer", {"source": transfer_source, "params": PGD})
    a, b = attack(Linear(), x, y, seed=1), attack(Linear(), x, y, seed=1)
    assert torch.equal(a.adversarial, b.adversarial)
    assert not torch.equal(a.adversarial, attack(Linear(), x, y, seed=2).adversarial)  # PGD's random start


def test_parameters_are_validated_when_built(transfer_source):
    with pytest.raises(GenrobustError, match="source: unknown source model 'nope'.*genrobust models"):
        make_attack("transfer", {"source": "nope"})
    with pytest.raises(GenrobustError, match="source: Field required"):
        make_attack("transfer")
    with pytest.raises(GenrobustError, match="'zoo' cannot be transferred \\(a black-box attack\\)"):
        make_attack("transfer", {"source": transfer_source, "attack": "zoo"})
    with pytest.raises(GenrobustError, match="'transfer' cannot be transferred"):
        make_attack("transfer", {"source": transfer_source, "attack": "transfer"})
    with pytest.raises(GenrobustError, match="params: invalid parameters for pgd: steps"):
        make_attack("transfer", {"source": transfer_source, "params": {"steps": 0}})
    with pytest.raises(GenrobustError, match="params: not a JSON object"):
        make_attack("transfer", {"source": transfer_source, "params": "{eps"})
    with pytest.raises(GenrobustError, match="samples given twice"):
        make_attack("transfer", {"source": transfer_source, "samples": 3, "params": {"samples": 4}})


def test_inner_parameters_nested_dotted_or_json_and_normalised(transfer_source):
    given = [{"params": {"eps": 0.05, "steps": 2}, "samples": 3},
             {"params.eps": "0.05", "params.steps": "2", "params.samples": "3"},  # the CLI's strings
             {"params": '{"eps": 0.05}', "params.steps": 2, "samples": 3}]
    made = [make_attack("transfer", {"source": transfer_source, **p}) for p in given]
    dumps = [a.params.model_dump(mode="json") for a in made]
    assert dumps[0] == dumps[1] == dumps[2]
    assert dumps[0]["params"] == {"eps": 0.05, "norm": "linf", "alpha": 0.01, "steps": 2, "random_start": True}
    assert made[0].inner.params.samples == 3
    again = make_attack("transfer", dumps[0])  # what the API and the study send on: a round trip
    assert again.params == made[0].params
    cw = make_attack("transfer", {"source": transfer_source, "attack": "cw", "params": {"steps": 5}})
    assert cw.kind == "minimal" and cw.norm.name == "l2" and cw.targeted_ok
    assert cw.cost(4, samples=20) == cw.inner.cost(4, samples=20)


def test_sources_are_loaded_once_per_process(transfer_source, monkeypatch):
    transfer._sources.clear()
    loads = []
    real = ModelStore.load
    monkeypatch.setattr(ModelStore, "load", lambda self, *a, **k: loads.append(a) or real(self, *a, **k))
    attack = make_attack("transfer", {"source": transfer_source, "attack": "fgsm"})
    for seed in range(3):
        attack(Linear(), _x(2), [0, 1], seed=seed)
    assert len(loads) == 1
    save_tiny(ModelStore(), transfer_source, "GFZ", seed=5)  # retrained: picked up
    attack(Linear(), _x(2), [0, 1])
    assert len(loads) == 2


# ------------------------------------------------------------------ the matrix
def test_the_matrix_has_every_pair_crafts_once_per_source_and_its_diagonal_is_the_white_box_run(monkeypatch):
    from genrobust.attacks.pgd import PGD as PGDAttack

    models = {"lin": Linear(seed=1, scale=0.02), "gfz": tiny_model("GFZ"), "dfz": tiny_model("DFZ", seed=2)}
    x, y = _x(6), torch.arange(6) % 10
    runs = []
    real = PGDAttack.run
    monkeypatch.setattr(PGDAttack, "run", lambda self, f, *a: runs.append(f.model) or real(self, f, *a))
    kw = dict(seed=4, eval_samples=2, eval_draws=3, batch_size=4)
    m = transfer_matrix(models, x, y, "pgd", PGD | {"samples": 2}, **kw)
    assert [(c.source, c.target) for c in m.cells] == [(s, t) for s in models for t in models]
    assert len(runs) == 3 * 2 and {id(r) for r in runs} == {id(v) for v in models.values()}  # 2 batches each
    for s, net in models.items():
        white, _ = run_attack(net, make_attack("pgd", PGD | {"samples": 2}), x, y, model_name=s, **kw)
        assert _no_timing(m.cell(s, s)) == _no_timing(white.summary())
        for t in models:
            cell = m.cell(s, t)
            assert cell["model"] == t and cell["n"] == 6 and cell["seconds"] == m.cell(s, s)["seconds"]
            if t != s:
                assert cell["attack"] == "transfer" and cell["queries"] == 0 and cell["params"]["source"] == s
                # the column's clean predictions are the target's own (same evaluator as its diagonal)
                assert cell["clean_accuracy"] == m.cell(t, t)["clean_accuracy"]
    table = m.table()
    assert set(table) == set(models) and all(set(r) == set(models) for r in table.values())
    assert json.loads(json.dumps(m.model_dump(mode="json")))["cells"][1]["target"] == "gfz"
    with pytest.raises(GenrobustError, match="cannot be transferred"):
        transfer_matrix(models, x, y, "zoo")


def test_matrix_cells_of_stored_models_are_what_the_transfer_attack_gives(transfer_source):
    store = ModelStore()
    save_tiny(store, "tiny-other", "DFZ", seed=3)
    names = [transfer_source, "tiny-other"]
    x, y = _x(4), torch.arange(4)
    kw = dict(seed=2, eval_samples=2, eval_draws=3)
    m = transfer_matrix(names, x, y, "fgsm", {"eps": 0.2, "samples": 2}, **kw)
    for s in names:
        for t in names:
            attack = make_attack("transfer", {"source": s, "attack": "fgsm", "params": {"eps": 0.2}, "samples": 2})
            if s == t:
                attack = make_attack("fgsm", {"eps": 0.2, "samples": 2})
            report, _ = run_attack(store.load(t)[0], attack, x, y, model_name=t, **kw)
            assert _no_timing(m.cell(s, t)) == _no_timing(report.summary()), (s, t)
    with pytest.raises(GenrobustError, match="unknown model 'nope'"):
        transfer_matrix([transfer_source, "nope"], x, y)


# ------------------------------------------------------------------ CLI
def test_cli_transfer_attack_and_matrix(env, capsys):
    store = ModelStore()
    save_tiny(store, "tiny-a", "GFZ")
    save_tiny(store, "tiny-b", "DFZ", seed=1)
    assert main(["attack", "tiny-a", "--attack", "transfer", "--param", "source=tiny-b", "--param", "attack=pgd",
                 "--param", "params.eps=0.05", "--param", "params.steps=2", "--param", "samples=2", "--limit", "3",
                 "--eval-samples", "2", "--eval-draws", "2", "--json", "--no-progress"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["attack"] == "transfer" and report["queries"] == 0 and report["n"] == 3
    assert report["params"]["params"]["eps"] == 0.05 and report["params"]["source"] == "tiny-b"
    assert main(["attack", "tiny-a", "--attack", "transfer", "--param", "source=tiny-b", "--param",
                 'params={"eps": 0.05, "steps": 2}', "--param", "samples=2", "--limit", "2", "--eval-samples", "2",
                 "--json", "--no-progress"]) == 0
    assert json.loads(capsys.readouterr().out)["params"]["params"]["steps"] == 2

    assert main(["transfer", "--models", "tiny-a,tiny-b", "--attack", "fgsm", "--param", "eps=0.2", "--param",
                 "samples=2", "--limit", "3", "--eval-samples", "2", "--eval-draws", "2", "--json",
                 "--no-progress"]) == 0
    m = json.loads(capsys.readouterr().out)
    assert [(c["source"], c["target"]) for c in m["cells"]] == [("tiny-a", "tiny-a"), ("tiny-a", "tiny-b"),
                                                                ("tiny-b", "tiny-a"), ("tiny-b", "tiny-b")]
    assert main(["transfer", "--models", "tiny-a,tiny-b", "--attack", "fgsm", "--param", "samples=2", "--limit", "2",
                 "--eval-samples", "2", "--eval-draws", "2", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "robust accuracy" in out and "n = 2" in out and "tiny-b" in out.splitlines()[-3]


@pytest.mark.parametrize("argv, message", [
    (["attack", "tiny-a", "--attack", "transfer", "--param", "source=nope"], "unknown source model 'nope'"),
    (["attack", "tiny-a", "--attack", "transfer"], "source: Field required"),
    (["attack", "tiny-a", "--attack", "transfer", "--param", "source=tiny-a", "--param", "attack=zoo"],
     "cannot be transferred"),
    (["attack", "tiny-a", "--attack", "transfer", "--param", "source=tiny-a", "--param", "params.steps=0"],
     "invalid parameters for pgd: steps"),
    (["transfer", "--models", "tiny-a,nope"], "unknown model 'nope'"),
    (["transfer", "--models", "tiny-a", "--attack", "zoo"], "cannot be transferred"),
    (["transfer", "--models", "tiny-a", "--param", "eps=-1"], "invalid parameters for pgd: eps"),
])
def test_cli_transfer_errors_are_one_line_and_exit_2(env, capsys, argv, message):
    save_tiny(ModelStore(), "tiny-a", "GFZ")
    assert main([*argv, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


# ------------------------------------------------------------------ the study
# one replicate (else the study trains the missing seeds of the tiny recipe) and a toy primary ensemble
TINY_STUDY = ["--replicates", "1", "--no-matched", "--no-masking",
              *(a for k, v in TINY_PRIMARY.items()
                for a in ("--primary", f"{k}={','.join(map(str, v)) if isinstance(v, list) else v}"))]


def test_the_study_runs_a_transfer(env, tmp_path, capsys):
    store = ModelStore()
    save_tiny(store, "tiny-dfx", "DFX")  # no detectors to fit: the study stays fast
    save_tiny(store, "tiny-src", "GFZ", seed=1)
    out = tmp_path / "report"
    assert main(["reproduce", "--models", "tiny-dfx", "--attacks", "transfer", "--param", "transfer.source=tiny-src",
                 "--param", "transfer.attack=fgsm", "--param", "transfer.params.eps=0.2", "--param",
                 "transfer.samples=2", "--limit", "4", "--clean-limit", "10", "--no-adaptive", "--no-curves",
                 "--chunk-size", "2", *TINY_STUDY, "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    entry = results["attacks"]["tiny-dfx"]["transfer"]
    assert entry["n"] == 4 and entry["queries"] == 0 and entry["params"]["params"]["eps"] == 0.2
    assert entry["params"]["source"] == "tiny-src" and entry["params"]["attack"] == "fgsm"
    # a retrained source is not served from the cache
    save_tiny(store, "tiny-src", "GFZ", seed=2)
    assert main(["reproduce", "--models", "tiny-dfx", "--attacks", "transfer", "--param", "transfer.source=tiny-src",
                 "--param", "transfer.attack=fgsm", "--param", "transfer.params.eps=0.2", "--param",
                 "transfer.samples=2", "--limit", "4", "--clean-limit", "10", "--no-adaptive", "--no-curves",
                 "--chunk-size", "2", *TINY_STUDY, "--out", str(out)]) == 0
    assert json.loads((out / "results.json").read_text())["attacks"]["tiny-dfx"]["transfer"]["cached"] is False
