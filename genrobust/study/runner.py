"""`genrobust reproduce`: the study end to end, resumable chunk by chunk.

For every model: its detectors (loaded, or fitted and saved when missing) and the clean test images; every
attack on its own number of test images (config.images); the detector-aware attack; robustness curves over
eps; then the study's FGS eps reconstructed. Every attack runs in chunks of ``chunk_size`` images, each
chunk seeded by its start (as a service sweep's) and cached under ``<out>/cache``: an interrupted run
resumes at its first unfinished chunk with identical results. Then statistics, figures and the report.
"""

from __future__ import annotations

import platform
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from tqdm import tqdm

from genrobust import data, seeding
from genrobust import uncertainty as unc
from genrobust.attacks import Attack, make_attack
from genrobust.attacks.detector_aware_pgd import DetectorAwarePGD
from genrobust.detection import (DETECTORS, Detection, Detector, detectors_path, fit_detectors, load_detector,
                                 roc)
from genrobust.device import device_info, resolve_device
from genrobust.errors import GenrobustError
from genrobust.evaluation import batched_logits
from genrobust.masking import MaskingConfig, check_masking, images_needed
from genrobust.models import LatentClassifier
from genrobust.store import ModelStore, write_json
from genrobust.study import analysis, decision, effects, figures, primary, published, report
from genrobust.study.chunks import Chunked, chunked_attack, digest
from genrobust.study.config import CURVE_ATTACKS, StudyConfig
from genrobust.study.results import SCHEMA_VERSION, StudyResults

Progress = Callable[[float], None]
# per-image lists an entry keeps (results.json): what the statistics, comparisons and figures need
KEEP = ("labels", "correct", "success", "p_misclassified", "l2", "rel_l2", "pred_before", "pred_after")


def _detectors(store: ModelStore, name: str, model: LatentClassifier, config: StudyConfig,
               data_root) -> dict[str, Detector] | None:
    if not model.logits_have_density:
        return None
    if detectors_path(store, name) is None:
        tqdm.write(f"{name}: no fitted detectors yet; fitting them on the training split")
        fit_detectors(store, name, model=model, limit=config.fit_limit, fpr=config.fpr, seed=config.seed,
                      data_root=data_root, progress=True)
    return {d: load_detector(store, name, d, model=model) for d in DETECTORS}


def _suspicion(d: Detection) -> np.ndarray:
    return -d.z.cpu().numpy()  # flagged when z < -alpha: larger is more suspicious


def _detection(dets: dict[str, Detector], model: LatentClassifier, clean: dict[str, Detection], adv: torch.Tensor,
               success: list[bool], seed: int, names=DETECTORS, full: bool = True) -> dict[str, Any]:
    """Detectors on the adversarial images (one logits pass shared by all) against their results on the
    clean test images: detection rate over the successful adversarials, and with ``full`` the FPR, the AUC
    (a bootstrap: the costly part) and the ROC, each with its interval."""
    samples = next(iter(dets.values())).samples
    adv_logits = batched_logits(model, adv, samples, seed)
    ok = np.asarray(success, dtype=bool)
    out = {}
    for name in names:
        flagged = dets[name].detect_logits(adv_logits)
        flags = flagged.is_adversarial.cpu().numpy()
        out[name] = {"rate": unc.proportion(flags[ok]).as_dict(), "n_success": int(ok.sum()), "flagged": flags.tolist()}
        if not full:  # curve points and the FGS table show the rate only
            continue
        neg, pos = _suspicion(clean[name]), _suspicion(flagged)
        out[name] |= {"fpr": unc.proportion(clean[name].is_adversarial.cpu().numpy()).as_dict(),
                      "auc": unc.auc(neg, pos[ok], seed % 2**32).as_dict(),
                      "roc": _rounded_roc(roc(clean[name], flagged, ok)), "suspicion": _round(pos.tolist())}
    return out


def _rounded_roc(r: dict | None) -> dict | None:
    """The ROC points, rounded for results.json (the AUC with its interval is reported beside it)."""
    return None if r is None else {"fpr": _round(r["fpr"]), "tpr": _round(r["tpr"])}


def _round(values: list, digits: int = 5) -> list:
    return [None if v is None else round(float(v), digits) for v in values]


def _entry(c: Chunked, seed: int) -> dict[str, Any]:
    """An attack's summary, intervals and the per-image lists the analysis needs."""
    pi = c.report.per_image
    entry = {**c.report.summary(), "cached": c.cached,
             **{k: (_round(pi[k]) if k in ("l2", "rel_l2", "p_misclassified") else pi[k]) for k in KEEP},
             "chunk_images": [n for n, _ in c.chunks], "chunk_seconds": [s for _, s in c.chunks]}
    entry["estimates"] = analysis.estimates(entry, seed)
    return entry


