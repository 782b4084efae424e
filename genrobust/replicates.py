"""Replicate models: the models of one structure and recipe that differ only in the training seed.

A claim about a *structure* ("GFZ is more robust than DFZ") needs the variance between training runs, which
no image bootstrap of one checkpoint can see. A model card already records the structure, the architecture
(``config``) and the training settings (``training``, seed included); the *recipe* is all of it but the seed
and the settings that do not change the trained weights (``keep_at``, ``test_limit``). Models with equal
recipes form a replicate set; seed s of the set named ``base`` is stored as ``base`` (s = 0) or ``base-sS``.

The seven shipped models (``genrobust/pretrained``) are seed 0 of their recipes, but they were trained before
``genrobust.seeding`` existed: retraining a recipe with seed 0 gives other weights than the shipped file.
A set whose seed 0 is the shipped model says so (``ReplicateSet.shipped_seed0``).
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
from pydantic import ValidationError
from scipy import stats
from tqdm import tqdm

from genrobust.errors import GenrobustError
from genrobust.models import ModelConfig
from genrobust.store import ModelStore
from genrobust.training import TrainConfig, Trainer, default_name

REPLICATES_MAX = 20  # most seeds one command trains (a set may hold more, trained separately)
NOT_RECIPE = {"seed", "keep_at", "test_limit"}  # training settings that leave the trained weights unchanged


def replicate_name(base: str, seed: int) -> str:
    """The store name of seed ``seed`` of the set ``base``: ``base`` itself for seed 0, else ``base-sS``."""
    return base if seed == 0 else f"{base}-s{seed}"


def recipe(model_config: ModelConfig, train_config: TrainConfig) -> dict[str, Any]:
    """What a replicate set shares: structure, architecture and the training settings that shape the weights."""
    return {"structure": model_config.structure, "config": model_config.model_dump(mode="json"),
            "training": train_config.model_dump(mode="json", exclude=NOT_RECIPE)}


def card_configs(card: dict[str, Any]) -> tuple[ModelConfig, TrainConfig]:
    """The (architecture, training) configs a card records; older cards lack newer fields, which take their
    defaults (the values those runs used)."""
    training = card.get("training") or {}
    try:
        return (ModelConfig(**card["config"]),
                TrainConfig(**{k: v for k, v in training.items() if k in TrainConfig.model_fields}))
    except (KeyError, TypeError, ValidationError) as exc:
        raise GenrobustError(f"model card of {card.get('name')!r} records no valid recipe: {exc}") from None


def card_recipe(card: dict[str, Any]) -> dict[str, Any]:
    return recipe(*card_configs(card))


def card_seed(card: dict[str, Any]) -> int:
    return int((card.get("training") or {}).get("seed", 0))


def recipe_difference(a: dict[str, Any], b: dict[str, Any]) -> str:
    """The settings in which two recipes differ, as ``key: a vs b`` (for error messages)."""
    diffs = []
    for part in ("config", "training"):
        for k in sorted(set(a[part]) | set(b[part])):
            if a[part].get(k) != b[part].get(k):
                diffs.append(f"{k}: {a[part].get(k)} vs {b[part].get(k)}")
    return ", ".join(diffs) or "none"


def is_matched_checkpoint(card: dict[str, Any]) -> bool:
    """An accuracy-matched checkpoint (``--keep-at``) is an early epoch of a run, never a replicate."""
    return bool((card.get("matched") or {}).get("of"))


def base_models(cards: list[dict[str, Any]]) -> list[str]:
    """The stored models that are neither a seed s > 0 of another stored model (``base-sS`` trained with seed
    S) nor an accuracy-matched checkpoint: what ``--models all`` means, so that a study run on it does not
    take last run's replicates for structures of their own (and train replicates of replicates)."""
    names = {c["name"] for c in cards}

    def replicate_of_stored(card: dict[str, Any]) -> bool:
        seed = card_seed(card)
        suffix = f"-s{seed}"
        return seed > 0 and card["name"].endswith(suffix) and card["name"][: -len(suffix)] in names

    return sorted(c["name"] for c in cards if not replicate_of_stored(c) and not is_matched_checkpoint(c))


