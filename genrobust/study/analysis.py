"""The study's statistics: every number with its interval, every model pair compared on the same images.

Works on the per-image results the runner collects (plain lists, as in results.json) and returns plain
dicts: the report only formats them. Comparisons are always generative minus discriminative model (or the
later minus the earlier model of a pair of one kind), each by the test fit for its data (``compare``), the
rows of a table that have a p-value Holm-corrected together.
"""

from __future__ import annotations

from dataclasses import fields
from itertools import product
from typing import Any, Callable

import numpy as np
from scipy import stats

from genrobust import uncertainty as unc
from genrobust.uncertainty import Comparison

# The metrics compared between models (paired_values: on which images, compare: by which test). 'sign' is the
# direction the generative model is expected to take if it is the more robust one.
METRICS: dict[str, dict[str, Any]] = {
    "success_rate": {"title": "success rate", "sign": -1},
    "robust_accuracy": {"title": "robust accuracy", "sign": +1},
    "misclassification_probability": {"title": "P(misclassified)", "sign": -1},
    "robustness": {"title": "rho", "sign": +1},
    "median_l2": {"title": "median L2", "sign": +1},
    "detection_rate": {"title": "logit detection rate", "sign": +1},
    "evasion_rate": {"title": "fooled and evaded", "sign": -1},
    "clean_accuracy": {"title": "clean accuracy", "sign": -1},  # the study: the discriminative model is more accurate
    "seconds_per_image": {"title": "seconds per image", "sign": +1},  # the study: GFZ is slower to attack
    "auc": {"title": "logit detection AUC", "sign": +1},
}


def _arr(pi: dict, key: str, dtype=float) -> np.ndarray:
    return np.asarray(pi[key], dtype=dtype)


def robust_flags(pi: dict) -> np.ndarray:
    """Correct under a strict majority of the R fresh evaluations (AttackReport.robust_accuracy)."""
    return _arr(pi, "p_misclassified") < 0.5


RATES = ("robust_accuracy", "clean_accuracy", "success_rate", "detection_rate", "evasion_rate")


def paired_values(pi: dict, metric: str) -> tuple[np.ndarray, np.ndarray | None]:
    """One entry's per-image values of ``metric`` (per chunk, for time) and the images they are defined on
    (None: all): flags for a rate, values for a mean, and for median L2 the minimal norms over the correctly
    classified images with +inf where the attack never fooled the image (censored, never dropped)."""
    correct = _arr(pi, "correct", bool)
    success = _arr(pi, "success", bool) if "success" in pi else None
    flagged = _arr(pi, "flagged", bool) if "flagged" in pi else None
    return {"success_rate": lambda: (success, correct), "robust_accuracy": lambda: (robust_flags(pi), None),
            "clean_accuracy": lambda: (correct, None), "detection_rate": lambda: (flagged, success),
            "evasion_rate": lambda: (success & ~flagged, correct),
            "misclassification_probability": lambda: (_arr(pi, "p_misclassified"), correct),
            "robustness": lambda: (_arr(pi, "rel_l2"), success),
            "median_l2": lambda: (np.where(success, _arr(pi, "l2"), np.inf), correct),
            "seconds_per_image": lambda: (_arr(pi, "chunk_seconds") / _arr(pi, "chunk_images"), None)}[metric]()


def _both(*masks: np.ndarray | None) -> np.ndarray | None:
    """The images where every mask holds (None: no mask at all)."""
    given = [np.asarray(m, bool) for m in masks if m is not None]
    return np.logical_and.reduce(given) if given else None


def statistic(pi: dict, metric: str) -> Callable[[np.ndarray], np.ndarray]:
    """The vectorised statistic of a descriptive comparison (median L2 censored as in ``paired_values``, the
    AUC) over resampled image indices of one entry."""
    if metric == "median_l2":
        return unc.median_statistic(*paired_values(pi, metric))
    if metric == "auc":  # clean image i against its successful adversarial, both resampled by image
        success = _arr(pi, "success", bool)
        neg, pos = _arr(pi, "clean_suspicion"), _arr(pi, "suspicion")

        def auc(idx: np.ndarray) -> np.ndarray:
            rows = np.atleast_2d(idx)
            return np.array([_auc(neg[r], pos[r][success[r]]) for r in rows])
        return auc
    raise KeyError(metric)


def _auc(neg: np.ndarray, pos: np.ndarray) -> float:
    if len(neg) == 0 or len(pos) == 0:
        return np.nan
    return float(stats.mannwhitneyu(pos, neg).statistic / (len(neg) * len(pos)))


