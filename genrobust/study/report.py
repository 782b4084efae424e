"""Tables (values with 95% intervals and n, the study's figures beside them, paired comparisons with
Holm-corrected p-values), the answer written from them, and the Markdown / HTML report."""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

from genrobust.store import atomic_write
from genrobust.study import published as pub
from genrobust.study.analysis import METRICS
from genrobust.uncertainty import ALPHA, N_RESAMPLES, at_resolution

DETECTORS = ("logit", "marginal", "kl")
NEEDS_PAIR = "No comparison: the run needs a generative and a discriminative model."


def fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}g}" if abs(v) < 1e-3 and v != 0 else f"{v:.{digits}f}"
    return str(v)


def est(d: dict | None, digits: int = 3) -> str:
    """``value [low, high]`` of an interval dict, '–' without a value."""
    if not d or d.get("value") is None:
        return "–"
    if d.get("low") is None:
        return f"{d['value']:.{digits}f}"
    return f"{d['value']:.{digits}f} [{d['low']:.{digits}f}, {d['high']:.{digits}f}]"


def est_n(d: dict | None, digits: int = 3) -> str:
    return "–" if not d else f"{est(d, digits)} (n {d['n']})"


def diff_ci(r: dict) -> str:
    """``difference [low, high]`` of a comparison, without the brackets when it has no interval."""
    if r["difference"] is None:
        return "–"
    d = fmt(r["difference"], 3)
    return d if r["low"] is None else f"{d} [{fmt(r['low'], 3)}, {fmt(r['high'], 3)}]"


def p_text(p: float | None) -> str:
    return "–" if p is None else ("< 0.001" if p < 0.001 else f"{p:.3f}")


def _study(table: dict, attack: str, structure: str) -> str:
    v = table.get(attack)
    return fmt(v[0 if structure == "DFZ" else 1]) if v and structure in ("DFZ", "GFZ") else "–"


def _what(row: dict) -> str:
    """A row's metric and attack (and a curve point's norm and eps) in words."""
    where = " ".join(str(v) for v in (row.get("attack"), row.get("norm")) if v)
    if row.get("eps") is not None:
        where += f" eps {row['eps']:g}"
    return f"{METRICS[row['metric']]['title']}{', ' + where if where else ''}"


def comparison_block(rows: list[dict], pair: list[str]) -> list[list[str]]:
    """The rows of the primary pair, formatted: what, difference [CI], n (with b / c for McNemar), p with its
    test, p (Holm), verdict."""
    a, b = pair

    def p_cell(r: dict, p: float | None) -> str:  # a Monte-Carlo p at its resolution is a bound, not a value
        return f"≤ {p:.3f}" if p is not None and p >= 0.001 and at_resolution(r.get("test"), r["p"]) else p_text(p)

    def difference(r: dict) -> str:  # results.json has no infinity: None stands for a median beyond every norm
        if r["difference"] is None and r["p"] is not None:
            return "unbounded (one median beyond every measured norm: over half its images never fooled)"
        if r["difference"] is not None and (r["low"] is None) != (r["high"] is None):  # one end infinite
            low = fmt(r["low"], 3) if r["low"] is not None else "−∞"
            high = fmt(r["high"], 3) if r["high"] is not None else "∞"
            return f"{fmt(r['difference'], 3)} [{low}, {high}]"
        return diff_ci(r)

    return [[_what(r), difference(r),
             f"{r['n']} (b {r['discordant_b']} / c {r['discordant_c']})" if r.get("discordant_b") is not None
             else str(r["n"]),
             p_cell(r, r["p"]) + (f" ({r['test']})" if r.get("test") and r["p"] is not None else ""),
             p_cell(r, r["p_adjusted"]), r["verdict"]]
            for r in rows if [r["a"], r["b"]] == [a, b]]


def _outcomes(rows: list[dict]) -> tuple[list[dict], list[dict]]:
    """The rows whose verdict holds and those whose verdict is reversed (significant after Holm)."""
    return ([r for r in rows if r["verdict"].startswith("holds")],
            [r for r in rows if r["verdict"].startswith("reversed")])


def summary(rows: list[dict], pair: list[str], claim: str) -> str:
    """How the table's comparisons of the primary pair came out, counted by significance after Holm."""
    mine = [r for r in rows if [r["a"], r["b"]] == list(pair)]
    if not mine:
        return NEEDS_PAIR
    holds, rev = (len(x) for x in _outcomes(mine))
    rest = len(mine) - holds - rev
    tests = ", ".join(sorted({r["test"] for r in mine if r.get("test") and r["p"] is not None})) or "no test"
    return (f"{pair[0]} − {pair[1]}, '{claim}': holds in {holds}, reversed in {rev}, not distinguishable (or not "
            f"testable) in {rest} of {len(mine)} comparisons ({tests}, paired over the same images, Holm-corrected, "
            f"{ALPHA:.0%} level).")