@dataclass
class ReplicateSet:
    """The stored models of one recipe, by seed."""

    recipe: dict[str, Any]
    members: list[dict[str, Any]] = field(default_factory=list)  # cards, sorted by seed
    shipped: set[str] = field(default_factory=set)  # names of members shipped with the package
    # stored models of the same recipe and seed as a member (e.g. a trial run later shipped under another
    # name): the same weights, so counting them would shrink the interval with no new training run
    duplicates: list[str] = field(default_factory=list)

    @property
    def structure(self) -> str:
        return self.recipe["structure"]

    @property
    def name(self) -> str:
        """The set's name: its seed-0 member's, else its lowest seed's with the ``-sS`` suffix removed."""
        first = self.members[0]
        seed = card_seed(first)
        suffix = f"-s{seed}"
        return first["name"][: -len(suffix)] if seed and first["name"].endswith(suffix) else first["name"]

    @property
    def seeds(self) -> list[int]:
        return [card_seed(c) for c in self.members]

    @property
    def shipped_seed0(self) -> str | None:
        """The shipped model that is this set's seed 0, if any."""
        return next((c["name"] for c in self.members if card_seed(c) == 0 and c["name"] in self.shipped), None)

    def test_accuracy(self, confidence: float = 0.95) -> dict[str, Any]:
        """Mean test accuracy over the trained seeds, its t-interval over seeds and the between-seed SD."""
        accs = [c["test_accuracy"]["accuracy"] for c in self.members
                if c.get("status") == "trained" and "test_accuracy" in c]
        n = len(accs)
        out: dict[str, Any] = {"n": n, "accuracies": accs, "mean": float(np.mean(accs)) if n else None,
                               "sd": None, "low": None, "high": None, "confidence": confidence}
        if n >= 2:
            sd = float(np.std(accs, ddof=1))
            half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n)
            out |= {"sd": sd, "low": out["mean"] - half, "high": out["mean"] + half}
        return out


def replicate_sets(store: ModelStore | None = None) -> list[ReplicateSet]:
    """Every recipe in the store with its models (a set of one is a model without replicates yet)."""
    store = store or ModelStore()
    groups: dict[str, ReplicateSet] = {}
    for card in store.cards():
        if is_matched_checkpoint(card):
            continue
        try:
            r = card_recipe(card)
        except GenrobustError:
            continue  # a card without a readable recipe is listed by `models`, just not grouped
        s = groups.setdefault(json.dumps(r, sort_keys=True), ReplicateSet(r))
        s.members.append(card)
        if store.is_shipped(card["name"]):
            s.shipped.add(card["name"])
    for s in groups.values():
        # one model per seed: the shipped one first, then the shorter (canonical) name
        s.members.sort(key=lambda c: (card_seed(c), c["name"] not in s.shipped, len(c["name"]), c["name"]))
        kept: dict[int, dict[str, Any]] = {}
        for c in s.members:
            if card_seed(c) in kept:
                s.duplicates.append(c["name"])
            else:
                kept[card_seed(c)] = c
        s.members = list(kept.values())
    return sorted(groups.values(), key=lambda s: s.name)


def plan_replicates(model_config: ModelConfig, train_config: TrainConfig, replicates: int, name: str | None = None,
                    store: ModelStore | None = None) -> list[tuple[str, TrainConfig, dict[str, Any] | None]]:
    """(name, training config, existing card or None) for each seed of the set, seeds ``train_config.seed``
    onwards. A stored model under one of the names with another recipe or seed is refused: a set's models
    must differ in the seed only."""
    if not 1 <= replicates <= REPLICATES_MAX:
        raise GenrobustError(f"replicates must be in [1, {REPLICATES_MAX}], got {replicates}")
    store = store or ModelStore()
    base = name or default_name(model_config.structure, train_config.dataset)
    want = recipe(model_config, train_config)
    plan = []
    for seed in range(train_config.seed, train_config.seed + replicates):
        member = replicate_name(base, seed)
        card = store.card(member) if store.exists(member) else None
        if card is not None:
            have = card_recipe(card)
            where = "the shipped model " if store.is_shipped(member) else ""
            if have != want:
                raise GenrobustError(
                    f"{where}{member!r} was trained with another recipe ({recipe_difference(want, have)}; "
                    f"asked vs stored): a replicate set differs in the seed only. Train with its recipe, or "
                    f"name a new set with --name (API: \"name\")")
            if card_seed(card) != seed:
                raise GenrobustError(f"{where}{member!r} has seed {card_seed(card)}, not {seed}: its name belongs "
                                     f"to seed {seed} of the set {base!r}; name a new set with --name")
        plan.append((member, train_config.model_copy(update={"seed": seed}), card))
    return plan


