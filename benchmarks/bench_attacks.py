"""genrobust's attacks side by side with torchattacks and ART, in one run, on the same images.

    .venv/bin/pip install -e '.[bench]'
    .venv/bin/python benchmarks/bench_attacks.py [--models fmnist-dfz,fmnist-gfz] [--n 200] [--n-slow 50]
                                                 [--n-zoo 10] [--n-eot 200] [--eot 20] [--eot-steps 10] [--eot-eps 0.03]
                                                 [--only FGSM,CW,APGD,AutoAttack,EOT] [--json OUT]
                                                 [--device cuda] [--deadline SECONDS] [--skip DeepFool:torchattacks]

The peers attack the stored model wrapped as a plain logits module (K = 10 importance samples, noise from
a generator reset to the same seed before each tool runs); genrobust's attacks get the classifier itself
with the same K and a generator seeded the same way, so FGSM gets the same gradients and the same noise in
both tools. "model forward" is the time spent inside the wrapped module (peers only). Success is judged for every tool by the same fresh evaluation (independent
noise, K = 10) over the images classified correctly; quality is success rate and median L2 of the
successful perturbations. Times are wall seconds in this process (on a GPU after a synchronize), so
compare ratios within one run. Cases run one after another over the models, so a ``--deadline`` (no tool
starts after it) leaves every case it reached measured on both models; a tool that raises is reported
as an error row and the run goes on.

Robust metrics (issue 12): every adversarial is also evaluated under R = 10 further fresh draws (the same
evaluator stream): "robust acc" is the fraction of all n images whose adversarial a strict majority of them
classify correctly (lower = stronger attack), "p_mis" the mean misclassification probability over the
correctly classified images. The EOT cases (APGD-CE + EOT against torchattacks' APGD(eot_iter) and EOTPGD,
autoattack rand against torchattacks' AutoAttack(version='rand')) use the same eps, steps and eot for every
tool; torchattacks' AutoAttack is given our steps and eot on its two APGD members.
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
from genrobust import seeding
from genrobust.robustness import predict, predict_draws
from genrobust.store import ModelStore

SEED = 0
EVAL_DRAWS = 10


class Wrapped(nn.Module):
    """A genrobust classifier as a plain images -> logits module with resettable noise, counting queries."""

    def __init__(self, model, samples: int = 10, device: torch.device = torch.device("cpu")):
        super().__init__()
        self.model, self.samples, self.device = model, samples, device
        self.reset(SEED)

    def reset(self, seed: int) -> None:
        self.gen = torch.Generator(device=self.device).manual_seed(seed)
        self.queries, self.model_seconds = 0, 0.0

    def forward(self, x):
        self.queries += x.shape[0]
        t0 = time.perf_counter()
        out = self.model.logits(x.float(), self.samples, self.gen)
        self.model_seconds += time.perf_counter() - t0  # forward only; backward time lands outside
        return out


def judge(model, x, y, adv) -> dict:
    gen = seeding.generator(SEED, "evaluator", device=x.device)  # the stream run_attack judges with
    before, after = predict(model, x, 10, gen), predict(model, adv, 10, gen)
    correct = before == y
    success = correct & (after != y)
    l2 = (adv - x).flatten(1).norm(dim=1)[success]
    p_wrong = (predict_draws(model, adv, 10, EVAL_DRAWS, gen) != y).float().mean(0)
    # per-image vectors too, so two tools' rows can be compared with a paired test on the same images
    return {"correct_clean": correct.tolist(), "fooled_fresh": success.tolist(), "p_wrong": p_wrong.tolist(),
            "robust_accuracy": (p_wrong < 0.5).float().mean().item(),
            "p_misclassified": p_wrong[correct].mean().item() if correct.any() else None,
            "success_rate": (success.sum() / correct.sum().clamp_min(1)).item(),
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
                                clip_values=(0.0, 1.0), device_type="gpu" if x.is_cuda else "cpu")
        adv = build(clf).generate(x.cpu().numpy(), y=np.eye(10, dtype=np.float32)[y.cpu().numpy()])
        return torch.from_numpy(adv).float().to(x.device), wrapped.queries
    return run


def torchattacks_autoattack_rand(m, eps: float, steps: int, eot: int):
    import torchattacks
    aa = torchattacks.AutoAttack(m, norm="Linf", eps=eps, version="rand", n_classes=10, seed=SEED)
    for member in aa._autoattack.attacks:  # its two APGDs get the same budget as ours
        member.steps, member.eot_iter = steps, eot
    return aa


def torchattacks_autoattack(m, eps: float, version: str, steps: int | None = None, eot: int | None = None,
                            queries: int | None = None):
    """torchattacks' AutoAttack; its APGD members get our steps (and eot), its Square our query budget."""
    import torchattacks
    aa = torchattacks.AutoAttack(m, norm="Linf", eps=eps, version=version, n_classes=10, seed=SEED)
    for member in aa._autoattack.attacks:
        if steps is not None and hasattr(member, "steps"):
            member.steps = steps
        if eot is not None and hasattr(member, "eot_iter"):
            member.eot_iter = eot
        if queries is not None and hasattr(member, "n_queries"):
            member.n_queries = queries
    return aa


