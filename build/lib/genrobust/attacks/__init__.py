"""White- and black-box attacks, one file each, one registry (``ATTACKS``).

Every module in this package is imported here, so defining an ``Attack`` subclass with a ``name`` in a
new file is all it takes to add an attack to the library, the CLI and the service.
"""

import importlib
import pkgutil

from genrobust.attacks.base import (ATTACKS, Attack, AttackOutput, AttackParams, BallParams, BudgetedAttack, LogitsFn,
                                   MinimalAttack, RobustAcceptParams, make_attack, margin)
from genrobust.attacks.norms import L2NORM, LINF, NORMS, Norm

for _mod in pkgutil.iter_modules(__path__):
    if _mod.name not in ("base", "norms"):
        importlib.import_module(f"{__name__}.{_mod.name}")

# the study's order first, then anything added later
_ORDER = ["fgsm", "pgd", "deepfool", "truncated-deepfool", "cw", "zoo", "apgd", "autoattack", "square"]
_sorted = sorted(ATTACKS.items(), key=lambda kv: (_ORDER.index(kv[0]) if kv[0] in _ORDER else len(_ORDER), kv[0]))
ATTACKS.clear()
ATTACKS.update(_sorted)

__all__ = ["ATTACKS", "Attack", "AttackOutput", "AttackParams", "BallParams", "BudgetedAttack", "L2NORM", "LINF",
           "LogitsFn", "MinimalAttack", "NORMS", "Norm", "RobustAcceptParams", "make_attack", "margin"]
