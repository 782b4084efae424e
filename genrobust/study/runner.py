"""`genrobust reproduce`: the study end to end, resumable.

For every model: its detectors (loaded, or fitted and saved when missing), the clean test images'
detection statistics, then every attack on the first ``limit`` test images, each (model, attack, params,
seed, images) result cached under ``<out>/cache`` so an interrupted run resumes where it stopped; then the
detector-aware attack; then figures and the report.
"""

from __future__ import annotations

import hashlib
import json
import platform
import time
from pathlib import Path
from typing import Any, Callable

import torch
from tqdm import tqdm

from genrobust import data, seeding
from genrobust.attacks import Attack, make_attack
from genrobust.attacks.detector_aware_pgd import DetectorAwarePGD
from genrobust.detection import (DETECTORS, Detection, Detector, detection_rate, detectors_path,
                                 false_positive_rate, fit_detectors, load_detector, roc)
from genrobust.device import device_info, resolve_device
from genrobust.errors import GenrobustError
from genrobust.evaluation import batched_logits
from genrobust.models import LatentClassifier
from genrobust.robustness import AttackReport, run_attack
from genrobust.store import ModelStore, load_tensors, save_tensors, write_json
from genrobust.study import figures, report
from genrobust.study.config import StudyConfig

Progress = Callable[[float], None]


def _digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _images_digest(x: torch.Tensor) -> str:
    return hashlib.sha256(x.contiguous().numpy().tobytes()).hexdigest()[:16]


def cached_attack(cache: Path, model: LatentClassifier, model_name: str, card: dict, attack: Attack,
                  x: torch.Tensor, y: torch.Tensor, config: StudyConfig, extra_key: Any = None,
                  ) -> tuple[AttackReport, torch.Tensor, bool]:
    """run_attack, memoised on disk per (model weights' card, attack, params, seed, images, K)."""
    key = _digest({"model": model_name, "card": _digest(card), "attack": attack.name,
                   "params": attack.params.model_dump(mode="json"), "seed": config.seed, "K": config.eval_samples,
                   "images": _images_digest(x), "extra": extra_key})
    stem = cache / model_name / f"{attack.name}-{key}"
    js, st = stem.with_suffix(".json"), stem.with_suffix(".safetensors")
    if js.is_file() and st.is_file():
        try:
            return AttackReport.model_validate_json(js.read_text()), load_tensors(st)["adversarial"], True
        except (GenrobustError, ValueError):
            pass  # a damaged cache entry is recomputed
    rep, adv = run_attack(model, attack, x, y, seed=config.seed, eval_samples=config.eval_samples,
                          model_name=model_name, progress=True)
    adv = adv.cpu()  # the study keeps images on the host (figures, cache); logits move them back as needed
    save_tensors(st, {"adversarial": adv})
    write_json(js, rep.model_dump(mode="json"))  # written last: its presence marks a complete entry
    return rep, adv, False


def _detectors(store: ModelStore, name: str, model: LatentClassifier, config: StudyConfig,
               data_root) -> dict[str, Detector] | None:
    if not model.logits_have_density:
        return None
    if detectors_path(store, name) is None:
        tqdm.write(f"{name}: no fitted detectors yet; fitting them on the training split")
        fit_detectors(store, name, model=model, limit=config.fit_limit, fpr=config.fpr, seed=config.seed,
                      data_root=data_root, progress=True)
    return {d: load_detector(store, name, d, model=model) for d in DETECTORS}


def _detection(dets: dict[str, Detector], model: LatentClassifier, clean: dict[str, Detection], adv: torch.Tensor,
               success: list[bool], seed: int) -> dict[str, Any]:
    """Every detector on the adversarial images (one logits pass shared by all), against its results on
    the clean test images."""
    samples = next(iter(dets.values())).samples
    adv_logits = batched_logits(model, adv, samples, seed)
    out = {}
    for name, det in dets.items():
        flagged = det.detect_logits(adv_logits)
        out[name] = {"rate": detection_rate(flagged, success), "fpr": false_positive_rate(clean[name]),
                     "n_success": int(sum(success)), "roc": roc(clean[name], flagged, success),
                     "flagged": flagged.is_adversarial.tolist()}
        out[name]["auc"] = out[name]["roc"]["auc"] if out[name]["roc"] else None
    return out


def _accuracy(card: dict, key: str) -> float | None:
    v = card.get(key)
    return v.get("accuracy") if isinstance(v, dict) else None