def tables(results: dict) -> dict[str, Any]:
    models = results["models"]
    attacks = list(next(iter(results["attacks"].values()), {}))
    an = results.get("analysis") or {"tables": {}, "primary": []}
    pair = an.get("primary") or []
    comp = an["tables"]
    t: dict[str, Any] = {}

    def finish(key: str, table: dict, rows_key: str, claim: str) -> dict:
        rows = comp.get(rows_key, [])
        table["comparison_columns"] = ["comparison", f"difference ({pair[0]} − {pair[1]}) [95% CI]" if pair else
                                       "difference", "n", "p", "p (Holm)", "verdict"]
        table["comparisons"] = comparison_block(rows, pair) if pair else []
        table["verdict"] = summary(rows, pair, claim) if pair else NEEDS_PAIR
        t[key] = table
        return table

    rows = [[m, i["structure"], i["kind"], est_n(i["test_accuracy"], 4), est_n(i["clean_accuracy_here"], 4),
             fmt(pub.ACCURACY.get(i["structure"]))] for m, i in models.items()]
    finish("table1", {"title": "Table 1: accuracy (K = 10)", "columns": [
        "model", "structure", "kind", "test accuracy (card) [95% CI]", "clean accuracy, images used here [95% CI]",
        "study"], "rows": rows}, "accuracy",
        "the discriminative model is more accurate (study: DFZ 0.8891 > GFZ 0.8081)")

    rows = []
    for a in attacks:
        for m in models:
            e = results["attacks"][m][a]
            rows.append([a, m, str(e["n"]), fmt(e["seconds_per_image"], 3), str(len(e["chunk_seconds"])),
                         _study(pub.RUNTIME, a, models[m]["structure"])])
    finish("table2", {"title": "Table 2: runtime, seconds per image (attack only; cached results keep their "
                      "original time)", "columns": ["attack", "model", "images", "s / image", "chunks", "study"],
                      "rows": rows}, "runtime", "the generative model is slower to attack (study: 4 of 5 attacks)")

    rows = []
    for a in attacks:
        for m in models:
            e = results["attacks"][m][a]
            es = e["estimates"]
            rows.append([a, m, str(e["n"]), est_n(es["success_rate"]), est(es["misclassification_probability"]),
                         est(es["robust_accuracy"]), _study(pub.SUCCESS, a, models[m]["structure"])])
    finish("table3", {"title": "Table 3: success rate (one fresh evaluation, over the correctly classified images), "
                      "P(misclassified) (mean over them of the fraction of R further fresh evaluations that "
                      "misclassify) and robust accuracy (all images: correct under a majority of the R evaluations)",
                      "columns": ["attack", "model", "images", "success [95% CI] (n correct)",
                                  "P(misclassified) [95% CI]", "robust accuracy [95% CI]", "study success"],
                      "rows": rows}, "success", "the generative model is more robust (higher robust accuracy, lower "
                                                "success)")

    rows = []
    for a in attacks:
        for m in models:
            es = results["attacks"][m][a]["estimates"]
            rows.append([a, m, est_n(es["robustness"]), est(es["median_l2"]),
                         _study(pub.ROBUSTNESS, a, models[m]["structure"])])
    finish("table4", {"title": "Table 4: robustness ρ = mean ‖η‖₂ / ‖x‖₂ and median ‖η‖₂ over successful images "
                      "(bootstrap 95% CI); the comparison of median ‖η‖₂ is censored: over the images both models "
                      "classify correctly, an unfooled image counting as +∞", "columns": ["attack", "model", "ρ [95% CI] (n successful)",
                                                        "median ‖η‖₂ [95% CI]", "study ρ"], "rows": rows},
           "perturbation", "the generative model needs larger perturbations")

    rows = []
    for a in attacks:
        for m in models:
            det = results["attacks"][m][a].get("detection")
            if not det:
                rows.append([a, m, "n/a (no density)", "n/a", "n/a", "–", "–", "–", "–"])
                continue
            rows.append([a, m] + [est(det[x]["rate"]) for x in DETECTORS]
                        + [str(det["logit"]["n_success"]), est_n(det["logit"]["fpr"]), est(det["logit"]["auc"]),
                           _study(pub.DETECTION, a, models[m]["structure"])])
    finish("table5", {"title": f"Table 5: detection rate at {results['config']['fpr']:.0%} FPR over successful "
                      "adversarial examples [95% CI]", "columns": [
                          "attack", "model", "logit", "marginal", "KL", "successful n",
                          "logit FPR on clean test [95% CI] (n)", "logit AUC [95% CI]", "study (logit)"], "rows": rows},
           "detection", "the logit detector catches more of the generative model's adversarials")

    rows = []
    for m, runs in results.get("adaptive", {}).items():
        for label, r in runs.items():
            rows.append([m, label, str(r["n"]), est(r["estimates"]["success_rate"]), est(r["detection_rate"]),
                         est(r["evasion_rate"]), f"{r['n_evade']} / {r['n_correct']}", fmt(r["median_l2"], 3)])
    tab = finish("table6", {"title": "Table 6 (beyond the study): detector-aware PGD against the logit detector vs "
                            "plain PGD, same L∞ budget", "columns": [
                                "model", "attack", "images", "success [95% CI]", "detected (of successful) [95% CI]",
                                "succeeds and evades (of correct) [95% CI]", "evading n", "median ‖η‖₂"], "rows": rows},
                 "adaptive", "the generative model's detector survives the adaptive attack better")
    if not results["config"]["adaptive"]:
        tab["verdict"] = "Not run (adaptive attack switched off)."

    if results.get("curves"):
        finish("table7", _curve_table(results), "curves", "the generative model keeps a higher robust accuracy")
        t["table8"] = _fgs_table(results)
    fam = an.get("family")
    if fam and fam["rows"]:
        t["table9"] = _family_table(fam, models)
    return t


