"""Transfer attacks: adversarials crafted with a white-box attack on a *source* model (a stored model), judged
on the target, which is never queried while they are crafted (black-box with respect to the target).

    >>> attack = make_attack("transfer", {"source": "fmnist-dfz", "attack": "pgd", "params": {"eps": 0.05}})
    >>> report, adv = run_attack(target, attack, images, labels, seed=0)   # fresh evaluations on the target

The inner attack gets the transfer's seed unchanged: on a target equal to the source a transfer is the
white-box run, bit for bit, and ``genrobust.transfer.transfer_matrix`` (every source x target pair on the
same images, crafted once per source) gives exactly the cells this attack gives.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from typing import Any

import torch
from pydantic import Field, ValidationInfo, field_validator, model_validator
from torch import nn

from genrobust.attacks.base import ATTACKS, Attack, AttackOutput, AttackParams, LogitsFn, make_attack
from genrobust.attacks.norms import Norm
from genrobust.errors import GenrobustError
from genrobust.fields import Draws, Samples

INNER_SHARED = ("samples", "eot")  # the inner attack's K and M, given at the top level


def check_inner(name: str) -> str:
    """``name`` if it is a registered white-box attack other than a transfer, else a GenrobustError."""
    ok = [a for a, cls in ATTACKS.items() if not cls.black_box and a != "transfer"]
    if name not in ok:
        why = ("a transfer does not nest" if name == "transfer" else
               "a black-box attack" if name in ATTACKS else "no such attack")
        raise GenrobustError(f"{name!r} cannot be transferred ({why}); choose a white-box attack: {', '.join(ok)}")
    return name


def _json_object(value: Any) -> Any:
    """A JSON object given as a string (``--param params={"eps": 0.05}``) as a dict; anything else as is."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value) if value.strip() else {}
    except json.JSONDecodeError as exc:
        raise ValueError(f"not a JSON object ({exc.msg})") from None


def fold_inner_params(data: Any) -> Any:
    """Raw transfer parameters with the inner attack's given as dotted keys (``params.eps=0.05``, as the CLI
    and ``reproduce --param transfer.params.eps=0.05`` give them) folded into ``params`` (a dict or a JSON
    object string); ``samples``/``eot`` given there move to the top level."""
    if not isinstance(data, dict):
        return data
    data = dict(data)
    inner = data.get("params", {})
    try:
        inner = _json_object(inner)
    except ValueError:
        return data  # the field's own validator reports it, at its place
    if not isinstance(inner, dict):
        return data
    inner = dict(inner)
    for key in [k for k in data if isinstance(k, str) and k.startswith("params.")]:
        inner[key.removeprefix("params.")] = data.pop(key)
    for key in INNER_SHARED:
        if key in inner:
            value = inner.pop(key)
            if key in data and str(data[key]) != str(value):
                raise ValueError(f"{key} given twice ({data[key]!r} and params.{key} = {value!r}): it is the inner "
                                 "attack's, give it once")
            data[key] = value
    data["params"] = inner
    return data