def estimates(pi: dict, seed: int = 0) -> dict[str, dict]:
    """Every metric of one attack entry with its 95% interval: Wilson for rates, bootstrap otherwise."""
    correct, success = _arr(pi, "correct", bool), _arr(pi, "success", bool)
    p = _arr(pi, "p_misclassified")
    out = {"clean_accuracy": unc.proportion(correct), "success_rate": unc.proportion(success[correct]),
           "robust_accuracy": unc.proportion(robust_flags(pi)),
           "misclassification_probability": unc.bootstrap(p[correct], np.mean, seed),
           "robustness": unc.bootstrap(_arr(pi, "rel_l2")[success], np.mean, seed),
           "median_l2": unc.bootstrap(_arr(pi, "l2")[success], np.median, seed)}
    return {k: v.as_dict() for k, v in out.items()}


def index_key(pi: dict, metric: str) -> str:
    return "chunk_images" if metric == "seconds_per_image" else "correct"


def compare(a: dict, b: dict, metric: str, seed: int = 0) -> Comparison:
    """a minus b, paired over the images (chunks, for time) both entries share, the first min(n_a, n_b), by the
    test fit for the metric's data: a rate by the exact McNemar test over the images where both entries' masks
    hold (success rate: both correct; detection rate: both fooled; n is their count); P(misclassified), rho and
    median L2 (censored: an image never fooled is +inf) by the Wilcoxon signed-rank test over the shared masked
    images; the seconds per image of each chunk by a sign-flip permutation test (not testable below
    MIN_PAIRED chunks)."""
    key = index_key(a, metric)
    n = min(len(a[key]), len(b[key]))
    if n < len(a[key]) or n < len(b[key]):
        a, b = _head(a, n, key), _head(b, n, key)
    (va, ma), (vb, mb) = paired_values(a, metric), paired_values(b, metric)
    if metric in RATES:
        return unc.mcnemar(va, vb, _both(ma, mb))
    if metric == "seconds_per_image":
        return unc.paired_permutation(va, vb, seed)
    return unc.signed_rank(va, vb, _both(ma, mb), np.median if metric == "median_l2" else np.mean, seed)


def _head(pi: dict, n: int, key: str) -> dict:
    per_chunk = key == "chunk_images"
    return {k: (v[:n] if isinstance(v, list) and (k.startswith("chunk_") == per_chunk) else v) for k, v in pi.items()}


def orient(models: dict[str, dict]) -> list[tuple[str, str]]:
    """Every pair of models (A, B), compared as A - B: generative minus discriminative, else the later minus
    the earlier of the run; the study's GFZ-DFZ pair first, then the generative-discriminative pairs."""
    gen = [m for m, i in models.items() if i["kind"] == "generative"]
    dis = [m for m, i in models.items() if i["kind"] != "generative"]
    names = list(models)
    same = [(names[j], names[i]) for i in range(len(names)) for j in range(i + 1, len(names))
            if (names[i] in gen) == (names[j] in gen)]
    primary = primary_pair(models)
    return sorted(list(product(gen, dis)) + same, key=lambda p: p != primary)


def primary_pair(models: dict[str, dict]) -> tuple[str, str] | None:
    """(GFZ, DFZ) when the run has both (the study's pair), else the first generative and discriminative."""
    by: dict[str, str] = {}
    for m, info in models.items():
        by.setdefault(info["structure"], m)
    if "GFZ" in by and "DFZ" in by:
        return by["GFZ"], by["DFZ"]
    gen = [m for m, i in models.items() if i["kind"] == "generative"]
    dis = [m for m, i in models.items() if i["kind"] != "generative"]
    return (gen[0], dis[0]) if gen and dis else None


def _key(metric: str, attack: str | None = None, norm: str | None = None, eps: float | None = None) -> dict:
    """What a comparison row compares, as fields (metric, attack, and for a curve point its norm and eps)."""
    return {"metric": metric, "attack": attack, "norm": norm, "eps": eps}