def _curve_table(results: dict) -> dict:
    models = list(results["curves"])
    keys = []
    for c in results["curves"].values():
        for norm, by in c.items():
            for a, pts in by.items():
                for p in pts:
                    key = ("any", "clean", 0.0, a, norm) if p["eps"] == 0 else (norm, a, p["eps"], a, norm)
                    if key[:3] not in [k[:3] for k in keys]:
                        keys.append(key)
    rows = []
    for label_norm, label, eps, a, norm in keys:
        cells = []
        for m in models:
            p = next((p for p in results["curves"][m].get(norm, {}).get(a, []) if p["eps"] == eps), None)
            cells += [est_n(p["robust_accuracy"]) if p else "–",
                      est(p["detection_rate"]) if p and p.get("detection_rate") else "–"]
        rows.append([label_norm, label, fmt(eps, 3), *cells])
    return {"title": "Table 7: robust accuracy against the budget (Figures: curves), and the logit detector's rate at "
                     f"{results['config']['fpr']:.0%} FPR over the successful adversarials",
            "columns": ["norm", "attack", "eps", *[c for m in models for c in (f"{m} robust accuracy [95% CI] (n)",
                                                                                f"{m} detected [95% CI]")]],
            "rows": rows}


def _fgs_table(results: dict) -> dict:
    rows, sentences = [], []
    for m, f in results.get("fgs", {}).items():
        s = results["models"][m]["structure"]
        if f.get("target_rho") is None:
            continue
        if f.get("eps") is None:
            rng = f.get("rho_range") or [None, None]
            rows.append([m, fmt(f["target_rho"]), "not reached", "–", "–", _study(pub.SUCCESS, "fgsm", s), "–",
                         _study(pub.DETECTION, "fgsm", s)])
            sentences.append(f"{m}: our FGSM's ρ spans {fmt(rng[0], 3)}–{fmt(rng[1], 3)} over the curve's budgets and "
                             f"never reaches the study's {fmt(f['target_rho'])}.")
            continue
        det = (f.get("detection_rate") or {}).get("logit")
        rows.append([m, fmt(f["target_rho"]), fmt(f["eps"], 3), str(f["n"]), est(f["success_rate"]),
                     _study(pub.SUCCESS, "fgsm", s), est(det), _study(pub.DETECTION, "fgsm", s)])
    eps = {m: f["eps"] for m, f in results.get("fgs", {}).items() if f.get("eps") is not None}
    default = next((e.get("params", {}).get("eps") for e in
                    (results["attacks"][m].get("fgsm", {}) for m in results["attacks"]) if e), 0.1)
    if eps:
        sentences.append(
            "The study's FGS ρ is matched by our FGSM at eps " + ", ".join(f"{v:.3f} on {m}" for m, v in eps.items())
            + f", not at our default {default}: its FGS was larger, so its FGS success and detection rates belong "
              "beside ours at that budget (this table), not at the default (Tables 3 and 5). "
            + ("A budget that differs between the models means the study's ρ cannot come from one common eps."
               if len(set(eps.values())) > 1 else ""))
    sentences.append(_fgs_implication(results))
    return {"title": "Table 8: the study's FGS reconstructed — the eps at which our FGSM's ρ equals the study's, "
                     "and Tables 3 and 5 at that eps beside the study's",
            "columns": ["model", "study ρ", "eps reproducing it", "images", "success [95% CI]", "study success",
                        "logit detection [95% CI]", "study detection"],
            "rows": rows, "comparisons": [], "verdict": " ".join(sentences) or "No DFZ or GFZ model in the run."}


