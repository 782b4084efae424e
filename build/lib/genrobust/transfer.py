"""Transfer matrices: a white-box attack crafted on each of a list of models, judged on every model.

    >>> m = transfer_matrix(["fmnist-dfz", "fmnist-gfz"], images, labels, "pgd", {"eps": 0.1}, seed=0)
    >>> m.table("robust_accuracy")        # {source: {target: value}}; m.cell(s, t): a report summary

The adversarials of a source are crafted once (``run_attack`` of the attack on the source: the diagonal
cell, the white-box run) and every other model judges those same images with its own fresh evaluations
(``run_attack`` with the evaluator seeded as for its own diagonal). A cell (s, t) is what the ``transfer``
attack with source s gives on target t (same seed and batch size), its time the crafting's on s.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from pydantic import BaseModel, Field
from torch import nn

from genrobust.attacks import Attack, AttackOutput, LogitsFn, make_attack
from genrobust.attacks.norms import Norm
from genrobust.attacks.transfer import TransferSpec, check_inner
from genrobust.data import check_images, check_labels
from genrobust.device import resolve_device
from genrobust.errors import GenrobustError
from genrobust.robustness import run_attack
from genrobust.store import ModelStore


class TransferCell(BaseModel):
    source: str
    target: str
    report: dict[str, Any] = Field(description="The AttackReport summary, judged on the target.")


class TransferMatrix(BaseModel):
    attack: str
    params: dict[str, Any] = Field(description="The attack's parameters, every one (its defaults filled in).")
    models: list[str]
    n: int
    seed: int
    eval_samples: int
    eval_draws: int
    cells: list[TransferCell] = Field(description="Every (source, target) pair, source-major.")

    def cell(self, source: str, target: str) -> dict[str, Any]:
        for c in self.cells:
            if c.source == source and c.target == target:
                return c.report
        raise GenrobustError(f"no cell ({source!r}, {target!r}); models: {', '.join(self.models)}")

    def table(self, metric: str = "robust_accuracy") -> dict[str, dict[str, Any]]:
        """``metric`` of every cell as {source: {target: value}}."""
        return {s: {t: self.cell(s, t)[metric] for t in self.models} for s in self.models}


class _Replay(Attack, register=False):
    """Hands ``run_attack`` adversarials crafted elsewhere, batch by batch in order (checked against the clean
    images), as a transfer: 0 queries of the model it is run on."""

    name = "transfer"
    Params = TransferSpec
    black_box = True

    def __init__(self, spec: TransferSpec, norm: Norm, clean: torch.Tensor, adversarial: torch.Tensor):
        self.params, self._norm, self.clean, self.adversarial, self.at = spec, norm, clean, adversarial, 0

    @property
    def norm(self) -> Norm:
        return self._norm

    def passes(self) -> float:
        return 0.0

    def run(self, f: LogitsFn, x: torch.Tensor, y: torch.Tensor, targets) -> AttackOutput:
        s, e = self.at, self.at + len(x)
        if not torch.equal(self.clean[s:e].to(x.device), x):
            raise RuntimeError("replayed adversarials asked for other images than they were crafted for")
        self.at = e
        return AttackOutput(self.adversarial[s:e].to(x.device).clone(),
                            torch.zeros(len(x), dtype=torch.long, device=x.device))


def _models(models: Mapping[str, nn.Module] | Sequence[str], store: ModelStore | None,
            device: str | torch.device | None) -> dict[str, nn.Module]:
    if isinstance(models, Mapping):
        out = dict(models)
    else:
        names = [models] if isinstance(models, str) else list(models)
        if len(set(names)) != len(names):
            raise GenrobustError(f"models given twice in {', '.join(names)}")
        store = store or ModelStore()
        for name in names:  # every name known before any work
            store.card(name)
        dev = resolve_device(device)
        out = {name: store.load(name, dev)[0] for name in names}
    if not out:
        raise GenrobustError("a transfer matrix needs at least one model")
    return out


def transfer_matrix(models: Mapping[str, nn.Module] | Sequence[str], images, labels, attack: str = "pgd",
                    params: dict[str, Any] | None = None, *, seed: int = 0, eval_samples: int = 10,
                    eval_draws: int = 10, batch_size: int = 100, store: ModelStore | None = None,
                    device: str | torch.device | None = None, progress: bool = False) -> TransferMatrix:
    """Every (source, target) pair of ``models`` (stored names, loaded on ``device``, or a dict of name ->
    module) on the same images and labels: ``attack`` (a white-box attack, with ``params``) crafted once per
    source, each cell the AttackReport summary judged on the target with fresh evaluations. The diagonal is
    the white-box run."""
    check_inner(attack)
    inner = make_attack(attack, params)
    nets = _models(models, store, device)
    x = check_images(images)
    y = check_labels(labels, len(x))
    common = dict(seed=seed, eval_samples=eval_samples, eval_draws=eval_draws, batch_size=batch_size,
                  progress=progress)
    inner_params = inner.params.model_dump(mode="json")
    crafted = {s: run_attack(net, inner, x, y, model_name=s, **common) for s, net in nets.items()}
    cells = []
    for s, (white_box, adv) in crafted.items():
        spec = TransferSpec(source=s, attack=attack, params=inner_params)
        for t, net in nets.items():
            if t == s:
                summary = white_box.summary()
            else:
                report, _ = run_attack(net, _Replay(spec, inner.norm, x, adv), x, y, model_name=t, **common)
                # the work of a transfer is the crafting on the source
                summary = report.summary() | {"seconds": white_box.seconds,
                                              "seconds_per_image": white_box.seconds_per_image}
            cells.append(TransferCell(source=s, target=t, report=summary))
    return TransferMatrix(attack=attack, params=inner_params, models=list(nets), n=len(x), seed=seed,
                          eval_samples=eval_samples, eval_draws=eval_draws, cells=cells)
