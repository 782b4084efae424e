"""Tables (with the study's published figures and a verdict each) and the Markdown / HTML report."""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

from genrobust.store import atomic_write
from genrobust.study import published as pub

DETECTORS = ("logit", "marginal", "kl")


def fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}g}" if abs(v) < 1e-3 and v != 0 else f"{v:.{digits}f}"
    return str(v)


def _pair_models(results: dict) -> tuple[str | None, str | None]:
    """The first DFZ and the first GFZ model of the run: the pair the study compares."""
    by = {}
    for m, info in results["models"].items():
        by.setdefault(info["structure"], m)
    return by.get("DFZ"), by.get("GFZ")


def _count(results: dict, metric, better) -> tuple[int, int] | None:
    """For how many attacks GFZ's metric is 'better' than DFZ's (both present and defined)."""
    d, g = _pair_models(results)
    if not (d and g):
        return None
    wins = total = 0
    for a in results["attacks"][d]:
        vd, vg = metric(results["attacks"][d][a]), metric(results["attacks"][g][a])
        if vd is None or vg is None:
            continue
        total += 1
        wins += bool(better(vg, vd))
    return wins, total


NEEDS_PAIR = "No verdict: the run needs a DFZ and a GFZ model to compare."


def _verdict(counts, holds: str, study: str, about: str = "the conclusion") -> str:
    if counts is None:
        return NEEDS_PAIR
    wins, total = counts
    if total == 0:
        return "No verdict: no attack has a defined value for both DFZ and GFZ."
    word = "holds" if wins * 2 > total else ("is mixed" if wins * 2 == total else "does not hold")
    return f"{holds} for {wins} of {total} attacks: {about} {word} on our numbers ({study})."