def _accuracy(card: dict, key: str) -> dict | None:
    v = card.get(key)
    if not isinstance(v, dict) or v.get("accuracy") is None:
        return None
    n = int(v.get("n") or 0)
    return unc.rate(round(v["accuracy"] * n), n).as_dict() if n else {"value": v["accuracy"], "low": None,
                                                                       "high": None, "n": 0}


class Steps:
    """Progress over the run's steps (a step may report fractions of itself, e.g. per chunk)."""

    def __init__(self, total: int, progress: Progress | None):
        self.total, self.done, self.progress = total, 0, progress
        self.bar = tqdm(total=total, desc="reproduce", unit="step")

    def partial(self, fraction: float) -> None:
        if self.progress:
            self.progress(min((self.done + fraction) / self.total, 1.0))

    def step(self, what: str) -> None:
        self.done += 1
        self.bar.set_postfix_str(what)
        self.bar.update(1)
        self.partial(0.0)


def reproduce(config: StudyConfig, store: ModelStore | None = None, progress: Progress | None = None,
              data_root=None, device: str | torch.device | None = None) -> dict[str, Any]:
    """Run the study and write ``config.out``/{report.md, report.html, results.json, figures/*.png}.
    ``progress`` receives the completed fraction (0..1) as the run goes. Models run on ``device`` (default
    ``GENROBUST_DEVICE``); results do not depend on it beyond float rounding. Returns the results dict."""
    store = store or ModelStore()
    device = resolve_device(device)
    cards = {m: store.card(m) for m in config.models}  # unknown models fail before any work
    curve_specs = _curve_specs(config)
    unknown = sorted(set(config.params) - set(config.attacks) - {a for a, _ in curve_specs})
    if unknown:
        raise GenrobustError(f"parameters given for attacks not in the run: {', '.join(unknown)}")
    attacks = {a: make_attack(a, config.params.get(a)) for a in config.attacks}  # invalid params fail early too
    for (a, norm), budgets in curve_specs.items():  # and the curves' (their budgets replace eps)
        if budgets:
            curve_attack(a, norm, budgets[-1], config.params.get(a))
    masking = {m: masking_config(config, m) for m in config.models} if config.runs_masking() else {}  # invalid: fail now
    ensemble = config.ensemble()
    out = Path(config.out)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    cache = out / "cache"
    # the primary endpoint's models first: missing replicates are trained once (timed apart, kept in the store)
    primary_names, training_seconds = primary.replicate_models(config.models, config.replicate_count(), store,
                                                               config.train_missing, device)
    if config.matched:
        gen_val = [(store.card(m).get("validation_accuracy") or {}).get("accuracy") for m in primary_names
                   if store.card(m).get("kind") == "generative"]
        gen_val = [v for v in gen_val if v is not None]
        primary_names += primary.matched_models([m for m in primary_names if store.card(m).get("kind") != "generative"],
                                                store, float(np.mean(gen_val)) if gen_val else None)
    t_start = time.perf_counter()  # the study's own wall time, training apart

    density = {m: cards[m].get("logits_have_density", True) for m in config.models}
    adaptive_models = [m for m in config.models if density[m]] if config.adaptive else []
    n_curve = (1 + sum(len(v) for v in curve_specs.values()) + 1) if config.curves else 0
    steps = Steps(len(config.models) * (1 + len(attacks) + n_curve) + 2 * len(adaptive_models) + len(masking)
                  + len(primary_names) + 1, progress)

    results: dict[str, Any] = {"config": config.model_dump(mode="json"), "models": {}, "attacks": {}, "adaptive": {},
                               "curves": {}, "fgs": {}, "examples": {}, "masking": {},
                               "images": {a: config.images(a) for a in [*attacks, "adaptive"]},
                               "environment": {"torch": torch.__version__, "threads": torch.get_num_threads(),
                                               "machine": platform.machine(), **device_info(device)}}
    for m in config.models:
        model, card = store.load(m, device)
        needed = max([config.images(a) for a in attacks] + [config.clean_images(), config.fgs_images(),
                      config.images("adaptive")] + [config.curve_images(a) for a, _ in curve_specs])
        if m in masking:
            needed = max(needed, images_needed(masking[m]))
        test = data.load(data.dataset_of(card), "test", limit=needed, root=data_root)
        dets = _detectors(store, m, model, config, data_root)
        n_clean = config.clean_images()
        clean_x, clean_y = test.images[:n_clean], test.labels[:n_clean]
        det_samples = next(iter(dets.values())).samples if dets else config.eval_samples
        clean_logits = batched_logits(model, clean_x, det_samples, seeding.derive(config.seed, "detector", 0),
                                      progress=True, desc=f"{m}: clean test")
        clean = {d: det.detect_logits(clean_logits) for d, det in dets.items()} if dets else {}
        correct = (clean_logits.argmax(1).cpu() == clean_y).tolist()
        results["models"][m] = {
            "structure": card.get("structure", model.structure.name), "kind": card.get("kind", model.structure.kind),
            "test_accuracy": _accuracy(card, "test_accuracy"),
            "validation_accuracy": _accuracy(card, "validation_accuracy"),
            "clean_accuracy_here": unc.proportion(correct).as_dict(), "clean_correct": correct,
            "n_clean": n_clean, "detection_applicable": dets is not None,
            "detection_fpr": {d: unc.proportion(c.is_adversarial.cpu().numpy()).as_dict() for d, c in clean.items()}
            if dets else None,
            "clean_suspicion": _round(_suspicion(clean["logit"]).tolist()) if dets else None,
        }
        steps.step(f"{m}: clean test images")
        results["attacks"][m] = {}
        advs = {}
        for a, attack in attacks.items():
            n = config.images(a)
            # a transfer's chunks also depend on its source model: its card is part of the cache key
            source = getattr(attack.params, "source", None)
            c = chunked_attack(cache, model, m, card, attack, test.images[:n], test.labels[:n], config,
                               extra_key={"source": digest(ModelStore().card(source))} if source else None,
                               on_chunk=steps.partial)
            entry = _entry(c, config.seed)
            entry["detection"] = (_detection(dets, model, clean, c.adversarial, entry["success"],
                                             seeding.derive(config.seed, "detector", 1)) if dets else None)
            results["attacks"][m][a] = entry
            advs[a] = c.adversarial
            steps.step(f"{m}: {a}")
        n_ex = min([len(v) for v in advs.values()] or [0])
        if n_ex:
            results["examples"][m] = figures.examples(
                m, test.images[:n_ex], test.labels[:n_ex], {a: v[:n_ex] for a, v in advs.items()},
                {a: {k: e[k][:n_ex] for k in ("pred_before", "pred_after", "success")}
                 for a, e in results["attacks"][m].items()}, out / "figures")
        del advs
        if m in adaptive_models:
            n = config.images("adaptive")
            results["adaptive"][m] = _adaptive(cache, model, m, card, test.images[:n], test.labels[:n], dets, clean,
                                               config, steps)
        if config.curves:
            results["curves"][m] = _curves(cache, model, m, card, test, dets, clean, config, curve_specs, steps)
            results["fgs"][m] = _fgs(cache, model, m, card, test, dets, clean, config, results["curves"][m],
                                     results["models"][m]["structure"])
            steps.step(f"{m}: the study's FGS")
        if m in masking:
            results["masking"][m] = check_masking(model, test.images, test.labels, masking[m], model_name=m,
                                                  progress=steps.partial).model_dump(mode="json")
            steps.step(f"{m}: masking checks")
    results["primary"] = _primary(cache, store, config, ensemble, primary_names, data_root, device, steps,
                                  training_seconds).model_dump(mode="json")
    results["analysis"] = analysis.analyse(results, config.seed)
    results["figures"] = figures.rocs(results, out / "figures") + figures.curves(results, out / "figures")
    results["seconds"] = round(time.perf_counter() - t_start, 1)
    results["tables"] = {**report.primary_tables(results), **report.tables(results)}
    results["reproduction"] = report.answer(results)  # the paper's tables, summarised: secondary
    results["answer"] = _answer(results).model_dump(mode="json")
    results = {"schema_version": SCHEMA_VERSION, **results}
    write_json(out / "results.json", StudyResults.model_validate(results).model_dump(mode="json"))  # validated
    report.write(results, out)
    steps.step("report")
    steps.bar.close()
    return results


