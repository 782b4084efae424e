"""genrobust's attacks side by side with torchattacks and ART, in one run, on the same images.

    .venv/bin/pip install -e '.[bench]'
    .venv/bin/python benchmarks/bench_attacks.py [--models fmnist-dfz,fmnist-gfz] [--n 200] [--n-slow 50]
                                                 [--n-zoo 10] [--only FGSM,CW] [--json OUT]

The peers attack the stored model wrapped as a plain logits module (K = 10 importance samples, noise from
a generator reset to the same seed before each tool runs); genrobust's attacks get the classifier itself
with the same K and a generator seeded the same way, so FGSM gets the same gradients and the same noise in
both tools. "model forward" is the time spent inside the wrapped module (peers only). Success is judged for every tool by the same fresh evaluation (independent
noise, K = 10) over the images classified correctly; quality is success rate and median L2 of the
successful perturbations. Times are wall seconds in this process, so compare ratios within one run.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from torch import nn

from genrobust import data
from genrobust.attacks import make_attack
from genrobust.robustness import EVAL_SEED_OFFSET, predict
from genrobust.store import ModelStore

SEED = 0


class Wrapped(nn.Module):
    """A genrobust classifier as a plain images -> logits module with resettable noise, counting queries."""

    def __init__(self, model, samples: int = 10):
        super().__init__()
        self.model, self.samples = model, samples
        self.reset(SEED)

    def reset(self, seed: int) -> None:
        self.gen = torch.Generator().manual_seed(seed)
        self.queries, self.model_seconds = 0, 0.0

    def forward(self, x):
        self.queries += x.shape[0]
        t0 = time.perf_counter()
        out = self.model.logits(x.float(), self.samples, self.gen)
        self.model_seconds += time.perf_counter() - t0  # forward only; backward time lands outside
        return out


def judge(model, x, y, adv) -> dict:
    gen = torch.Generator().manual_seed(SEED + EVAL_SEED_OFFSET)
    before, after = predict(model, x, 10, gen), predict(model, adv, 10, gen)
    correct = before == y
    success = correct & (after != y)
    l2 = (adv - x).flatten(1).norm(dim=1)[success]
    return {"success_rate": (success.sum() / correct.sum().clamp_min(1)).item(),
            "median_l2": float(l2.median()) if len(l2) else None}


def ours(name, params):
    def run(wrapped, x, y):
        # genrobust attacks get the classifier itself, as a user passes it (white-box attacks may use its
        # structure); the attacker's generator is seeded like the wrapper, so FGSM sees the same noise.
        out = make_attack(name, params)(wrapped.model, x, y, seed=SEED)
        return out.adversarial, (int(out.queries.sum()) if out.queries is not None else None)
    return run


def torchattacks_attack(build):
    def run(wrapped, x, y):
        import torchattacks  # noqa: F401  (optional benchmark dependency)
        adv = build(wrapped)(x, y)
        return adv.detach(), None
    return run


def art_attack(build):
    def run(wrapped, x, y):
        from art.estimators.classification import PyTorchClassifier
        clf = PyTorchClassifier(model=wrapped, loss=nn.CrossEntropyLoss(), input_shape=(1, 28, 28), nb_classes=10,
                                clip_values=(0.0, 1.0), device_type="cpu")
        adv = build(clf).generate(x.numpy(), y=np.eye(10, dtype=np.float32)[y.numpy()])
        return torch.from_numpy(adv).float(), wrapped.queries
    return run


def cases(n: int, n_slow: int, n_zoo: int):
    import torchattacks
    from art.attacks.evasion import CarliniL2Method, ZooAttack
    cw = {"c": 1.0, "kappa": 0.0, "steps": 50, "binary_steps": 3, "lr": 0.01}
    zoo = {"steps": 20, "coords": 64, "c": 10.0, "lr": 0.05, "h": 1e-3}
    small = n_slow
    return [
        ("FGSM eps=0.1", n,
         [("genrobust", ours("fgsm", {"eps": 0.1})),
          ("torchattacks", torchattacks_attack(lambda m: torchattacks.FGSM(m, eps=0.1)))]),
        ("PGD Linf eps=0.1, 20 steps", n,
         [("genrobust", ours("pgd", {"eps": 0.1, "alpha": 0.01, "steps": 20, "random_start": False})),
          ("torchattacks", torchattacks_attack(
              lambda m: torchattacks.PGD(m, eps=0.1, alpha=0.01, steps=20, random_start=False)))]),
        ("DeepFool L2, overshoot 0.02, 50 iter", small,
         [("genrobust", ours("deepfool", {"p": 2, "overshoot": 0.02, "max_iter": 50})),
          ("genrobust, vmapped backward", ours("deepfool", {"p": 2, "overshoot": 0.02, "max_iter": 50,
                                                             "jacobian": "vmap"})),
          ("genrobust, per-class backward loop", ours("deepfool", {"p": 2, "overshoot": 0.02, "max_iter": 50,
                                                                    "jacobian": "loop"})),
          ("torchattacks", torchattacks_attack(lambda m: torchattacks.DeepFool(m, steps=50, overshoot=0.02)))]),
        (f"CW L2, c=1, {cw['binary_steps']}x{cw['steps']} steps", small,
         [("genrobust", ours("cw", cw)),
          ("ART CarliniL2Method", art_attack(lambda clf: CarliniL2Method(
              clf, confidence=0.0, learning_rate=cw["lr"], binary_search_steps=cw["binary_steps"],
              max_iter=cw["steps"], initial_const=cw["c"], batch_size=small, verbose=False))),
          ("torchattacks CW (no binary search)", torchattacks_attack(
              lambda m: torchattacks.CW(m, c=cw["c"], kappa=0, steps=cw["binary_steps"] * cw["steps"], lr=cw["lr"])))]),
        (f"ZOO, {zoo['steps']} iterations x {zoo['coords']} coords", n_zoo,
         [("genrobust", ours("zoo", zoo | {"early_stop": False})),
          ("ART ZooAttack", art_attack(lambda clf: ZooAttack(
              clf, confidence=0.0, learning_rate=zoo["lr"], max_iter=zoo["steps"], binary_search_steps=1,
              initial_const=zoo["c"], abort_early=False, use_resize=False, use_importance=False,
              nb_parallel=zoo["coords"], batch_size=1, variable_h=zoo["h"], verbose=False)))]),
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="fmnist-dfz,fmnist-gfz")
    ap.add_argument("--n", type=int, default=200, help="images for FGSM and PGD; slower attacks use fewer")
    ap.add_argument("--n-slow", type=int, default=50, help="images for DeepFool and CW")
    ap.add_argument("--n-zoo", type=int, default=10, help="images for ZOO")
    ap.add_argument("--only", help="comma-separated case prefixes, e.g. FGSM,ZOO")
    ap.add_argument("--json")
    args = ap.parse_args()
    test = data.load("fashion-mnist", "test", args.n)
    rows = []
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; first {args.n} test images")
    for name in args.models.split(","):
        model, _ = ModelStore().load(name)
        wrapped = Wrapped(model)
        for case, n, tools in cases(args.n, args.n_slow, args.n_zoo):
            if args.only and not any(case.startswith(p) for p in args.only.split(",")):
                continue
            x, y = test.images[:n], test.labels[:n]
            results = {}
            for tool, run in tools:
                wrapped.reset(SEED)
                t0 = time.perf_counter()
                adv, queries = run(wrapped, x, y)
                seconds = time.perf_counter() - t0
                results[tool] = adv
                r = {"model": name, "attack": case, "tool": tool, "n": n, "seconds": seconds,
                     "model_forward_seconds": wrapped.model_seconds,
                     "queries": queries if queries is not None else None, **judge(model, x, y, adv)}
                rows.append(r)
                ml2 = "-" if r["median_l2"] is None else f"{r['median_l2']:.3f}"
                q = "" if queries is None else f"  queries {queries}"
                fwd = f"{wrapped.model_seconds:6.2f}s" if wrapped.queries else f"{'-':>7}"
                print(f"{name:<11} {case:<40} {tool:<36} n={n:<4} {seconds:8.2f}s (model forward {fwd})  "
                      f"success {r['success_rate']:.3f}  median L2 {ml2}{q}", flush=True)
            base = rows[-len(tools)]
            for r in rows[-len(tools) + 1:]:
                print(f"{'':<11} {'':<40} speed-up of genrobust over {r['tool']}: "
                      f"{r['seconds'] / base['seconds']:.1f}x", flush=True)
            if case.startswith("FGSM"):
                diff = (results["genrobust"] - results["torchattacks"]).abs().max().item()
                print(f"{'':<11} {'':<40} max |genrobust - torchattacks| = {diff:.2e}", flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=2)


if __name__ == "__main__":
    main()
