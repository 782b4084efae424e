"""AutoAttack (Croce & Hein, ICML 2020): the worst case over a fixed sequence of attacks.

Versions:

- ``standard``: APGD-CE, then APGD-T (the targeted DLR loss towards each of the top ``targets`` = 9 classes
  other than y by the clean logits, one run per target on the images still robust, ``steps`` each), then
  Square (black-box, L-infinity or L2 as ``norm``, ``queries`` = 5000 per image, p_init 0.8 and the
  unrescaled schedule, as in the original), every member with ``restarts`` random starts and eot = 1
  (against a stochastic model eot = 1 is a single-draw stochastic gradient or score). The original's
  fourth member, FAB-T, is left out: genrobust has no FAB.
- ``rand`` (the original's evaluation of randomized defenses): APGD-CE, then APGD-DLR, each averaging
  eot = 20 gradient draws, ``restarts`` (default 1) runs each.

Every image keeps the adversarial of the first member that fools it (robust acceptance with the attacker's
own noise: APGD's early stop, Square's frozen draws; APGD-T's success is untargeted, misclassification vs
the true label); each later member runs only on the images still robust, so the cost falls with every
member. An image no member fools keeps the last member's point (highest loss, or lowest Square score).
``AttackOutput.member`` says per image which member fooled it (an index into ``members()``, -1: none).

    >>> out = make_attack("autoattack", {"version": "standard", "eps": 0.1})(model, x, y)
    >>> out.adversarial, out.member   # AutoAttack.members(): ["apgd-ce", "apgd-t", "square"]
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, model_validator

from genrobust.attacks.apgd import APGD, APGDBudget, APGDTargeted
from genrobust.attacks.base import Attack, AttackOutput, BudgetedAttack, LogitsFn
from genrobust.attacks.square import Square
from genrobust.fields import Draws

VERSIONS = {"standard": {"eot": 1, "members": ("apgd-ce", "apgd-t", "square")},
            "rand": {"eot": 20, "members": ("apgd-ce", "apgd-dlr")}}
SQUARE_P_INIT = 0.8  # the original AutoAttack's, for both norms


class AutoAttackParams(APGDBudget):
    version: Literal["standard", "rand"] = Field("standard", description="standard: APGD-CE, APGD-T, Square; "
                                                                          "rand: APGD-CE, APGD-DLR with eot = 20.")
    eot: Draws | None = Field(None, description="Noise draws per gradient or score; default by "
                                                             "version (standard 1, rand 20).")
    targets: int = Field(9, ge=1, le=99, description="APGD-T's target classes (standard).")
    queries: int = Field(5000, ge=1, le=1_000_000, description="Square's query budget per image per restart "
                                                               "(standard).")

    @model_validator(mode="after")
    def _version_defaults(self):
        if self.eot is None:
            self.eot = VERSIONS[self.version]["eot"]
        if self.version == "standard" and self.queries < self.eot:
            raise ValueError(f"queries ({self.queries}) must pay for at least one Square score, eot = {self.eot}")
        return self


class AutoAttack(BudgetedAttack):
    """The members of the version in turn; each image keeps the first member that fools it."""

    name = "autoattack"
    Params = AutoAttackParams

    def passes(self) -> float:
        return sum(a.passes() for a in self.sequence())  # an upper bound: later members see fewer images

    def members(self) -> list[str]:
        """The members' names, in order (``AttackOutput.member`` indexes this list)."""
        return list(VERSIONS[self.params.version]["members"])

    def sequence(self) -> list[Attack]:
        p = self.params
        common = p.model_dump(exclude={"version", "targets", "queries"})
        if p.version == "rand":
            return [APGD(**common, loss="ce"), APGD(**common, loss="dlr")]
        square = {k: common[k] for k in ("samples", "eot", "eps", "norm", "accept_draws", "accept_fraction",
                                         "restarts")}
        return [APGD(**common, loss="ce"), APGDTargeted(**common, targets=p.targets),
                Square(**square, queries=p.queries, p_init=SQUARE_P_INIT, rescale_schedule=False)]

    def run(self, f: LogitsFn, x: torch.Tensor, y: torch.Tensor, targets) -> AttackOutput:
        adv = x.clone()
        member = torch.full((len(x),), -1, dtype=torch.int64)
        live = torch.arange(len(x))
        for j, attack in enumerate(self.sequence()):  # the attacker's one noise stream runs on through them
            if len(live) == 0:
                break
            a, fooled = attack.attack(f, x[live], y[live], index=live)
            adv[live] = a  # fooled images keep this; robust ones are overwritten by a later member
            member[live[fooled]] = j
            live = live[~fooled]
        return AttackOutput(adv, member=member)