def aa_cases(args):
    """Square alone and the full AutoAttack (standard and rand) at each eps of --aa-eps (issue 21)."""
    import torchattacks
    q = args.square_queries
    out = [(f"Square Linf eps={args.square_eps}, {q} queries", args.n_square,
            [("genrobust square", ours("square", {"eps": args.square_eps, "queries": q})),
             ("torchattacks Square", torchattacks_attack(lambda m: torchattacks.Square(
                 m, norm="Linf", eps=args.square_eps, n_queries=q, n_restarts=1, seed=SEED)))])]
    for e in (float(v) for v in args.aa_eps.split(",")):
        out.append((f"AutoAttack standard Linf eps={e}", args.n_aa,
                    [("genrobust autoattack standard", ours("autoattack", {"eps": e, "steps": args.aa_steps})),
                     ("torchattacks AutoAttack standard", torchattacks_attack(
                         lambda m, e=e: torchattacks_autoattack(m, e, "standard", steps=args.aa_steps, queries=q)))]))
        out.append((f"AutoAttack rand Linf eps={e}, eot={args.eot}", args.n_aa,
                    [("genrobust autoattack rand", ours("autoattack", {"version": "rand", "eps": e,
                                                                       "steps": args.aa_steps, "eot": args.eot})),
                     ("torchattacks AutoAttack rand", torchattacks_attack(
                         lambda m, e=e: torchattacks_autoattack(m, e, "rand", steps=args.aa_steps, eot=args.eot)))]))
    return out