def _fgs_implication(results: dict) -> str:
    """What the reconstruction implies: the orderings of success and detection at the study's budget, ours
    against theirs."""
    by = {results["models"][m]["structure"]: f for m, f in results.get("fgs", {}).items() if f.get("eps")}
    if not {"DFZ", "GFZ"} <= set(by):
        return ""
    d, g = by["DFZ"], by["GFZ"]
    out = []
    for label, ours, theirs in (
            ("succeeds on", (d["success_rate"], g["success_rate"]), pub.SUCCESS["fgsm"]),
            ("is detected (logit) on", ((d.get("detection_rate") or {}).get("logit"),
                                        (g.get("detection_rate") or {}).get("logit")), pub.DETECTION["fgsm"])):
        if not all(o and o.get("value") is not None for o in ours):
            continue
        same = (ours[1]["value"] > ours[0]["value"]) == (theirs[1] > theirs[0])
        out.append(f"there our FGSM {label} {ours[0]['value']:.3f} of DFZ's and {ours[1]['value']:.3f} of GFZ's images "
                   f"(study: {theirs[0]} / {theirs[1]}), {'the same ordering' if same else 'the reverse ordering'}")
    if not out:
        return ""
    return ("At the study's budget, " + "; ".join(out) + ". A larger FGS explains the study's larger ρ; where the "
            "orderings differ, a larger budget alone does not explain the study's numbers (different models, or "
            "success judged on the attacker's own noise draw).")


def _family_table(fam: dict, models: dict) -> dict:
    rows = []
    for r in fam["rows"]:
        rows.append([METRICS[r["metric"]]["title"], r["attack"], str(r["n"]),
                     ", ".join(f"{m} {fmt(v, 3)}" for m, v in r["generative"].items()),
                     ", ".join(f"{m} {fmt(v, 3)}" for m, v in r["discriminative"].items()),
                     diff_ci(r), p_text(r["p_adjusted"]), r["verdict"]])
    return {"title": "Table 9: generative against discriminative structures as groups (mean over each group's "
                     "models, per image over the shared images: Wilcoxon signed-rank for robust accuracy, descriptive "
                     "bootstrap intervals for the median L2 and the AUC; Holm over the tested rows)",
            "columns": ["metric", "attack", "images", "generative models", "discriminative models",
                        "difference of group means [95% CI]", "p (Holm)", "verdict"], "rows": rows,
            "comparisons": [], "verdict": "; ".join(f"{METRICS[r['metric']]['title']} ({r['attack']}): {r['verdict']}"
                                                   for r in fam["rows"]) + "."}


# ---------------------------------------------------------------------------------------------- answer
def _strength(holds: int, rev: int, total: int, ps: list[float]) -> str:
    if total == 0:
        return "no evidence (nothing testable)"
    if holds and not rev:
        if holds == total and max(ps) < 0.001:
            return "strong evidence"
        return "moderate evidence" if holds * 2 >= total else "weak evidence"
    if rev and not holds:
        return "strong evidence against" if rev == total and max(ps) < 0.001 else "evidence against"
    if holds and rev:
        return "conflicting evidence"
    return "no evidence either way at this n"