def _primary(cache: Path, store: ModelStore, config: StudyConfig, ensemble: primary.Ensemble, names: list[str],
             data_root, device, steps: Steps, training_seconds: float) -> effects.PrimaryResults:
    """The ensemble on every replicate (and matched checkpoint), on the same first N test images; then the
    primary effect and the secondary family."""
    n = config.primary_images()
    cards = {m: store.card(m) for m in names}
    kinds = {m: {"kind": c.get("kind")} for m, c in cards.items()}
    runs = {}
    t0 = time.perf_counter()
    for m in names:
        model, card = store.load(m, device)
        test = data.load(data.dataset_of(card), "test", limit=n, root=data_root)
        runs[m] = primary.run_model(cache, model, m, card, test.images, test.labels, config, ensemble,
                                    primary.stored_sources(kinds, m))
        steps.step(f"{m}: primary endpoint")
    effect, secondary = effects.analyse(runs, ensemble, config.seed)
    return effects.PrimaryResults(ensemble=ensemble.model_dump(mode="json"), models=runs, primary=effect,
                                  secondary=secondary, seconds=round(time.perf_counter() - t0, 1),
                                  training_seconds=training_seconds)


def _answer(results: dict) -> decision.Answer:
    """The answer from the primary endpoint and the masking checks; the paper's differences and the limits
    from the reproduction tables."""
    pr = effects.PrimaryResults.model_validate(results["primary"])
    masking = ({m: [c["letter"] for c in r["checks"] if c["status"] == "flag"] for m, r in results["masking"].items()}
               if results["masking"] else None)
    rep = results["reproduction"]
    return decision.answer(pr.primary, masking, pr.secondary, differences=rep["differences"],
                           limits=report.primary_limits(results) + " " + rep["limits"])