def tables(results: dict) -> dict[str, Any]:
    models = list(results["models"])
    attacks = list(next(iter(results["attacks"].values()), {}))
    d, g = _pair_models(results)
    t: dict[str, Any] = {}

    rows = []
    for m, info in results["models"].items():
        rows.append([m, info["structure"], fmt(info["test_accuracy"]), fmt(info["validation_accuracy"]),
                     f"{fmt(info['clean_accuracy_here'])} (n = {info['n_clean']})",
                     fmt(pub.ACCURACY.get(info["structure"]))])
    if d and g:
        acc = lambda m: results["models"][m]["test_accuracy"] or results["models"][m]["clean_accuracy_here"]  # noqa: E731
        v1 = (f"DFZ {fmt(acc(d))} vs GFZ {fmt(acc(g))}: the discriminative model is "
              f"{'more' if acc(d) > acc(g) else 'not more'} accurate (study: DFZ 0.8891 > GFZ 0.8081).")
    else:
        v1 = NEEDS_PAIR
    t["table1"] = {"title": "Table 1: accuracy (K = 10)", "columns": ["model", "structure", "test acc (card)",
                   "validation acc (card)", "clean acc, images used here", "study"], "rows": rows, "verdict": v1}

    def per_attack(key, title, published, digits=4, extra=None):
        rows = []
        for a in attacks:
            rows.append([a] + [fmt(results["attacks"][m][a].get(key), digits) for m in models]
                        + [pub.pair(published, a)])
        return {"title": title, "columns": ["attack", *models, "study (DFZ / GFZ)"], "rows": rows}

    t["table2"] = per_attack("seconds_per_image", "Table 2: runtime, seconds per image", pub.RUNTIME, 3)
    t["table2"]["verdict"] = _verdict(_count(results, lambda e: e["seconds_per_image"], lambda gv, dv: gv > dv),
                                      "GFZ is slower to attack than DFZ", "study: slower for 4 of 5",
                                      about="the study's ordering")
    # success from one fresh evaluation beside the robust metrics from R more (reports cached before they
    # existed show "–")
    rows = []
    for a in attacks:
        e = {m: results["attacks"][m][a] for m in models}
        rows.append([a] + [fmt(e[m].get("success_rate")) for m in models]
                    + [fmt(e[m].get("misclassification_probability")) for m in models]
                    + [fmt(e[m].get("robust_accuracy")) for m in models] + [pub.pair(pub.SUCCESS, a)])
    t["table3"] = {"title": "Table 3: success rate (one fresh-noise evaluation, over correctly classified images), "
                            "misclassification probability (mean over the same images of the fraction of R further "
                            "fresh evaluations that misclassify) and robust accuracy (all images; correct under a "
                            "majority of the R evaluations)",
                   "columns": ["attack", *(f"{m} success" for m in models),
                               *(f"{m} P(misclassified)" for m in models),
                               *(f"{m} robust acc" for m in models), "study success (DFZ / GFZ)"],
                   "rows": rows}
    robust_count = _count(results, lambda e: e.get("misclassification_probability"), lambda gv, dv: gv < dv)
    t["table3"]["verdict"] = " ".join([
        _verdict(_count(results, lambda e: e["success_rate"], lambda gv, dv: gv < dv),
                 "Attacks succeed less often on GFZ than on DFZ", "study: more often on GFZ for DeepFool and FGS"),
        _verdict(robust_count, "By the misclassification probability over R fresh evaluations, attacks fool GFZ "
                 "less than DFZ", "not in the study") if robust_count and robust_count[1] else ""]).strip()
    t["table4"] = per_attack("robustness", "Table 4: robustness ρ = mean ‖η‖₂ / ‖x‖₂ over successful images",
                             pub.ROBUSTNESS)
    t["table4"]["verdict"] = _verdict(_count(results, lambda e: e["robustness"], lambda gv, dv: gv > dv),
                                      "GFZ needs larger perturbations (higher ρ) than DFZ",
                                      "study: higher ρ for GFZ under DeepFool and FGS")

    rows = []
    for a in attacks:
        for m in models:
            det = results["attacks"][m][a].get("detection")
            if not det:
                rows.append([a, m, "n/a (no density)", "n/a", "n/a", "–", "–", "–", "–"])
                continue
            lg = det["logit"]
            study = pub.DETECTION.get(a)
            s = results["models"][m]["structure"]
            study_v = fmt(study[0 if s == "DFZ" else 1]) if study and s in ("DFZ", "GFZ") else "–"
            rows.append([a, m] + [fmt(det[x]["rate"]) for x in DETECTORS]
                        + [str(lg["n_success"]), " / ".join(fmt(det[x]["fpr"], 3) for x in DETECTORS),
                           " / ".join(fmt(det[x]["auc"], 3) for x in DETECTORS), study_v])
    t["table5"] = {"title": f"Table 5: detection rate at {results['config']['fpr']:.0%} FPR over successful "
                   "adversarial examples", "columns": ["attack", "model", "logit", "marginal", "KL",
                   "successful n", "FPR reached on clean test (logit / marginal / KL)", "AUC (logit / marginal / KL)",
                   "study (logit)"], "rows": rows}

    def det_rate(e):
        det = e.get("detection")
        return det["logit"]["rate"] if det else None
    t["table5"]["verdict"] = _verdict(_count(results, det_rate, lambda gv, dv: gv > dv),
                                      "The logit detector catches more of GFZ's adversarials than DFZ's",
                                      "study: more for GFZ under DeepFool and FGS")

    rows = []
    for m, runs in results.get("adaptive", {}).items():
        for label, r in runs.items():
            rows.append([m, label, fmt(r["success_rate"]), fmt(r["detection_rate"]), fmt(r["evasion_rate"]),
                         f"{r['n_evade']} / {r['n_correct']}", fmt(r["median_l2"], 3)])
    ad = results.get("adaptive", {})
    if d in ad and g in ad:
        e = lambda m: ad[m]["detector-aware-pgd"]["evasion_rate"]  # noqa: E731
        if e(d) is None or e(g) is None:
            ev = "No verdict: DFZ or GFZ classified none of the attacked images correctly."
        else:
            ev = (f"The detector-aware attack fools and evades the logit detector on {fmt(e(d), 3)} of DFZ's and "
                  f"{fmt(e(g), 3)} of GFZ's correctly classified images: GFZ's detector "
                  f"{'survives better' if e(g) < e(d) else 'does not survive better'} under attack.")
    elif not results["config"]["adaptive"]:
        ev = "Not run (adaptive attack switched off)."
    else:
        ev = NEEDS_PAIR
    t["table6"] = {"title": "Table 6 (beyond the study): detector-aware PGD against the logit detector vs plain PGD, "
                   "same L∞ budget", "columns": ["model", "attack", "success rate", "detected (of successful)",
                   "succeeds and evades (of correct)", "evading n", "median ‖η‖₂"], "rows": rows, "verdict": ev}
    return t