def answer(results: dict) -> dict[str, Any]:
    """The answer section, written from the comparisons: the question, our answer with the strength of its
    evidence, where it differs from the study, and its limits."""
    an = results.get("analysis") or {}
    pair = an.get("primary") or []
    models = results["models"]
    question = ("Are generative classifiers more robust to adversarial attacks than discriminative ones? "
                "(Li, Bradshaw & Sharma, ICML 2019, compared GFZ with DFZ.)")
    if len(pair) != 2:
        return {"question": question, "answer": NEEDS_PAIR, "strength": "none", "differences": "", "limits": ""}
    g, d = pair
    rows = [r for r in an["tables"].get("success", []) if r["metric"] == "robust_accuracy"
            and [r["a"], r["b"]] == pair]
    holds, rev = _outcomes(rows)
    ps = [r["p_adjusted"] for r in holds + rev if r["p_adjusted"] is not None]
    testable = [r for r in rows if r["p"] is not None]
    strength = _strength(len(holds), len(rev), len(testable), ps or [1.0])
    attack_of = lambda r: r["attack"]  # noqa: E731
    names = lambda rs: ", ".join(attack_of(r) for r in rs)  # noqa: E731
    if holds and not rev and len(holds) * 2 >= len(testable):
        head = f"Yes, on our numbers: {g} keeps a higher robust accuracy than {d} (under {names(holds)})"
    elif holds and not rev:
        head = (f"Partly: {g} keeps a higher robust accuracy than {d} under {names(holds)}; under the other attacks "
                "the difference is not distinguishable at our n")
    elif rev and not holds:
        head = f"No, on our numbers: {g} keeps a lower robust accuracy than {d} (under {names(rev)})"
    elif holds and rev:
        head = (f"It depends on the attack: {g} is more robust than {d} under {names(holds)} and less under "
                f"{names(rev)}")
    else:
        head = f"Not distinguishable at our n: {g} and {d} keep robust accuracies we cannot tell apart"
    detail = "; ".join(f"{attack_of(r)} {diff_ci(r)}, {r['verdict']}" for r in rows)
    text = (f"{head} ({strength}: robust accuracy {g} − {d} per attack, paired over the same test images, "
            f"Holm-corrected — {detail}).")
    perturb = [r for r in an["tables"].get("perturbation", []) if r["metric"] == "median_l2"
               and r["attack"] in ("deepfool", "cw") and [r["a"], r["b"]] == pair]
    if perturb:
        text += f" Minimal perturbations (median ‖η‖₂ over the images both classify correctly, an unfooled one counting as +∞; {g} − {d}): " + "; ".join(
            f"{attack_of(r)} {diff_ci(r)}, {r['verdict']}" for r in perturb) + "."
    det = [r for r in an["tables"].get("detection", []) if [r["a"], r["b"]] == pair]
    if det:
        h, rv = (len(x) for x in _outcomes(det))
        text += (f" Detection: the logit detector catches a larger share of {g}'s successful adversarials than "
                 f"{d}'s in {h} of {len(det)} attacks, a smaller share in {rv} (significant after Holm).")
    fam = an.get("family")
    if fam and fam["rows"]:
        text += " Across all structures of the run (Table 9): " + "; ".join(
            f"{METRICS[r['metric']]['title']} ({r['attack']}) generative − discriminative {fmt(r['difference'], 3)}, "
            f"{r['verdict']}" for r in fam["rows"]) + "."

    diffs = []
    acc = {m: (models[m]["test_accuracy"] or models[m]["clean_accuracy_here"])["value"] for m in pair}
    diffs.append(f"Our {d} reaches {fmt(acc[d])} and {g} {fmt(acc[g])} test accuracy (study: DFZ 0.8891, GFZ 0.8081).")
    ours = [r for r in an["tables"].get("success", []) if [r["a"], r["b"]] == pair
            and r["metric"] == "success_rate" and r["attack"] in pub.SUCCESS]
    for r in ours:
        a, diff = attack_of(r), r["difference"]
        p = r["p_adjusted"] if r["p_adjusted"] is not None else r["p"]
        if diff is None or p is None:
            ours_text = "not testable at our n"
        elif p >= ALPHA:
            ours_text = f"not distinguishable ({diff_ci(r)}, p = {p_text(p)})"
        else:
            ours_text = (f"{'lower' if diff < 0 else 'higher'} on {g} ({diff_ci(r)}, p = {p_text(p)})"
                         + (", the opposite of the study" if diff < 0 else ", as in the study"))
        diffs.append(f"{a}: the study's success rate was higher on GFZ ({pub.pair(pub.SUCCESS, a)}, DFZ / GFZ); "
                     f"ours is {ours_text}.")
    fgs = results.get("fgs") or {}
    if any(f.get("eps") for f in fgs.values()):
        diffs.append("The study's FGS ρ corresponds to our FGSM at eps " + ", ".join(
            f"{f['eps']:.3f} ({m})" for m, f in fgs.items() if f.get("eps")) + " (Table 8), larger than our default, "
            "which explains its larger ρ and detection rates.")
    diffs.append("The study counted an adversarial as successful on one noise draw; we also require a majority of "
                 f"R = {results['config']['eval_draws']} fresh evaluations (robust accuracy), which removes "
                 "boundary points that fool the model by luck.")
    n_min = min(results["images"].values()) if results["images"] else 0
    counts = ", ".join(f"{a} {n}" for a, n in results["images"].items())
    limits = (f"In the paper's tables (secondary), image counts differ per attack ({counts}); "
              f"the smallest n give the widest intervals, and 'not distinguishable' at n = {n_min} says nothing about a "
              "smaller true difference. Attacks run with their library defaults (budgets and steps in results.json): "
              "a stronger attack could lower every robust accuracy. The models are stochastic: the attacker and the "
              f"evaluator draw independent noise (K = {results['config']['eval_samples']}), and the attacks' own EOT and "
              "robust acceptance settings decide how well they attack the expectation. Those tables use one trained "
              "model per structure (seed 0): differences between training runs are not in their intervals.")
    return {"question": question, "answer": text, "strength": strength, "differences": " ".join(diffs),
            "limits": limits}