def comparison_rows(rows: list[tuple[dict, str, str, Comparison]]) -> list[dict]:
    """(what, A, B, comparison) rows of one table: Holm across those with a p-value, then a verdict each. The
    discordant counts b and c are 'discordant_b' and 'discordant_c' here ('a' and 'b' name the models)."""
    adjusted = unc.holm([c for *_, c in rows])
    out = []
    for (what, a, b, _), c in zip(rows, adjusted):
        sign = METRICS[what["metric"]]["sign"]
        d = c.as_dict()
        d["discordant_b"], d["discordant_c"] = d.pop("b"), d.pop("c")
        out.append({**what, "a": a, "b": b, **d, "expected_sign": sign, "verdict": unc.verdict(c, sign)})
    return out


def family(entries: dict[str, dict[str, Any]], kinds: dict[str, str], metric: str, seed: int = 0,
           n_resamples: int = unc.N_RESAMPLES) -> dict | None:
    """Generative against discriminative structures as groups: the mean over each group's models of a
    metric, on the images all of them share. A rate is tested by the Wilcoxon signed-rank test of the per-image
    difference of the group means of the flags (the image is the unit); median L2 and the AUC are descriptive:
    a paired bootstrap interval of the difference of group means, no p."""
    gen = [m for m in entries if kinds[m] == "generative"]
    dis = [m for m in entries if kinds[m] != "generative"]
    if not gen or not dis:
        return None
    key = index_key(next(iter(entries.values())), metric)
    n = min(len(e[key]) for e in entries.values())
    heads = {m: _head(e, n, key) for m, e in entries.items()}
    if metric in RATES:
        values = {m: paired_values(h, metric) for m, h in heads.items()}
        mask = _both(*(m for _, m in values.values()))
        flags = {m: v.astype(float)[mask if mask is not None else slice(None)] for m, (v, _) in values.items()}
        value = {m: f.mean() if len(f) else np.nan for m, f in flags.items()}
        g, d = (np.mean([flags[m] for m in ms], axis=0) for ms in (gen, dis))
        c = unc.signed_rank(g, d, statistic=np.mean, seed=seed, n_resamples=n_resamples)
    else:
        stat = {m: statistic(h, metric) for m, h in heads.items()}
        value = {m: stat[m](np.arange(n)[None])[0] for m in entries}

        def group(ms):
            return lambda idx: np.mean([stat[m](idx) for m in ms], axis=0)
        c = unc.paired(group(gen), group(dis), n, seed, n_resamples, vectorized=True)
    return {"generative": {m: _finite(value[m]) for m in gen}, "discriminative": {m: _finite(value[m]) for m in dis},
            "generative_mean": _finite(np.mean([value[m] for m in gen])),
            "discriminative_mean": _finite(np.mean([value[m] for m in dis])), "n": n, **c.as_dict()}


def _finite(v) -> float | None:
    """A number for results.json: JSON has no infinity or NaN (a median beyond every measured norm)."""
    return float(v) if v is not None and np.isfinite(v) else None


# Which attack stands for each family-table column, first found in the run: the strongest bounded attack;
# DeepFool for minimal L2 (with robust acceptance, and affordable on many more images than CW)
FAMILY = {"robust_accuracy": ("autoattack", "apgd", "pgd", "fgsm"),
          "median_l2": ("deepfool", "cw", "truncated-deepfool"), "auc": ("fgsm", "pgd", "deepfool")}


def _with_detection(entry: dict, clean_suspicion: list | None) -> dict | None:
    det = entry.get("detection")
    if not det:
        return None
    return {**entry, "flagged": det["logit"]["flagged"], "suspicion": det["logit"]["suspicion"],
            "clean_suspicion": clean_suspicion}