# ---------------------------------------------------------------------------------------------- rendering
def _md_table(tab: dict) -> str:
    lines = ["| " + " | ".join(tab["columns"]) + " |", "|" + "---|" * len(tab["columns"])]
    lines += ["| " + " | ".join(r) + " |" for r in tab["rows"]]
    return "\n".join(lines)


def _figures(results: dict) -> list[tuple[str, str]]:
    figs = [(f"Figure {i}: {m}, one test image under every attack (top: adversarial, bottom: perturbation η)",
             ex["file"]) for i, (m, ex) in enumerate(results["examples"].items(), start=1)]
    start = len(figs) + 1
    figs += [(f"Figure {start + i}: ROC, {f['model']} — {f['attack']}", f["file"]) for i, f in enumerate(results["figures"])]
    return figs


def _intro(results: dict) -> str:
    c = results["config"]
    return (f"Models: {', '.join(c['models'])}. Attacks: {', '.join(c['attacks'])} (library defaults unless "
            f"overridden: {c['params'] or 'none'}). First {c['limit']} test images per attack, seed {c['seed']}, "
            f"success judged with fresh noise at K = {c['eval_samples']}; detectors calibrated to {c['fpr']:.0%} FPR "
            f"on the validation split, false-positive rates measured on {c['clean_limit']} clean test images. "
            f"Wall time {results['seconds']:.0f} s (torch {results['environment']['torch']}, "
            f"{results['environment']['threads']} threads){_cached_note(results)}.")


def _cached_note(results: dict) -> str:
    """Runtimes in Table 2 are those measured when each result was computed, even if it came from the cache."""
    entries = [e for m in results["attacks"].values() for e in m.values()]
    entries += [e for m in results.get("adaptive", {}).values() for e in m.values()]
    hits = sum(bool(e["cached"]) for e in entries)
    return f"; {hits} of {len(entries)} attack results came from the cache, with their original runtimes" if hits else ""


def write(results: dict, out: Path) -> None:
    tabs = results["tables"]
    md = ["# genrobust: generative vs discriminative classifiers under attack", "", _intro(results), ""]
    for tab in tabs.values():
        md += [f"## {tab['title']}", "", _md_table(tab), "", f"**Verdict.** {tab['verdict']}", ""]
    md += ["## Figures", ""]
    md += [f"**{cap}**\n\n![{cap}]({path})\n" for cap, path in _figures(results)]
    atomic_write(out / "report.md", lambda tmp: Path(tmp).write_text("\n".join(md)))

    esc = html.escape
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>genrobust report</title><style>",
             "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}",
             "table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:3px 8px;"
             "font-size:13px;text-align:right}td:first-child,th{text-align:left}th{background:#f3f3f3}",
             ".verdict{background:#eef6ee;padding:.4em .8em;border-left:4px solid #5a5}img{max-width:100%}",
             "figure{display:inline-block;margin:.5em;vertical-align:top}figcaption{font-size:12px;max-width:440px}",
             "</style></head><body>", "<h1>genrobust: generative vs discriminative classifiers under attack</h1>",
             f"<p>{esc(_intro(results))}</p>"]
    for tab in tabs.values():
        parts.append(f"<h2>{esc(tab['title'])}</h2><table><tr>"
                     + "".join(f"<th>{esc(c)}</th>" for c in tab["columns"]) + "</tr>")
        parts += ["<tr>" + "".join(f"<td>{esc(v)}</td>" for v in r) + "</tr>" for r in tab["rows"]]
        parts.append(f"</table><p class='verdict'><b>Verdict.</b> {esc(tab['verdict'])}</p>")
    parts.append("<h2>Figures</h2>")
    for cap, path in _figures(results):
        data = base64.b64encode((out / path).read_bytes()).decode()  # embedded: the file stands alone
        parts.append(f"<figure><img alt='{esc(cap)}' src='data:image/png;base64,{data}'>"
                     f"<figcaption>{esc(cap)}</figcaption></figure>")
    parts.append("</body></html>")
    atomic_write(out / "report.html", lambda tmp: Path(tmp).write_text("\n".join(parts)))