class TransferSpec(AttackParams):
    """What a transfer is, without checking that the source is stored (the matrix helper's sources may be
    any modules)."""

    samples: Samples = Field(10, description="K importance samples of the inner attack's evaluations "
                                                         "of the source (ignored for plain modules).")
    eot: Draws = Field(1, description="M noise draws the inner attack averages per gradient or "
                                                   "score of the source.")
    source: str = Field(description="The model the adversarials are crafted on, by its stored name (list them "
                                    "with `genrobust models` or GET /models).", examples=["fmnist-dfz"])
    attack: str = Field("pgd", description="The white-box gradient attack run on the source (any registered "
                                           "attack but black-box ones and transfer itself).")
    params: dict[str, Any] = Field(default_factory=dict, description="The inner attack's parameters (defaults "
                                   "when omitted; see `genrobust attacks`). samples and eot are given above.")

    @model_validator(mode="before")
    @classmethod
    def fold_params(cls, data: Any) -> Any:
        return fold_inner_params(data)

    @field_validator("attack")
    @classmethod
    def _white_box(cls, name: str) -> str:
        return check_inner(name)

    @field_validator("params", mode="before")
    @classmethod
    def _parse(cls, value: Any) -> Any:
        return _json_object(value)

    @field_validator("params")
    @classmethod
    def _inner(cls, params: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        if "attack" not in info.data:  # the attack itself was refused: that is the error to report
            return params
        shared = {k: info.data[k] for k in INNER_SHARED if k in info.data}
        inner = make_attack(info.data["attack"], {**params, **shared})  # its own message on a bad parameter
        # normalised: every parameter of the inner attack, so reports and caches name the whole attack
        return inner.params.model_dump(mode="json", exclude=set(INNER_SHARED))

    def inner_params(self) -> dict[str, Any]:
        return {**self.params, **{k: getattr(self, k) for k in INNER_SHARED}}


class TransferParams(TransferSpec):
    @field_validator("source")
    @classmethod
    def _stored(cls, name: str) -> str:
        from genrobust.store import NAME_RE, ModelStore  # the store imports the models; attacks load before it

        store = ModelStore()
        stored = store.names()
        if not NAME_RE.match(name) or name not in stored:
            raise ValueError(f"unknown source model {name!r}: not in the model store (stored: "
                             f"{', '.join(stored) or 'none'}; list them with `genrobust models` or GET /models)")
        store.card(name)  # a corrupt card: its own message names the file
        return name


# Source models loaded per process, keyed by store, name, device and card: a sweep's chunks (and every
# batch of one run) load a source once; a retrained source is picked up.
_sources: OrderedDict[tuple, nn.Module] = OrderedDict()
_sources_lock = threading.Lock()
MAX_SOURCES = 8


def load_source(name: str, device: torch.device) -> nn.Module:
    """The stored model ``name`` in eval mode on ``device``, cached per process."""
    from genrobust.store import ModelStore

    store = ModelStore()
    card = store.card(name)
    digest = card.get("weights_sha256") or json.dumps(card, sort_keys=True, default=str)
    key = (tuple(str(d.resolve()) for d in store.dirs), name, str(torch.device(device)), digest)
    with _sources_lock:
        if key in _sources:
            _sources.move_to_end(key)
            return _sources[key]
    model, _ = store.load(name, device)
    with _sources_lock:
        _sources[key] = model
        while len(_sources) > MAX_SOURCES:
            _sources.popitem(last=False)
    return model


class Transfer(Attack):
    """A white-box attack run on a stored source model; its adversarials are judged on the target, never queried."""

    name = "transfer"
    Params = TransferParams
    black_box = True  # with respect to the target: 0 queries of it per image

    def __init__(self, **params):
        super().__init__(**params)
        self.inner = make_attack(self.params.attack, self.params.inner_params())
        self.targeted_ok = self.inner.targeted_ok

    @property
    def kind(self) -> str:  # type: ignore[override]
        """The inner attack's kind (budgeted or minimal)."""
        return self.inner.kind

    @property
    def norm(self) -> Norm:
        return self.inner.norm

    def passes(self) -> float:
        """The inner attack's passes of the source (at its K); the target costs nothing."""
        return self.inner.passes()

    def run(self, f: LogitsFn, x: torch.Tensor, y: torch.Tensor, targets: torch.Tensor | None) -> AttackOutput:
        # f is the target: it is never called. The inner attack runs with the attack's own seed (f's generator
        # was seeded with it), so a transfer onto its own source is the white-box attack exactly.
        source = load_source(self.params.source, x.device)
        out = self.inner(source, x, y, seed=f.generator.initial_seed(), targets=targets)
        return AttackOutput(out.adversarial, torch.zeros(len(x), dtype=torch.long, device=x.device))
