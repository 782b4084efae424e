"""The study's attack runs, chunk by chunk and memoised on disk: an interrupted run resumes at its first
unfinished chunk with identical results, and a longer run reuses a shorter one's chunks."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch
from tqdm import tqdm

from genrobust.attacks import Attack
from genrobust.errors import GenrobustError
from genrobust.models import LatentClassifier
from genrobust.robustness import AttackReport, chunk_bounds, chunk_seed, merge_reports, run_attack
from genrobust.store import load_tensors, save_tensors, write_json

if TYPE_CHECKING:
    from genrobust.study.config import StudyConfig


def digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _images_digest(x: torch.Tensor) -> str:
    return hashlib.sha256(x.contiguous().cpu().numpy().tobytes()).hexdigest()[:16]


@dataclass
class Chunked:
    """An attack's merged report, adversarials, per-chunk (images, seconds), and whether every chunk came
    from the cache."""

    report: AttackReport
    adversarial: torch.Tensor
    chunks: list[tuple[int, float]]
    cached: bool


def chunked_attack(cache: Path, model: LatentClassifier, model_name: str, card: dict, attack: Attack,
                   x: torch.Tensor, y: torch.Tensor, config: "StudyConfig", extra_key: Any = None,
                   on_chunk: Callable[[float], None] | None = None) -> Chunked:
    """run_attack chunk by chunk, each chunk memoised on disk by (model card, attack, params, seed, K, R,
    chunk bounds, its images). Chunk i is attacked with chunk_seed(seed, start): the result equals a service
    sweep's (run_attack_chunked) with the same chunk size, and a longer run reuses a shorter one's chunks."""
    base = digest({"model": model_name, "card": digest(card), "attack": attack.name,
                    "params": attack.params.model_dump(mode="json"), "seed": config.seed, "K": config.eval_samples,
                    "R": config.eval_draws, "extra": extra_key})
    folder = cache / model_name / f"{attack.name}-{base}"
    bounds = chunk_bounds(len(x), config.chunk_size)
    reports, advs, chunks, hits = [], [], [], 0
    bar = tqdm(bounds, desc=f"{model_name}: {attack.name} ({len(x)} images)", unit="chunk", leave=False)
    for i, (s, e) in enumerate(bar):
        stem = folder / f"{s:05d}-{e:05d}-{_images_digest(x[s:e])}"
        js, st = stem.with_suffix(".json"), stem.with_suffix(".safetensors")
        rep = None
        if js.is_file() and st.is_file():
            try:
                rep, adv = AttackReport.model_validate_json(js.read_text()), load_tensors(st)["adversarial"]
                hits += 1
            except (GenrobustError, ValueError):
                rep = None  # a damaged cache entry is recomputed
        if rep is None:
            rep, adv = run_attack(model, attack, x[s:e], y[s:e], seed=chunk_seed(config.seed, s),
                                  eval_samples=config.eval_samples, eval_draws=config.eval_draws,
                                  model_name=model_name)
            adv = adv.cpu()  # the study keeps images on the host (figures, cache)
            save_tensors(st, {"adversarial": adv})
            write_json(js, rep.model_dump(mode="json"))  # written last: its presence marks a complete chunk
        reports.append(rep)
        advs.append(adv)
        chunks.append((e - s, rep.seconds))
        if on_chunk:
            on_chunk((i + 1) / len(bounds))
    bar.close()
    return Chunked(merge_reports(reports, config.seed), torch.cat(advs), chunks, hits == len(bounds))