def reproduce(config: StudyConfig, store: ModelStore | None = None, progress: Progress | None = None,
              data_root=None, device: str | torch.device | None = None) -> dict[str, Any]:
    """Run the study and write ``config.out``/{report.md, report.html, results.json, figures/*.png}.
    ``progress`` receives the completed fraction (0..1) after every step. Models run on ``device`` (default
    ``GENROBUST_DEVICE``); results do not depend on it beyond float rounding. Returns the results dict."""
    store = store or ModelStore()
    device = resolve_device(device)
    t_start = time.perf_counter()
    cards = {m: store.card(m) for m in config.models}  # unknown models fail before any work
    unknown = sorted(set(config.params) - set(config.attacks))
    if unknown:
        raise GenrobustError(f"parameters given for attacks not in the run: {', '.join(unknown)}")
    attacks = {a: make_attack(a, config.params.get(a)) for a in config.attacks}  # invalid params fail early too
    out = Path(config.out)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    cache = out / "cache"

    adaptive_models = [m for m in config.models if cards[m].get("logits_have_density", True)] if config.adaptive else []
    total = len(config.models) * (1 + len(attacks)) + 2 * len(adaptive_models) + 1
    done = 0
    bar = tqdm(total=total, desc="reproduce", unit="step")

    def step(what: str) -> None:
        nonlocal done
        done += 1
        bar.set_postfix_str(what)
        bar.update(1)
        if progress:
            progress(min(done / total, 1.0))

    results: dict[str, Any] = {"config": config.model_dump(mode="json"), "models": {}, "attacks": {}, "adaptive": {},
                               "examples": {}, "environment": {"torch": torch.__version__, "threads":
                                                               torch.get_num_threads(), "machine": platform.machine(),
                                                               **device_info(device)}}
    for m in config.models:
        model, card = store.load(m, device)
        dataset = data.dataset_of(card)
        test = data.load(dataset, "test", limit=max(config.limit, config.clean_limit), root=data_root)
        x, y = test.images[:config.limit], test.labels[:config.limit]
        dets = _detectors(store, m, model, config, data_root)
        clean_x, clean_y = test.images[:config.clean_limit], test.labels[:config.clean_limit]
        det_samples = next(iter(dets.values())).samples if dets else 10
        clean_logits = batched_logits(model, clean_x, det_samples, seeding.derive(config.seed, "detector", 0),
                                      progress=True, desc=f"{m}: clean test")
        clean = {d: det.detect_logits(clean_logits) for d, det in dets.items()} if dets else {}
        results["models"][m] = {
            "structure": card.get("structure", model.structure.name), "kind": card.get("kind", model.structure.kind),
            "test_accuracy": _accuracy(card, "test_accuracy"),
            "validation_accuracy": _accuracy(card, "validation_accuracy"),
            "clean_accuracy_here": (clean_logits.argmax(1) == clean_y).double().mean().item(),
            "n_clean": len(clean_y), "detection_applicable": dets is not None,
            "detection_fpr": {d: false_positive_rate(c) for d, c in clean.items()} if dets else None,
        }
        step(f"{m}: detectors")
        results["attacks"][m] = {}
        advs = {}
        for a, attack in attacks.items():
            rep, adv, hit = cached_attack(cache, model, m, card, attack, x, y, config)
            entry = {**rep.summary(), "cached": hit, "success": rep.per_image["success"],
                     "pred_after": rep.per_image["pred_after"], "pred_before": rep.per_image["pred_before"],
                     "l2": rep.per_image["l2"]}
            entry["detection"] = (_detection(dets, model, clean, adv, rep.per_image["success"],
                                             seeding.derive(config.seed, "detector", 1)) if dets else None)
            results["attacks"][m][a] = entry
            advs[a] = adv
            step(f"{m}: {a}")
        results["examples"][m] = figures.examples(m, x, y, advs, results["attacks"][m], out / "figures")
        if m in adaptive_models and dets:
            results["adaptive"][m] = _adaptive(cache, model, m, card, x, y, dets, clean, config, step)
        elif m in adaptive_models:
            step(f"{m}: adaptive n/a")
            step(f"{m}: adaptive n/a")
    results["figures"] = figures.rocs(results, out / "figures")
    results["seconds"] = round(time.perf_counter() - t_start, 1)
    results["tables"] = report.tables(results)
    write_json(out / "results.json", results)
    report.write(results, out)
    step("report")
    bar.close()
    return results


def _adaptive(cache, model, m, card, x, y, dets, clean, config: StudyConfig, step) -> dict[str, Any]:
    """Plain PGD and detector-aware PGD with the same budget: success, and how many also evade the
    logit detector."""
    out = {}
    logit = dets["logit"]
    params = {"eps": 0.1, "alpha": 0.01, "steps": 40, **config.adaptive_params}
    plain_params = {k: v for k, v in params.items() if k not in ("lam", "kappa")}
    for label, attack in (("pgd", make_attack("pgd", plain_params)), ("detector-aware-pgd", DetectorAwarePGD(logit, **params))):
        rep, adv, hit = cached_attack(cache, model, m, card, attack, x, y, config,
                                      extra_key=logit.to_dict() if label != "pgd" else None)
        det = _detection({"logit": logit}, model, clean, adv, rep.per_image["success"],
                         seeding.derive(config.seed, "detector", 2))["logit"]
        success = torch.tensor(rep.per_image["success"])
        correct = torch.tensor(rep.per_image["correct"])
        evade = success & ~torch.tensor(det["flagged"])
        out[label] = {"params": rep.params, "success_rate": rep.success_rate, "detection_rate": det["rate"],
                      "evasion_rate": (evade.sum() / correct.sum()).item() if correct.any() else None,
                      "n_correct": int(correct.sum()), "n_success": int(success.sum()), "n_evade": int(evade.sum()),
                      "median_l2": rep.median_l2, "seconds_per_image": rep.seconds_per_image, "cached": hit}
        step(f"{m}: {label}")
    return out