def train_replicates(model_config: ModelConfig, train_config: TrainConfig, replicates: int,
                     name: str | None = None, store: ModelStore | None = None, progress: bool = True,
                     restart: bool = False, on_epoch: Callable[[int, int], None] | None = None,
                     device=None) -> list[dict[str, Any]]:
    """Train the missing seeds of a replicate set and return every member's card, by seed.

    Trained members are kept; an unfinished one resumes (``restart`` discards unfinished runs, never a
    trained model), so an interrupted set loses at most the epoch in progress. ``on_epoch(done, total)``
    counts epochs over the whole set (each member's final evaluation is one more step), and one progress bar
    does the same on the terminal."""
    store = store or ModelStore()
    plan = plan_replicates(model_config, train_config, replicates, name, store)
    per = train_config.epochs + 1
    total = per * len(plan)
    done = sum(per for _, _, card in plan if card and card.get("status") == "trained")
    bar = tqdm(total=total, initial=done, desc=f"replicates ({len(plan)} seeds)", unit="epoch",
               disable=not progress, file=sys.stderr)
    cards = []
    try:
        for member, cfg, card in plan:
            if card is not None and card.get("status") == "trained":
                cards.append(card)
                continue
            base_done = done

            def tick(epoch: int, epochs: int, base_done=base_done) -> None:
                bar.n = base_done + epoch
                bar.refresh()
                if on_epoch is not None:
                    on_epoch(base_done + epoch, total)

            trainer = Trainer(model_config, cfg, member, store=store, progress=progress, restart=restart,
                              on_epoch=tick, device=device)
            if trainer.resumed_from and progress:
                tqdm.write(f"resuming {member} after epoch {trainer.resumed_from}")
            cards.append(trainer.fit())
            done += per
            bar.n = done
            bar.refresh()
            if on_epoch is not None:
                on_epoch(done, total)
    finally:
        bar.close()
    return cards


def format_sets(sets: list[ReplicateSet]) -> list[str]:
    """Lines for `genrobust models`: each set of two or more seeds with its accuracy over seeds."""
    lines = []
    for s in sets:
        if len(s.members) < 2:
            continue
        a = s.test_accuracy()
        if a["n"] >= 2:
            acc = (f"test acc {a['mean']:.4f} [{a['low']:.4f}, {a['high']:.4f}] (mean, 95% t-interval over "
                   f"{a['n']} seeds), SD {a['sd']:.4f}")
        else:
            acc = f"{a['n']} of {len(s.members)} seeds trained"
        shipped = next((c for c in s.members if c["name"] == s.shipped_seed0), None)
        note = "" if shipped is None else f"; seed 0 is the shipped {shipped['name']}" + (
            " (trained before the seeding module)" if "seeding" in shipped else "")
        if s.duplicates:
            note += f"; not counted, the same recipe and seed as a member: {', '.join(s.duplicates)}"
        lines.append(f"{s.name:<22}{s.structure:<10}seeds {','.join(map(str, s.seeds)):<10}{acc}{note}")
    return lines


__all__ = ["REPLICATES_MAX", "ReplicateSet", "replicate_name", "recipe", "card_recipe", "replicate_sets",
           "plan_replicates", "train_replicates", "format_sets", "is_matched_checkpoint"]