def masking_config(config: StudyConfig, model_name: str) -> MaskingConfig:
    """The masking checks of one model: the preset (the study's unless masking_preset), capped by --limit, the
    study's seed, K and R, the run's first other model as the transfer source, then masking_overrides."""
    others = [o for o in config.models if o != model_name]
    fields = {"seed": config.seed, "eval_samples": config.eval_samples, "eval_draws": config.eval_draws,
              "transfer_source": others[0] if others else None, **config.masking_overrides}
    return MaskingConfig.from_preset(config.masking_preset or config.preset, limit=config.limit, **fields)


def _adaptive(cache, model, m, card, x, y, dets, clean, config: StudyConfig, steps: Steps) -> dict[str, Any]:
    """Plain PGD and detector-aware PGD with the same budget: success, and how many also evade the
    logit detector."""
    out = {}
    logit = dets["logit"]
    params = {"eps": 0.1, "alpha": 0.01, "steps": 40, **config.adaptive_params}
    plain_params = {k: v for k, v in params.items() if k not in ("lam", "kappa")}
    for label, attack in (("pgd", make_attack("pgd", plain_params)), ("detector-aware-pgd", DetectorAwarePGD(logit, **params))):
        c = chunked_attack(cache, model, m, card, attack, x, y, config,
                           extra_key=logit.to_dict() if label != "pgd" else None, on_chunk=steps.partial)
        entry = _entry(c, config.seed)
        det = _detection({"logit": logit}, model, clean, c.adversarial, entry["success"],
                         seeding.derive(config.seed, "detector", 2), names=("logit",))["logit"]
        entry["flagged"] = det["flagged"]
        correct, success = np.asarray(entry["correct"], bool), np.asarray(entry["success"], bool)
        evade = success & ~np.asarray(det["flagged"], bool)
        out[label] = {**{k: entry[k] for k in ("params", "success_rate", "median_l2", "seconds_per_image", "cached",
                                               "n", *KEEP, "flagged")},
                      "detection_rate": det["rate"], "evasion_rate": unc.proportion(evade[correct]).as_dict(),
                      "n_correct": int(correct.sum()), "n_success": int(success.sum()), "n_evade": int(evade.sum()),
                      "estimates": entry["estimates"]}
        steps.step(f"{m}: {label}")
    return out


# ---------------------------------------------------------------------------------------------- curves
def _curve_specs(config: StudyConfig) -> dict[tuple[str, str], list[float]]:
    """(attack, norm) -> budgets > 0 of the robustness curves (eps = 0 is one shared clean point)."""
    if not config.curves:
        return {}
    return {(a, norm): [e for e in config.budgets().get(norm, []) if e > 0]
            for norm, names in CURVE_ATTACKS.items() for a in names}


def curve_attack(name: str, norm: str, eps: float, overrides: dict | None = None) -> Attack:
    """The attack of one curve point: the study's parameters for it with the budget set; PGD's step size
    scales with the budget (4 eps / steps: the library default 0.01 at eps = 0.1 and 40 steps, whose chunks the
    curve then shares with the main PGD run) so every point gets the same relative effort."""
    params = dict(overrides or {})
    params["eps"] = eps
    if name != "fgsm":
        params["norm"] = norm
    if name == "pgd":
        steps = params.get("steps", 40)
        params["alpha"] = round(4 * eps / steps, 12)  # 0.01, not 0.010000000000000002: the same cache key
    return make_attack(name, params)


