"""An AutoAttack-style ensemble (Croce & Hein, ICML 2020): the worst case over a fixed sequence of APGD runs.

Versions (FAB, Square and the targeted APGD-T of the original ``standard`` are omitted):

- ``standard``: APGD-CE, then APGD-DLR, each with ``restarts`` random starts and eot = 1 (deterministic
  models; against a stochastic one eot = 1 is a single-draw stochastic gradient).
- ``rand`` (the original's evaluation of randomized defenses): APGD-CE, then APGD-DLR, each averaging
  eot = 20 gradient draws, one run each (no restarts).

Every image keeps the adversarial of the first attack in the sequence that fools it (robust acceptance
with the attacker's own noise, as in ``apgd``); each later attack runs only on the images still robust,
so the cost falls with every attack. An image no attack fools keeps the last attack's highest-loss point.

    >>> adv = make_attack("autoattack", {"version": "rand", "eps": 0.1})(model, x, y).adversarial
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, model_validator

from genrobust.attacks.apgd import APGD, APGDBudget
from genrobust.attacks.base import AttackOutput, BudgetedAttack, LogitsFn

VERSIONS = {"standard": {"eot": 1, "losses": ("ce", "dlr")}, "rand": {"eot": 20, "losses": ("ce", "dlr")}}


class AutoAttackParams(APGDBudget):
    version: Literal["standard", "rand"] = Field("standard", description="standard: APGD-CE then APGD-DLR; "
                                                                          "rand: the same with eot = 20, no restarts.")
    eot: int | None = Field(None, ge=1, le=1000, description="Noise draws per gradient; default by version "
                                                             "(standard 1, rand 20).")

    @model_validator(mode="after")
    def _version_defaults(self):
        if self.eot is None:
            self.eot = VERSIONS[self.version]["eot"]
        return self


class AutoAttack(BudgetedAttack):
    """APGD-CE then APGD-DLR (eot by version); each image keeps the first attack that fools it."""

    name = "autoattack"
    Params = AutoAttackParams

    def passes(self) -> float:
        return sum(a.passes() for a in self.sequence())  # an upper bound: later members see fewer images

    def sequence(self) -> list[APGD]:
        common = self.params.model_dump(exclude={"version"})
        return [APGD(**common, loss=loss) for loss in VERSIONS[self.params.version]["losses"]]

    def run(self, f: LogitsFn, x: torch.Tensor, y: torch.Tensor, targets) -> AttackOutput:
        adv = x.clone()
        live = torch.arange(len(x))
        for attack in self.sequence():  # the attacker's one noise stream runs on through the sequence
            if len(live) == 0:
                break
            a, fooled = attack.attack(f, x[live], y[live])
            adv[live] = a  # fooled images keep this; robust ones are overwritten by a later attack
            live = live[~fooled]
        return AttackOutput(adv)
