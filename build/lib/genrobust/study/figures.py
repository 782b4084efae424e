"""The study's figures: example adversarial images per model, ROC curves per model x attack, and one plot per
question over the budget (robust accuracy against eps in L-infinity and L2, minimal perturbations,
detection rate against eps), every model of the run on each, with 95% interval bands."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from genrobust.data import CLASS_NAMES  # noqa: E402

FASHION = CLASS_NAMES["fashion-mnist"]


def _label(c: int) -> str:
    return f"{c} {FASHION[c]}" if 0 <= c < len(FASHION) else str(c)


def _pick(entries: dict[str, Any], y: torch.Tensor) -> int:
    """The first correctly classified image that the most attacks fooled: an informative example."""
    n = len(y)
    best, best_count = 0, -1
    for i in range(n):
        if not all(e["pred_before"][i] == int(y[i]) for e in entries.values()):
            continue
        count = sum(bool(e["success"][i]) for e in entries.values())
        if count > best_count:
            best, best_count = i, count
        if count == len(entries):
            break
    return best


def examples(model_name: str, x: torch.Tensor, y: torch.Tensor, advs: dict[str, torch.Tensor],
             entries: dict[str, Any], folder: Path) -> dict[str, Any]:
    """One test image, its adversarial version and the perturbation under every attack (Figures 1-2)."""
    i = _pick(entries, y)
    x, advs = x.numpy(), {a: v.numpy() for a, v in advs.items()}  # matplotlib wants arrays, not tensors
    cols = len(advs) + 1
    fig, axes = plt.subplots(2, cols, figsize=(1.9 * cols, 4.7), squeeze=False)
    axes[0, 0].imshow(x[i, 0], cmap="gray", vmin=0, vmax=1)
    axes[0, 0].set_title(f"clean\ntrue {_label(int(y[i]))}\npred {_label(entries[next(iter(entries))]['pred_before'][i])}",
                         fontsize=7)
    axes[1, 0].axis("off")
    info = {"index": i, "label": int(y[i]), "attacks": {}}
    for j, (a, adv) in enumerate(advs.items(), start=1):
        eta = adv[i, 0] - x[i, 0]
        pred, l2 = entries[a]["pred_after"][i], float(np.linalg.norm(eta))
        axes[0, j].imshow(adv[i, 0], cmap="gray", vmin=0, vmax=1)
        axes[0, j].set_title(f"{a}\npred {_label(pred)}\n‖η‖₂ = {l2:.3f}", fontsize=7)
        lim = float(np.abs(eta).max()) or 1.0
        axes[1, j].imshow(eta, cmap="seismic", vmin=-lim, vmax=lim)
        axes[1, j].set_title(f"η (±{lim:.3f})", fontsize=7)
        info["attacks"][a] = {"prediction": pred, "l2": l2, "success": bool(entries[a]["success"][i])}
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"{model_name}: test image {i}", fontsize=9)
    fig.tight_layout()
    path = folder / f"examples-{model_name}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    info["file"] = f"figures/{path.name}"
    return info


def rocs(results: dict[str, Any], folder: Path) -> list[dict[str, str]]:
    """One ROC figure per model x attack, one curve per detector, AUC in the legend."""
    made = []
    for m, attacks in results["attacks"].items():
        for a, entry in attacks.items():
            det = entry.get("detection")
            if not det or not any(d["roc"] for d in det.values()):
                continue
            fig, ax = plt.subplots(figsize=(4, 4))
            for name, d in det.items():
                if d["roc"]:
                    ax.plot(d["roc"]["fpr"], d["roc"]["tpr"], label=f"{name} (AUC {d['auc']['value']:.3f})")
            ax.plot([0, 1], [0, 1], ":", color="gray", lw=0.8)
            ax.axvline(results["config"]["fpr"], color="gray", lw=0.6, ls="--")
            n = next(d["n_success"] for d in det.values() if d["roc"])
            ax.set(xlabel="false-positive rate (clean test images)", ylabel="detection rate (successful adversarials)",
                   title=f"{m} — {a} (n = {n})", xlim=(0, 1), ylim=(0, 1.01))
            ax.title.set_fontsize(9)
            ax.legend(fontsize=8, loc="lower right")
            fig.tight_layout()
            path = folder / f"roc-{m}-{a}.png"
            fig.savefig(path, dpi=110)
            plt.close(fig)
            made.append({"model": m, "attack": a, "file": f"figures/{path.name}"})
    return made


STYLES = {"fgsm": ":", "pgd": "--", "apgd": "-", "deepfool": "-", "cw": "--", "truncated-deepfool": "-.", "zoo": ":"}


def _band(ax, x, estimates, label, color, style):
    """A line of values with its 95% interval as a band (points without a value are skipped)."""
    pts = [(xi, e) for xi, e in zip(x, estimates) if e and e["value"] is not None]
    if not pts:
        return
    xs = [p[0] for p in pts]
    ax.plot(xs, [p[1]["value"] for p in pts], style, color=color, label=label, lw=1.4)
    ax.fill_between(xs, [p[1]["low"] for p in pts], [p[1]["high"] for p in pts], color=color, alpha=0.15, lw=0)


def _save(fig, ax, folder: Path, name: str, title: str, xlabel: str, ylabel: str) -> str:
    ax.set(xlabel=xlabel, ylabel=ylabel, ylim=(0, 1.01))
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="best")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = folder / f"{name}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return f"figures/{path.name}"


def curves(results: dict[str, Any], folder: Path) -> list[dict[str, str]]:
    """Robust accuracy against eps (L-infinity, L2), the fraction of images fooled within ||eta||_2 <= r, and
    the logit detector's rate at the configured FPR against eps: one figure each, every model on it."""
    made = []
    colors = {m: f"C{i}" for i, m in enumerate(results["models"])}
    curves_ = results.get("curves") or {}
    for norm, unit in (("linf", "L-infinity"), ("l2", "L2")):
        if not any(norm in c for c in curves_.values()):
            continue
        fig, ax = plt.subplots(figsize=(6, 4.2))
        for m, c in curves_.items():
            for a, pts in c.get(norm, {}).items():
                _band(ax, [p["eps"] for p in pts], [p["robust_accuracy"] for p in pts], f"{m} {a}", colors[m],
                      STYLES.get(a, "-"))
        made.append({"question": f"robust accuracy against the {unit} budget", "file": _save(
            fig, ax, folder, f"curve-robust-{norm}", f"Robust accuracy against the {unit} budget (95% bands)",
            f"eps ({unit})", "robust accuracy (majority of R fresh evaluations)")})
    minimal = (results.get("analysis") or {}).get("minimal") or {}
    if minimal:
        fig, ax = plt.subplots(figsize=(6, 4.2))
        for a, d in minimal.items():
            for m, est in d["models"].items():
                _band(ax, d["r"], est, f"{m} {a}", colors[m], STYLES.get(a, "-"))
        made.append({"question": "minimal perturbations", "file": _save(
            fig, ax, folder, "curve-minimal-l2", "Fraction of correctly classified images fooled within ||eta||_2 <= r",
            "r (L2)", "fooled (majority of R fresh evaluations)")})
    if any(p.get("detection_rate") for c in curves_.values() for pts in c.get("linf", {}).values() for p in pts):
        fig, ax = plt.subplots(figsize=(6, 4.2))
        for m, c in curves_.items():
            for a, pts in c.get("linf", {}).items():
                pts = [p for p in pts if p["eps"] > 0]
                _band(ax, [p["eps"] for p in pts], [p["detection_rate"] for p in pts], f"{m} {a}", colors[m],
                      STYLES.get(a, "-"))
        fpr = results["config"]["fpr"]
        made.append({"question": "detection against the budget", "file": _save(
            fig, ax, folder, "curve-detection-linf", f"Logit detector at {fpr:.0%} FPR against the L-infinity budget",
            "eps (L-infinity)", "detected (of successful adversarials)")})
    return made