def _curve_point(c: Chunked, det: dict | None) -> dict[str, Any]:
    pi = c.report.per_image
    robust = analysis.robust_flags(pi)
    success = np.asarray(pi["success"], bool)
    return {"n": len(robust), "robust_accuracy": unc.proportion(robust).as_dict(),
            "correct": pi["correct"], "p_misclassified": _round(pi["p_misclassified"]),
            "success_rate": unc.proportion(success[np.asarray(pi["correct"], bool)]).as_dict(),
            "robustness": c.report.robustness, "median_l2": c.report.median_l2,
            "detection_rate": det["rate"] if det else None, "cached": c.cached}


def _curves(cache, model, m, card, test, dets, clean, config: StudyConfig, specs, steps: Steps) -> dict[str, Any]:
    """Robust accuracy (and logit detection rate over the successful adversarials) against the budget, one
    run_attack per point on the attack's curve images; eps = 0 is the clean model on the most of them."""
    det_seed = seeding.derive(config.seed, "detector", 3)

    def point(attack: Attack, n: int) -> dict[str, Any]:
        c = chunked_attack(cache, model, m, card, attack, test.images[:n], test.labels[:n], config,
                           on_chunk=steps.partial)
        det = _detection(dets, model, clean, c.adversarial, c.report.per_image["success"], det_seed,
                         names=("logit",), full=False)["logit"] if dets and attack.params.eps > 0 else None
        return _curve_point(c, det)

    n0 = max(config.curve_images(a) for a, _ in specs)
    clean_point = {"eps": 0.0, **point(make_attack("fgsm", {"eps": 0.0}), n0)}
    steps.step(f"{m}: clean point")
    out: dict[str, Any] = {}
    for (a, norm), budgets in specs.items():
        pts = [clean_point]
        for eps in budgets:
            pts.append({"eps": eps, **point(curve_attack(a, norm, eps, config.params.get(a)), config.curve_images(a))})
            steps.step(f"{m}: {a} {norm} eps {eps}")
        out.setdefault(norm, {})[a] = pts
    return out


def fgs_eps(points: list[dict], target_rho: float) -> float | None:
    """The FGSM budget at which rho (mean ||eta||_2 / ||x||_2 over successful images) reaches
    ``target_rho``, by linear interpolation along the curve; None when the curve never reaches it."""
    pts = [(p["eps"], p["robustness"]) for p in points if p["robustness"] is not None and p["eps"] > 0]
    for (e0, r0), (e1, r1) in zip(pts, pts[1:]):
        if min(r0, r1) <= target_rho <= max(r0, r1) and r1 != r0:
            return e0 + (target_rho - r0) * (e1 - e0) / (r1 - r0)
    return None


def _fgs(cache, model, m, card, test, dets, clean, config: StudyConfig, curves: dict, structure: str):
    """The study's FGS: the eps at which our FGSM's rho equals the published one, and Tables 3 and 5 there."""
    target = published.ROBUSTNESS["fgsm"][{"DFZ": 0, "GFZ": 1}[structure]] if structure in ("DFZ", "GFZ") else None
    pts = curves.get("linf", {}).get("fgsm", [])
    rhos = [p["robustness"] for p in pts if p["robustness"] is not None]
    out: dict[str, Any] = {"target_rho": target, "rho_range": [min(rhos), max(rhos)] if rhos else [None, None]}
    eps = fgs_eps(pts, target) if target is not None else None
    out["eps"] = None if eps is None else round(eps, 3)
    if out["eps"] is None:
        return out
    n = config.fgs_images()
    c = chunked_attack(cache, model, m, card, make_attack("fgsm", {**config.params.get("fgsm", {}), "eps": out["eps"]}),
                       test.images[:n], test.labels[:n], config)
    entry = _entry(c, config.seed)
    det = (_detection(dets, model, clean, c.adversarial, entry["success"], seeding.derive(config.seed, "detector", 4),
                      full=False) if dets else None)
    es = entry["estimates"]
    out.update({"n": n, "success_rate": es["success_rate"], "robustness": es["robustness"],
                "robust_accuracy": es["robust_accuracy"],
                "detection_rate": {d: v["rate"] for d, v in det.items()} if det else None, "cached": c.cached})
    return out