# ---------------------------------------------------------------------------------------------- rendering
def _md_table(columns: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _figures(results: dict) -> list[tuple[str, str]]:
    figs = [(f["question"][0].upper() + f["question"][1:], f["file"]) for f in results["figures"] if "question" in f]
    figs += [(f"{m}, one test image under every attack (top: adversarial, bottom: perturbation η)", ex["file"])
             for m, ex in results["examples"].items()]
    figs += [(f"ROC, {f['model']} — {f['attack']}", f["file"]) for f in results["figures"] if "model" in f]
    return [(f"Figure {i}: {cap}", path) for i, (cap, path) in enumerate(figs, start=1)]


def _intro(results: dict) -> str:
    c = results["config"]
    counts = ", ".join(f"{a} {n}" for a, n in results["images"].items())
    return (f"Models: {', '.join(c['models'])}. Attacks: {', '.join(c['attacks'])} (library defaults unless "
            f"overridden: {c['params'] or 'none'}). Preset {c['preset']}: the first N test images per attack "
            f"({counts}), seed {c['seed']}; success judged with fresh noise at K = {c['eval_samples']} and robust "
            f"accuracy over R = {c['eval_draws']} further evaluations; detectors calibrated to {c['fpr']:.0%} FPR on "
            f"the validation split. Every rate carries a Wilson 95% interval, every ρ, median and AUC a bootstrap "
            f"95% interval over images ({N_RESAMPLES:,} resamples). Comparisons pair the models on the same images, "
            f"each by an exact or rank test, so no p-value is a resampling floor: rates by the exact McNemar test on "
            f"the discordant images (b: only the first model, c: only the second; Newcombe's interval for the "
            f"difference), P(misclassified), ρ and median ‖η‖₂ by the Wilcoxon signed-rank test (an image never "
            f"fooled counts as an infinite norm, never dropped; paired bootstrap intervals), seconds per image by a "
            f"sign-flip permutation test over chunks (exact when they are few); AUCs are compared descriptively "
            f"(interval, no p). Wall time {results['seconds']:.0f} s on {results['environment'].get('device', 'cpu')} "
            f"(torch {results['environment']['torch']}, {results['environment']['threads']} threads)"
            f"{_cached_note(results)}.")


def _cached_note(results: dict) -> str:
    """Runtimes in Table 2 are those measured when each result was computed, even if it came from the cache."""
    entries = [e for m in results["attacks"].values() for e in m.values()]
    entries += [e for m in results.get("adaptive", {}).values() for e in m.values()]
    hits = sum(bool(e["cached"]) for e in entries)
    return f"; {hits} of {len(entries)} attack results came from the cache, with their original runtimes" if hits else ""


def _answer_md(a: dict) -> list[str]:
    return ["## The answer", "", f"**Question.** {a['question']}", "", f"**Answer ({a['strength']}).** {a['answer']}",
            "", "**What the strength rests on.**", "", *[f"- {c}" for c in a.get("conditions", [])], "",
            f"**Where this differs from the study.** {a['differences']}", "", f"**Limits.** {a['limits']}", ""]


MASKING_COLUMNS = ["check", "status", "key numbers", "explanation"]


def masking_section(results: dict) -> tuple[str, list[tuple[str, list[list[str]]]]] | None:
    """The gradient-masking checks (genrobust.masking), when the run had them: an intro and one table per model
    (check, status, key numbers, explanation: a flag is explained, never hidden)."""
    reports = results.get("masking") or {}
    if not reports:
        return None
    blocks = []
    for m, r in reports.items():
        rows = [[f"({c['letter']}) {c['name']}", c["status"], c["key_numbers"],
                 " ".join([c["explanation"], *c["notes"]])] for c in r["checks"]]
        flagged = [c["letter"] for c in r["checks"] if c["status"] == "flag"]
        blocks.append((f"{m}: {len(flagged)} of {len(rows)} checks flagged{' (' + ', '.join(flagged) + ')' if flagged else ''}"
                       f", preset {r['preset']}, {len(r['runs'])} attack runs in {r['seconds']:.0f} s", rows))
    intro = ("Does robust accuracy come from the model, or from attacks that fail on it? Each check passes or flags "
             "with its numbers: robust accuracies with Wilson 95% intervals and n, and for comparisons on the same "
             "images the discordant counts b (robust under the stronger attack only) and c (the reverse) with the "
             "exact one-sided McNemar p; p < 0.05 that the stronger attack left more images robust is \"beyond "
             "noise\" and flags. Not cached: the checks rerun with the report. `genrobust check MODEL` runs them alone.")
    return intro, blocks


def write(results: dict, out: Path) -> None:
    tabs, a = results["tables"], results["answer"]
    rep = results.get("reproduction") or {}
    md = ["# genrobust: generative vs discriminative classifiers under attack", "", *_answer_md(a), "## The run", "",
          _intro(results), ""]
    if rep.get("answer"):
        md += ["## The paper's tables, reproduced (secondary)", "", f"**Summary ({rep['strength']}, counted over the "
               "paper's attacks on the named models; not the answer).** " + rep["answer"], ""]
    for tab in tabs.values():
        md += [f"## {tab['title']}", "", _md_table(tab["columns"], tab["rows"]), ""]
        if tab.get("comparisons"):
            md += [_md_table(tab["comparison_columns"], tab["comparisons"]), ""]
        md += [f"**Verdict.** {tab['verdict']}", ""]
    masking = masking_section(results)
    if masking:
        md += ["## Gradient-masking checks", "", masking[0], ""]
        for title, rows in masking[1]:
            md += [f"**{title}**", "", _md_table(MASKING_COLUMNS, rows), ""]
    md += ["## Figures", ""]
    md += [f"**{cap}**\n\n![{cap}]({path})\n" for cap, path in _figures(results)]
    atomic_write(out / "report.md", lambda tmp: Path(tmp).write_text("\n".join(md)))

    esc = html.escape

    def table(columns, rows):
        return ("<table><tr>" + "".join(f"<th>{esc(c)}</th>" for c in columns) + "</tr>"
                + "".join("<tr>" + "".join(f"<td>{esc(v)}</td>" for v in r) + "</tr>" for r in rows) + "</table>")

    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>genrobust report</title><style>",
             "body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}",
             "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;"
             "font-size:13px;text-align:right}td:first-child,th{text-align:left}th{background:#f3f3f3}",
             ".verdict{background:#eef6ee;padding:.4em .8em;border-left:4px solid #5a5}img{max-width:100%}",
             ".answer{background:#eef2fa;padding:.6em 1em;border-left:4px solid #57a}",
             "figure{display:inline-block;margin:.5em;vertical-align:top}figcaption{font-size:12px;max-width:520px}",
             "</style></head><body>", "<h1>genrobust: generative vs discriminative classifiers under attack</h1>",
             "<div class='answer'><h2>The answer</h2>", f"<p><b>Question.</b> {esc(a['question'])}</p>",
             f"<p><b>Answer ({esc(a['strength'])}).</b> {esc(a['answer'])}</p>",
             "<p><b>What the strength rests on.</b></p><ul>" + "".join(f"<li>{esc(c)}</li>" for c in a.get("conditions", []))
             + "</ul>",
             f"<p><b>Where this differs from the study.</b> {esc(a['differences'])}</p>",
             f"<p><b>Limits.</b> {esc(a['limits'])}</p></div>", f"<h2>The run</h2><p>{esc(_intro(results))}</p>"]
    if rep.get("answer"):
        parts.append(f"<h2>The paper's tables, reproduced (secondary)</h2><p><b>Summary ({esc(rep['strength'])}, counted "
                     f"over the paper's attacks on the named models; not the answer).</b> {esc(rep['answer'])}</p>")
    for tab in tabs.values():
        parts.append(f"<h2>{esc(tab['title'])}</h2>" + table(tab["columns"], tab["rows"]))
        if tab.get("comparisons"):
            parts.append(table(tab["comparison_columns"], tab["comparisons"]))
        parts.append(f"<p class='verdict'><b>Verdict.</b> {esc(tab['verdict'])}</p>")
    if masking:
        parts.append(f"<h2>Gradient-masking checks</h2><p>{esc(masking[0])}</p>")
        parts += [f"<p><b>{esc(title)}</b></p>" + table(MASKING_COLUMNS, rows) for title, rows in masking[1]]
    parts.append("<h2>Figures</h2>")
    for cap, path in _figures(results):
        data = base64.b64encode((out / path).read_bytes()).decode()  # embedded: the file stands alone
        parts.append(f"<figure><img alt='{esc(cap)}' src='data:image/png;base64,{data}'>"
                     f"<figcaption>{esc(cap)}</figcaption></figure>")
    parts.append("</body></html>")
    atomic_write(out / "report.html", lambda tmp: Path(tmp).write_text("\n".join(parts)))


