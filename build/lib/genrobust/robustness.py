"""Run an attack over a dataset and measure it: success, robustness rho, norms, time, queries.

Every adversarial image is judged by a fresh evaluation of the model with noise independent of the
attacker's (seeded, so results are reproducible): a minimal attack that stops exactly on the decision
boundary then fools a re-sampled stochastic model only about half the time, which is a finding to report.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, Field
from torch import nn
from tqdm import tqdm

from genrobust import seeding
from genrobust.attacks import Attack
from genrobust.data import check_images, check_labels
from genrobust.device import module_device
from genrobust.errors import GenrobustError
from genrobust.models import LatentClassifier

L0_TOL = 1e-6


class AttackReport(BaseModel):
    """Aggregates over the images, plus per-image arrays (lists, for JSON)."""

    model: str
    attack: str
    params: dict[str, Any]
    seed: int
    eval_samples: int
    device: str | None = Field(None, description="Where the attack and its evaluation ran (e.g. cpu, cuda:0).")
    n: int
    clean_accuracy: float
    adversarial_accuracy: float
    success_rate: float | None = Field(description="Over the images classified correctly before the attack.")
    robustness: float | None = Field(description="rho = mean ||eta||_2 / ||x||_2 over successful images.")
    mean_l2: float | None
    median_l2: float | None
    mean_linf: float | None
    median_linf: float | None
    mean_l0: float | None
    median_l0: float | None
    seconds: float
    seconds_per_image: float
    queries: int | None = Field(description="Total model evaluations (black-box attacks).")
    members: list[str] | None = Field(None, description="An ensemble's members, in order (autoattack): "
                                                        "per_image member indexes it, -1 for none.")
    # R fresh evaluations of each adversarial image (evaluator's noise, drawn after the single one above)
    eval_draws: int | None = Field(None, description="R fresh evaluations behind the two metrics below.")
    misclassification_probability: float | None = Field(
        None, description="Mean over the images classified correctly before the attack of the fraction of the R "
                          "fresh evaluations that misclassify the adversarial image.")
    robust_accuracy: float | None = Field(
        None, description="Fraction of all images whose adversarial is classified correctly by a strict majority "
                          "of the R fresh evaluations.")
    residual: float | None = Field(
        None, description="The unfooled residual: fraction of the images classified correctly before the attack "
                          "whose adversarial a strict majority of the R fresh evaluations still classify "
                          "correctly. For a minimal attack (no budget) it should be about 0: what is left is "
                          "robustness or an exhausted iteration budget.")
    per_image: dict[str, list | None] = Field(description="labels, pred_before, pred_after, correct, success, l2, linf, "
                                                   "l0, rel_l2, queries, p_misclassified (of the R fresh "
                                                   "evaluations) and member (ensembles: which member fooled "
                                                   "the image), one entry per image.")

    def summary(self) -> dict[str, Any]:
        return self.model_dump(exclude={"per_image"})


def predict(model: nn.Module, x: torch.Tensor, samples: int, generator: torch.Generator) -> torch.Tensor:
    with torch.inference_mode():
        if isinstance(model, LatentClassifier):
            return model.eval().logits(x, samples, generator).argmax(1)
        return model(x).argmax(1)


def predict_draws(model: nn.Module, x: torch.Tensor, samples: int, draws: int, generator: torch.Generator,
                  max_rows: int = 512) -> torch.Tensor:
    """Predictions under ``draws`` independent noise draws, (draws, N): the batch tiled draws times and
    evaluated in passes of at most max_rows rows; a deterministic module is evaluated once and repeated."""
    if not isinstance(model, LatentClassifier) and not getattr(model, "stochastic", False):
        return predict(model, x, samples, generator).expand(draws, -1)
    per = max(1, max_rows // draws)  # images per pass, each with all its draws
    out = [predict(model, x[s:s + per].repeat(draws, 1, 1, 1), samples, generator).view(draws, -1)
           for s in range(0, len(x), per)]
    return torch.cat(out, 1)


def labels_for(model: nn.Module, images, labels=None, *, seed: int = 0, samples: int = 10) -> torch.Tensor:
    """The labels an attack is measured against: ``labels`` when given, else the model's own prediction
    (then "success" means the prediction changed). The prediction has its own noise stream, independent of
    the attacker's and the evaluator's. One policy for the CLI, the API and sweeps."""
    x = check_images(images).to(module_device(model))
    if labels is not None:
        return check_labels(labels, len(x)).to(x.device)
    return predict(model, x, samples, seeding.generator(seed, "labels", device=x.device))


def _stat(values: np.ndarray, fn) -> float | None:
    """None (JSON null) when no image succeeded."""
    return float(fn(values)) if len(values) else None


def run_attack(model: nn.Module, attack: Attack, images, labels, *, seed: int = 0, eval_samples: int = 10,
               batch_size: int = 100, model_name: str = "model", progress: bool = False,
               targets=None, eval_draws: int = 10) -> tuple[AttackReport, torch.Tensor]:
    """Attack all images in chunks and measure. Returns the report and the adversarial images (on the
    model's device; images given elsewhere are moved there once)."""
    x = check_images(images).to(module_device(model))
    y = check_labels(labels, len(x)).to(x.device)
    if batch_size < 1:
        raise GenrobustError(f"batch size must be at least 1, got {batch_size}")
    if eval_samples < 1:
        raise GenrobustError(f"eval samples must be at least 1, got {eval_samples}")
    if not 1 <= eval_draws <= 1000:
        raise GenrobustError(f"eval draws must be between 1 and 1000, got {eval_draws}")
    if targets is not None:
        targets = check_labels(targets, len(x)).to(x.device)
    # the evaluator's noise is a stream the attacker never sees (genrobust.seeding)
    eval_gen = seeding.generator(seed, "evaluator", device=x.device)
    adv_chunks, query_chunks, member_chunks, seconds = [], [], [], 0.0
    starts = range(0, len(x), batch_size)
    for i, s in enumerate(tqdm(starts, desc=attack.name, unit="batch", disable=not progress, leave=False)):
        t0 = time.perf_counter()
        out = attack(model, x[s:s + batch_size], y[s:s + batch_size], seed=seeding.derive(seed, "attacker", i),
                     targets=None if targets is None else targets[s:s + batch_size])
        seconds += time.perf_counter() - t0
        adv_chunks.append(out.adversarial)
        query_chunks.append(out.queries)
        member_chunks.append(out.member)
    adv = torch.cat(adv_chunks)
    pred_before = torch.cat([predict(model, x[s:s + batch_size], eval_samples, eval_gen) for s in starts])
    pred_after = torch.cat([predict(model, adv[s:s + batch_size], eval_samples, eval_gen) for s in starts])
    # R further fresh evaluations from the same evaluator stream (after the single draw, which stays as it was)
    p_wrong = (predict_draws(model, adv, eval_samples, eval_draws, eval_gen) != y).float().mean(0)

    eta = (adv - x).flatten(1)
    l2, linf = eta.norm(dim=1), eta.abs().amax(1)
    l0 = (eta.abs() > L0_TOL).sum(1).float()
    rel_l2 = l2 / x.flatten(1).norm(dim=1).clamp_min(1e-12)
    correct = pred_before == y
    success = correct & (pred_after != y)
    queries = torch.cat(query_chunks) if query_chunks[0] is not None else None
    member = torch.cat(member_chunks) if member_chunks[0] is not None else None
    per_image = {
        "labels": y.tolist(), "pred_before": pred_before.tolist(), "pred_after": pred_after.tolist(),
        "correct": correct.tolist(), "success": success.tolist(),
        "l2": l2.tolist(), "linf": linf.tolist(), "l0": l0.tolist(), "rel_l2": rel_l2.tolist(),
        "queries": queries.tolist() if queries is not None else None, "p_misclassified": p_wrong.tolist(),
        "member": member.tolist() if member is not None else None,
    }
    report = _report(dict(model=model_name, attack=attack.name, seed=seed, eval_samples=eval_samples,
                          eval_draws=eval_draws, device=str(x.device),
                          members=attack.members() if hasattr(attack, "members") else None,
                          params=attack.params.model_dump(mode="json") | {"batch_size": batch_size}),
                     per_image, seconds)
    return report, adv


def _host(values, dtype=None) -> torch.Tensor:
    """Per-image lists back as tensors on the host: reports are an edge, whatever device computed them."""
    return torch.tensor(values, dtype=dtype, device="cpu")


def _report(header: dict[str, Any], per_image: dict[str, list | None], seconds: float) -> AttackReport:
    """The report's aggregates from its per-image lists (run_attack and merge_reports both end here, so a
    merged report is computed exactly like an unchunked one; float32 values round-trip through lists)."""
    y, pred_after = _host(per_image["labels"]), _host(per_image["pred_after"])
    correct, success = _host(per_image["correct"]), _host(per_image["success"])
    l2, linf, l0, rel_l2 = (_host(per_image[k], dtype=torch.float32) for k in ("l2", "linf", "l0", "rel_l2"))
    s = success.numpy()
    ok = lambda t: t.numpy()[s]  # noqa: E731  statistics over successful images
    n = len(y)
    robust = {}
    if per_image.get("p_misclassified") is not None:  # absent from reports cached before it existed
        p_wrong = _host(per_image["p_misclassified"], dtype=torch.float64)
        robust = dict(misclassification_probability=p_wrong[correct].mean().item() if correct.any() else None,
                      robust_accuracy=(p_wrong < 0.5).double().mean().item(),
                      residual=(p_wrong[correct] < 0.5).double().mean().item() if correct.any() else None)
    return AttackReport(
        **robust,
        **header, n=n,
        clean_accuracy=correct.float().mean().item(),
        adversarial_accuracy=(pred_after == y).float().mean().item(),
        success_rate=(success.sum() / correct.sum()).item() if correct.any() else None,
        robustness=_stat(ok(rel_l2), np.mean),
        mean_l2=_stat(ok(l2), np.mean), median_l2=_stat(ok(l2), np.median),
        mean_linf=_stat(ok(linf), np.mean), median_linf=_stat(ok(linf), np.median),
        mean_l0=_stat(ok(l0), np.mean), median_l0=_stat(ok(l0), np.median),
        seconds=seconds, seconds_per_image=seconds / n,
        queries=int(sum(per_image["queries"])) if per_image["queries"] is not None else None,
        per_image=per_image,
    )


# ------------------------------------------------------------------ chunked sweeps
# A sweep over many images is cut into chunks that run as independent tasks (on many workers) and are
# merged. Each chunk is an ordinary run_attack on its slice with a seed derived from (seed, start), so the
# result depends only on (seed, chunk_size), never on which worker ran which chunk or in what order:
# run_attack_chunked computes the same thing in one process.

def chunk_bounds(n: int, chunk_size: int) -> list[tuple[int, int]]:
    """[start, stop) of each chunk of n images."""
    if n < 1 or chunk_size < 1:
        raise GenrobustError(f"need at least 1 image and a chunk size of at least 1, got {n} and {chunk_size}")
    return [(s, min(s + chunk_size, n)) for s in range(0, n, chunk_size)]


def chunk_seed(seed: int, start: int) -> int:
    """The seed of the chunk starting at image ``start`` of a sweep seeded ``seed``."""
    return seeding.derive(seed, "chunk", start)


def run_attack_chunk(model: nn.Module, attack: Attack, images, labels, start: int, stop: int, *, seed: int = 0,
                     eval_samples: int = 10, batch_size: int = 100, model_name: str = "model",
                     eval_draws: int = 10) -> AttackReport:
    """One chunk of a sweep: images[start:stop] attacked with the chunk's own seed."""
    report, _ = run_attack(model, attack, images[start:stop], labels[start:stop], seed=chunk_seed(seed, start),
                           eval_samples=eval_samples, batch_size=batch_size, model_name=model_name,
                           eval_draws=eval_draws)
    return report


def merge_reports(reports: list[AttackReport], seed: int) -> AttackReport:
    """One report from the chunk reports of a sweep, in chunk order (seconds and queries add up)."""
    if not reports:
        raise GenrobustError("nothing to merge: no chunk reports")
    first = reports[0]
    # a per-image list survives the merge only if every chunk has it (chunks cached before a field existed)
    keys = [k for k in first.per_image if all(r.per_image.get(k) is not None for r in reports)]
    per_image = {k: [v for r in reports for v in r.per_image[k]] if k in keys else None for k in first.per_image}
    header = dict(model=first.model, attack=first.attack, params=first.params, seed=seed,
                  eval_samples=first.eval_samples, device=first.device, eval_draws=first.eval_draws if "p_misclassified" in keys else None,
                  members=first.members)
    return _report(header, per_image, sum(r.seconds for r in reports))


def run_attack_chunked(model: nn.Module, attack: Attack, images, labels, *, seed: int = 0, chunk_size: int = 50,
                       eval_samples: int = 10, batch_size: int = 100, model_name: str = "model",
                       eval_draws: int = 10) -> AttackReport:
    """What a service sweep of (model, attack) computes, in one process: chunk by chunk, then merged."""
    x = check_images(images)
    y = check_labels(labels, len(x))
    return merge_reports([run_attack_chunk(model, attack, x, y, s, e, seed=seed, eval_samples=eval_samples,
                                           batch_size=batch_size, model_name=model_name, eval_draws=eval_draws)
                          for s, e in chunk_bounds(len(x), chunk_size)], seed)


# Images per sweep chunk when none is set: enough work per task that dispatch, result storage and the
# merge stay small beside it, in units of Attack.cost (one K=10 gradient pass of one image).
CHUNK_WORK = {"cpu": 2500.0, "cuda": 250_000.0}
CHUNK_RANGE = {"cpu": (10, 2000), "cuda": (200, 10_000)}


def default_chunk_size(attack: Attack, device: torch.device | str) -> int:
    """Images per sweep chunk for ``attack`` on ``device``: ~50 images of a 50-step attack on a CPU, a few
    thousand on a GPU (which only fills up with large batches of work)."""
    kind = "cuda" if torch.device(device).type == "cuda" else "cpu"
    lo, hi = CHUNK_RANGE[kind]
    return int(min(hi, max(lo, round(CHUNK_WORK[kind] / max(attack.cost(1), 1e-9)))))