def cases(args):
    import torchattacks
    from art.attacks.evasion import CarliniL2Method, ZooAttack
    n, small, n_zoo, n_eot = args.n, args.n_slow, args.n_zoo, args.n_eot
    cw = {"c": 1.0, "kappa": 0.0, "steps": 50, "binary_steps": 3}  # each tool's own step rule: ours Adam at
    art_lr = 0.01  # its default lr 0.05, ART its line search from learning_rate 0.01 (its default)
    zoo = {"steps": 20, "coords": 64, "c": 10.0, "lr": 0.05, "h": 1e-3}
    plain = {"accept_draws": 1}  # no robust acceptance: the attack trusts its own single draw
    eps, steps, eot = args.eot_eps, args.eot_steps, args.eot
    apgd = {"eps": eps, "norm": "linf", "steps": steps, "loss": "ce"}
    return [
        ("FGSM eps=0.1", n,
         [("genrobust", ours("fgsm", {"eps": 0.1})),
          ("genrobust, eot=10", ours("fgsm", {"eps": 0.1, "eot": 10})),
          ("torchattacks", torchattacks_attack(lambda m: torchattacks.FGSM(m, eps=0.1)))]),
        ("PGD Linf eps=0.1, 20 steps", n,
         [("genrobust", ours("pgd", {"eps": 0.1, "alpha": 0.01, "steps": 20, "random_start": False})),
          ("torchattacks", torchattacks_attack(
              lambda m: torchattacks.PGD(m, eps=0.1, alpha=0.01, steps=20, random_start=False)))]),
        (f"APGD-CE Linf eps={eps}, {steps} steps, eot={eot}", n_eot,
         [("genrobust", ours("apgd", apgd | {"eot": eot})),
          ("genrobust, eot=1", ours("apgd", apgd)),
          ("torchattacks APGD(eot_iter)", torchattacks_attack(lambda m: torchattacks.APGD(
              m, norm="Linf", eps=eps, steps=steps, n_restarts=1, seed=SEED, loss="ce", eot_iter=eot))),
          ("torchattacks EOTPGD", torchattacks_attack(lambda m: torchattacks.EOTPGD(
              m, eps=eps, alpha=2.5 * eps / steps, steps=steps, eot_iter=eot, random_start=True)))]),
        (f"AutoAttack rand Linf eps={eps}, {steps} steps, eot={eot}", n_eot,
         [("genrobust autoattack rand", ours("autoattack", {"version": "rand", "eps": eps, "steps": steps,
                                                            "eot": eot})),
          ("torchattacks AutoAttack rand", torchattacks_attack(
              lambda m: torchattacks_autoattack_rand(m, eps, steps, eot)))]),
        ("DeepFool L2, overshoot 0.02", small,
         [("genrobust, defaults (200 iter, R=10)", ours("deepfool", {"p": 2, "overshoot": 0.02})),
          ("genrobust, 50 iter (the earlier default)", ours("deepfool", {"p": 2, "overshoot": 0.02, "max_iter": 50})),
          ("genrobust, acceptance R=20", ours("deepfool", {"p": 2, "overshoot": 0.02, "accept_draws": 20})),
          ("genrobust, plain (R=1), 50 iter", ours("deepfool", {"p": 2, "overshoot": 0.02, "max_iter": 50} | plain)),
          ("torchattacks, 50 steps", torchattacks_attack(lambda m: torchattacks.DeepFool(m, steps=50, overshoot=0.02)))]),
        ("Truncated-DeepFool L2", small,
         [("genrobust", ours("truncated-deepfool", plain)),
          ("genrobust, robust acceptance (default)", ours("truncated-deepfool", {}))]),
        (f"CW L2, c=1, {cw['binary_steps']}x{cw['steps']} steps", args.n_cw or small,
         [("genrobust, robust acceptance (default)", ours("cw", cw)),
          ("genrobust, + abort_early", ours("cw", cw | {"abort_early": True})),
          ("genrobust, plain (R=1)", ours("cw", cw | plain)),
          ("ART CarliniL2Method", art_attack(lambda clf: CarliniL2Method(
              clf, confidence=0.0, learning_rate=art_lr, binary_search_steps=cw["binary_steps"],
              max_iter=cw["steps"], initial_const=cw["c"], batch_size=small, verbose=False)))]),
        (f"ZOO, {zoo['steps']} iterations x {zoo['coords']} coords", n_zoo,
         [("genrobust", ours("zoo", zoo | plain)),
          ("genrobust, robust acceptance (default)", ours("zoo", zoo)),
          ("ART ZooAttack", art_attack(lambda clf: ZooAttack(
              clf, confidence=0.0, learning_rate=zoo["lr"], max_iter=zoo["steps"], binary_search_steps=1,
              initial_const=zoo["c"], abort_early=False, use_resize=False, use_importance=False,
              nb_parallel=zoo["coords"], batch_size=1, variable_h=zoo["h"], verbose=False)))]),
    ] + aa_cases(args)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="fmnist-dfz,fmnist-gfz")
    ap.add_argument("--n", type=int, default=200, help="images for FGSM and PGD; slower attacks use fewer")
    ap.add_argument("--n-slow", type=int, default=50, help="images for DeepFool and CW")
    ap.add_argument("--n-zoo", type=int, default=10, help="images for ZOO")
    ap.add_argument("--n-cw", type=int, help="images for CW (default: --n-slow)")
    ap.add_argument("--n-eot", type=int, default=200, help="images for APGD-CE + EOT and AutoAttack rand")
    ap.add_argument("--eot", type=int, default=20, help="noise draws per gradient in the EOT cases")
    ap.add_argument("--eot-steps", type=int, default=10, help="APGD iterations in the EOT cases (torchattacks' default)")
    ap.add_argument("--eot-eps", type=float, default=0.03, help="L-infinity eps of the EOT cases (at 0.1 DFZ keeps "
                                                                "no robust image, so every tool ties at 0)")
    ap.add_argument("--n-square", type=int, default=200, help="images for the Square case")
    ap.add_argument("--square-eps", type=float, default=0.1, help="L-infinity eps of the Square case")
    ap.add_argument("--square-queries", type=int, default=5000, help="query budget of Square (both tools; also "
                                                                      "the Square member of AutoAttack standard)")
    ap.add_argument("--n-aa", type=int, default=100, help="images for the full AutoAttack cases")
    ap.add_argument("--aa-eps", default="0.03,0.05,0.1", help="comma-separated eps of the AutoAttack cases")
    ap.add_argument("--aa-steps", type=int, default=100, help="APGD iterations of the AutoAttack members (both tools)")
    ap.add_argument("--only", help="comma-separated case prefixes, e.g. FGSM,ZOO")
    ap.add_argument("--skip", default="", help="semicolon-separated CASE:TOOL prefixes not to run (tool names "
                                               "contain commas), e.g. 'DeepFool:torchattacks;CW:ART'")
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (every tool runs there)")
    ap.add_argument("--deadline", type=float, help="seconds after which no further tool starts")
    ap.add_argument("--repeat", type=int, default=1, help="runs per tool; the median time is reported (on a GPU "
                                                          "a run of a few hundred images takes under a second)")
    ap.add_argument("--json")
    args = ap.parse_args()
    device = torch.device(args.device)
    start = time.perf_counter()
    test = data.load("fashion-mnist", "test", max(args.n, args.n_slow, args.n_zoo, args.n_eot, args.n_square,
                                                   args.n_aa))
    images, labels = test.images.to(device), test.labels.to(device)
    skip = [tuple(pair.strip().split(":", 1)) for pair in args.skip.split(";") if ":" in pair]
    rows = []
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"torch {torch.__version__}, {name}, {torch.get_num_threads()} threads; first n test images of each case")
    models = {m: ModelStore().load(m, device)[0] for m in args.models.split(",")}
    for case, n, tools in cases(args):
        if args.only and not any(case.startswith(p) for p in args.only.split(",")):
            continue
        x, y = images[:n], labels[:n]
        for name, model in models.items():
            wrapped = Wrapped(model, device=device)
            case_rows, results = [], {}
            for tool, run in tools:
                if any(case.startswith(c) and tool.startswith(t) for c, t in skip):
                    continue
                if args.deadline and time.perf_counter() - start > args.deadline:
                    print(f"{name:<11} {case:<40} {tool:<40} not run (deadline)", flush=True)
                    continue
                times = []
                try:
                    for _ in range(args.repeat):  # same seeds every time, so every run returns the same images
                        wrapped.reset(SEED)
                        sync(device)
                        t0 = time.perf_counter()
                        adv, queries = run(wrapped, x, y)
                        sync(device)
                        times.append(time.perf_counter() - t0)
                except Exception as exc:  # one tool's failure must not lose the others' rows
                    print(f"{name:<11} {case:<40} {tool:<40} ERROR {type(exc).__name__}: {exc}", flush=True)
                    rows.append({"model": name, "attack": case, "tool": tool, "n": n, "error": repr(exc)})
                    continue
                seconds = float(np.median(times))
                results[tool] = adv
                r = {"model": name, "attack": case, "tool": tool, "n": n, "seconds": seconds, "runs": times,
                     "device": str(device),
                     "model_forward_seconds": wrapped.model_seconds,
                     "queries": queries if queries is not None else None, **judge(model, x, y, adv)}
                rows.append(r)
                case_rows.append(r)
                ml2 = "-" if r["median_l2"] is None else f"{r['median_l2']:.3f}"
                q = "" if queries is None else f"  queries {queries}"
                fwd = f"{wrapped.model_seconds:6.2f}s" if wrapped.queries else f"{'-':>7}"
                print(f"{name:<11} {case:<40} {tool:<40} n={n:<4} {seconds:8.2f}s (model forward {fwd})  "
                      f"success {r['success_rate']:.3f}  p_mis {r['p_misclassified'] or 0:.3f}  "
                      f"robust acc {r['robust_accuracy']:.3f}  median L2 {ml2}{q}", flush=True)
                if args.json:  # after every tool, so an interrupted run keeps what it measured
                    with open(args.json, "w") as fh:
                        json.dump(rows, fh, indent=2)
            if case_rows and case_rows[0]["tool"] == tools[0][0]:
                base = case_rows[0]
                for r in case_rows[1:]:
                    if not r["tool"].startswith("genrobust"):
                        print(f"{'':<11} {'':<40} speed-up of genrobust over {r['tool']}: "
                              f"{r['seconds'] / base['seconds']:.1f}x", flush=True)
            if case.startswith("FGSM") and {"genrobust", "torchattacks"} <= results.keys():
                diff = (results["genrobust"] - results["torchattacks"]).abs().max().item()
                print(f"{'':<11} {'':<40} max |genrobust - torchattacks| = {diff:.2e}", flush=True)


if __name__ == "__main__":
    main()