# ---------------------------------------------------------------------------------------------- primary endpoint
def _pct(rate: list[bool]) -> dict:
    from genrobust.uncertainty import proportion
    return proportion(rate).as_dict()


def detectable_text(e: dict) -> str:
    """An effect's detectable difference, with the secondary family's adjusted-level one beside it."""
    adjusted = e.get("detectable_adjusted")
    return fmt(e["detectable"], 3) + ("" if adjusted is None else f" ({fmt(adjusted, 3)} adjusted)")


def primary_tables(results: dict) -> dict[str, Any]:
    """The primary endpoint first: each model's robust accuracy under the ensemble at every budget, then the
    effects (primary, and the pre-declared secondary family with Holm)."""
    pr = results.get("primary")
    if not pr:
        return {}
    ens = pr["ensemble"]
    runs = pr["models"]
    levels = [(lv["eps"], "linf") for lv in next(iter(runs.values()))["linf"]] if runs else []
    if runs and next(iter(runs.values())).get("l2"):
        levels.append((next(iter(runs.values()))["l2"]["eps"], "l2"))
    rows = []
    for m, r in runs.items():
        cells = [m, r["structure"], "–" if r["seed"] is None else str(r["seed"]),
                 f"kept at {r['matched_to']}" if r["matched_to"] else "", str(r["n"]), est(_pct(r["clean_correct"]))]
        for eps, norm in levels:
            lv = next((x for x in r["linf"] if x["eps"] == eps), None) if norm == "linf" else r["l2"]
            cells.append(est(_pct(lv["robust"])) if lv else "–")
        fooled = {}
        for lv in r["linf"][:1]:
            for mem in lv["members"]:
                fooled[mem["label"]] = fooled.get(mem["label"], 0) + mem["fooled"]
        cells += [", ".join(f"{k} {v}" for k, v in fooled.items()), fmt(r["seconds"], 1)]
        rows.append(cells)
    columns = ["model", "structure", "seed", "matched", "images", "clean (majority of R) [95% CI]",
               *[f"robust, {'L∞' if n == 'linf' else 'L2'} ε = {e:g} [95% CI]" for e, n in levels],
               f"fooled at ε = {ens['eps']:g}, by member", "attack s"]
    t1 = {"title": f"Primary endpoint: robust accuracy under the strongest ensemble (L∞ ε = {ens['eps']:g}, declared "
                   "before the run)", "columns": columns, "rows": rows, "comparisons": [],
          "verdict": f"Robust = correct under a majority of R clean evaluations and not fooled by any member "
                     f"(AutoAttack 'rand' with {ens['restarts']} restarts, PGD with EOT {ens['pgd_eot']}, Square with "
                     f"{ens['square_queries']} queries{', transfers from every model of the other kind' if ens['transfer'] else ''}"
                     f"), each member on the images still robust; a larger ε runs on the images robust at the smaller. "
                     f"Why ε = {ens['eps']:g}: {ens['reason']}"}
    effect_rows = []
    for e in [pr["primary"], *pr["secondary"]]:
        if not e:
            continue
        pairs = "; ".join(f"{p['generative']} − {p['discriminative']} {diff_ci(p)}"
                          + (f" (b {p['b']}, c {p['c']})" if p.get("b") is not None else "") for p in e["pairs"])
        effect_rows.append([("PRIMARY: " if e["primary"] else "") + e["title"], pairs, diff_ci(e), str(e["n_images"]),
                            str(e["n_pairs"]), p_text(e["p"]), "–" if e["primary"] else p_text(e["p_adjusted"]),
                            e["test"] or "–", detectable_text(e)])
    t2 = {"title": "Effects: generative − discriminative, per replicate pair and pooled (two-level bootstrap interval "
                   "over pairs and images)", "columns": [
                       "endpoint", "per pair (difference [95% CI])", "pooled [95% CI]", "images", "pairs", "p",
                       "p (Holm, secondary family)", "test", "detectable (80% power)"],
          "rows": effect_rows, "comparisons": [],
          "verdict": "The primary endpoint is tested alone; the secondary endpoints form one pre-declared family, "
                     "Holm-corrected together. Per pair: exact McNemar on the discordant images (b: robust on the "
                     "generative model only, c: on the discriminative only). Pooled: Wilcoxon signed-rank over images "
                     "of the summed pair differences (one pair: its McNemar p)."}
    return {"primary": t1, "effects": t2}


def primary_limits(results: dict) -> str:
    pr = results.get("primary") or {}
    runs = pr.get("models") or {}
    if not runs:
        return ""
    seeds = sorted({r["seed"] for r in runs.values() if r["seed"] is not None and not r["matched_to"]})
    n = min(r["n"] for r in runs.values())
    return (f"The primary endpoint ran on {len(runs)} models (training seeds {', '.join(map(str, seeds)) or '–'}) on the "
            f"same first {n} test images; its interval covers seeds and images, but {len(seeds)} seeds give a coarse "
            "picture of the between-seed variance. The ensemble is the strongest this project has, not a proof of "
            "robustness: an adaptive attack designed for these models could lower every robust accuracy.")