def analyse(results: dict, seed: int = 0) -> dict[str, Any]:
    """All comparisons of the run: per table, every generative-discriminative pair (the study's pair first),
    Holm-corrected over the table's rows for that pair; and the family comparison."""
    models = results["models"]
    pairs = orient(models)
    attacks = list(next(iter(results["attacks"].values()), {}))
    out: dict[str, Any] = {"pairs": [list(p) for p in pairs], "primary": list(primary_pair(models) or []), "tables": {}}

    def rows_for(a: str, b: str) -> dict[str, list]:
        ea, eb = results["attacks"][a], results["attacks"][b]
        t: dict[str, list] = {"accuracy": [], "runtime": [], "success": [], "perturbation": [], "detection": [],
                              "adaptive": []}
        t["accuracy"].append((_key("clean_accuracy"), a, b, compare({"correct": models[a]["clean_correct"]},
                                                               {"correct": models[b]["clean_correct"]},
                                                               "clean_accuracy", seed)))
        for x in attacks:
            t["runtime"].append((_key("seconds_per_image", x), a, b, compare(ea[x], eb[x], "seconds_per_image", seed)))
            for metric in ("robust_accuracy", "success_rate"):
                t["success"].append((_key(metric, x), a, b, compare(ea[x], eb[x], metric, seed)))
            for metric in ("robustness", "median_l2"):
                t["perturbation"].append((_key(metric, x), a, b, compare(ea[x], eb[x], metric, seed)))
            da = _with_detection(ea[x], models[a].get("clean_suspicion"))
            db = _with_detection(eb[x], models[b].get("clean_suspicion"))
            if da and db:
                t["detection"].append((_key("detection_rate", x), a, b, compare(da, db, "detection_rate", seed)))
        ad = results.get("adaptive", {})
        if a in ad and b in ad:
            dap = "detector-aware-pgd"
            t["adaptive"].append((_key("evasion_rate", dap), a, b, compare(ad[a][dap], ad[b][dap], "evasion_rate", seed)))
        return {k: comparison_rows(v) for k, v in t.items() if v}

    def curve_rows(a: str, b: str) -> list:
        rows = []
        for norm, by in (results.get("curves") or {}).get(a, {}).items():
            for attack, pts in by.items():
                other = {p["eps"]: p for p in results["curves"][b].get(norm, {}).get(attack, [])}
                for p in pts:
                    if p["eps"] > 0 and p["eps"] in other:
                        rows.append((_key("robust_accuracy", attack, norm, p["eps"]), a, b,
                                     compare(p, other[p["eps"]], "robust_accuracy", seed)))
        return rows

    for a, b in pairs:
        for table, rows in rows_for(a, b).items():
            out["tables"].setdefault(table, []).extend(rows)
        if results.get("curves") and a in results["curves"] and b in results["curves"]:
            out["tables"].setdefault("curves", []).extend(comparison_rows(curve_rows(a, b)))
    out["family"] = _family(results, seed) if len(models) > 2 else None
    out["minimal"] = minimal_perturbations(results)
    return out


def _family(results: dict, seed: int) -> dict[str, Any] | None:
    models = results["models"]
    kinds = {m: i["kind"] for m, i in models.items()}
    if len(set(kind == "generative" for kind in kinds.values())) < 2:
        return None
    rows = []
    for metric, candidates in FAMILY.items():
        attack = next((a for a in candidates if all(a in results["attacks"][m] for m in models)), None)
        if attack is None:
            continue
        entries = {m: results["attacks"][m][attack] for m in models}
        if metric == "auc":  # only models whose logits carry a density have detectors
            entries = {m: _with_detection(e, models[m].get("clean_suspicion")) for m, e in entries.items()}
            entries = {m: e for m, e in entries.items() if e is not None}
        f = family(entries, kinds, metric, seed, n_resamples=300 if metric == "auc" else unc.N_RESAMPLES)
        if f:
            rows.append({"metric": metric, "attack": attack, "params": entries[next(iter(entries))]["params"], **f})
    adjusted = unc.holm([Comparison(**{f.name: r[f.name] for f in fields(Comparison)}) for r in rows])
    for r, c in zip(rows, adjusted):
        r["p_adjusted"], r["detectable_adjusted"] = c.p_adjusted, c.detectable_adjusted
        r["verdict"] = unc.verdict(c, METRICS[r["metric"]]["sign"])
    return {"rows": rows}


MINIMAL = ("deepfool", "cw", "truncated-deepfool", "zoo")


def minimal_perturbations(results: dict, points: int = 25) -> dict[str, Any]:
    """For the minimal-perturbation attacks: the fraction of correctly classified images that the attack
    fools (a majority of the R fresh evaluations misclassify) within ||eta||_2 <= r, with Wilson intervals,
    on one grid of r shared by every model."""
    out: dict[str, Any] = {}
    for attack in MINIMAL:
        entries = {m: e[attack] for m, e in results["attacks"].items() if attack in e}
        if not entries:
            continue
        top = max((max(e["l2"]) for e in entries.values() if e["l2"]), default=0.0) or 1.0
        grid = np.linspace(0, top, points)
        out[attack] = {"r": grid.round(4).tolist(), "models": {}}
        for m, e in entries.items():
            correct = _arr(e, "correct", bool)
            fooled = correct & ~robust_flags(e)
            l2 = _arr(e, "l2")
            n = int(correct.sum())
            out[attack]["models"][m] = [unc.rate(int((fooled & (l2 <= r + 1e-9)).sum()), n).as_dict() for r in grid]
    return out
