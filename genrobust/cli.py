"""The ``genrobust`` command: a thin layer over the library. Errors a user can fix are printed as one
line (exit 2), never as a traceback."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from pydantic import ValidationError

from genrobust import data
from genrobust.device import DEVICE_HELP, check_device_spec, resolve_device
from genrobust.attacks import ATTACKS, make_attack
from genrobust.attacks.transfer import check_inner
from genrobust.detection import DEFAULT_FPR, DETECTORS, check_detector, fit_detectors, load_detector
from genrobust.errors import GenrobustError, validation_message
from genrobust.evaluation import accuracy
from genrobust.models import STRUCTURES, ModelConfig
from genrobust.robustness import run_attack
from genrobust.settings import get_settings
from genrobust.store import ModelStore
from genrobust.study import PRESETS, STUDY_ATTACKS, STUDY_MODELS, StudyConfig, reproduce
from genrobust.study.primary import Ensemble
from genrobust.replicates import base_models, format_sets, replicate_sets, train_replicates
from genrobust.training import TrainConfig, Trainer, check_structure, default_name
from genrobust.transfer import transfer_matrix


def _at_least(minimum: int):
    """argparse type: an integer >= minimum, with a one-line error otherwise."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {text}")
        return value
    return parse


_positive, _nonneg_int = _at_least(1), _at_least(0)


def _channels(text: str) -> tuple[int, int, int]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or min(values) < 1:
        raise argparse.ArgumentTypeError(f"channels must be three positive integers like 32,64,64, got {text!r}")
    return values  # type: ignore[return-value]


def _device_spec(text: str) -> str:
    try:
        return check_device_spec(text)
    except GenrobustError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _add_device(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", type=_device_spec, default=None,
                        help=f"where to compute: {DEVICE_HELP} (default: GENROBUST_DEVICE, else auto)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="genrobust", description=__doc__.split(".")[0] + ".")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser("train", help="train one of the seven structures with the ELBO",
                       description="Train a structure; the best epoch by validation accuracy is kept in the "
                                   "store. Interrupted runs resume when the same command is run again.")
    t.add_argument("structure", help=f"one of {', '.join(STRUCTURES)} (case-insensitive)")
    t.add_argument("--name", help="store name (default fmnist-<structure>)")
    # Defaults and help come from TrainConfig / ModelConfig: the schema is declared once, there.
    tf, mf = TrainConfig.model_fields, ModelConfig.model_fields

    def opt(flag, field, fields, **kw):
        info = fields[field]
        t.add_argument(flag, dest=field, default=None, help=f"{info.description or ''} (default {info.default})", **kw)

    opt("--epochs", "epochs", tf, type=_positive)
    opt("--batch-size", "batch_size", tf, type=_positive)
    opt("--lr", "lr", tf, type=float)
    opt("--limit", "limit", tf, type=_positive)
    opt("--seed", "seed", tf, type=_nonneg_int)
    opt("--schedule", "schedule", tf, choices=["constant", "cosine"])
    opt("--dataset", "dataset", tf, choices=sorted(data.DATASETS))
    opt("--val-samples", "val_samples", tf, type=_positive)
    opt("--test-limit", "test_limit", tf, type=_positive)
    opt("--kl-warmup", "kl_warmup", tf, type=_nonneg_int)
    opt("--keep-at", "keep_at", tf, type=float)
    opt("--hidden", "hidden", mf, type=_positive)
    opt("--latent-dim", "latent_dim", mf, type=_positive)
    opt("--enc-channels", "enc_channels", mf, type=_channels)
    opt("--dec-channels", "dec_channels", mf, type=_channels)
    opt("--dropout", "dropout", mf, type=float)
    t.add_argument("--replicates", type=_positive, default=None,
                   help="train a replicate set: seeds --seed .. --seed+N-1 of this recipe, named NAME, NAME-s1, "
                        "...; trained members are kept, unfinished ones resume (default: one model)")
    t.add_argument("--restart", action="store_true", help="discard an unfinished run of the same name")
    _add_device(t)
    t.add_argument("--no-progress", action="store_true")

    m = sub.add_parser("models", help="list stored models with their cards")
    m.add_argument("--json", action="store_true", help="print the full cards as JSON")

    e = sub.add_parser("evaluate", help="accuracy of a stored model with K importance samples")
    e.add_argument("name")
    e.add_argument("--split", choices=["test", "validation"], default="test")
    e.add_argument("--limit", type=_positive)
    e.add_argument("--samples", type=_positive, default=10, help="K importance samples (default 10)")
    e.add_argument("--seed", type=_nonneg_int, default=0)
    e.add_argument("--bf16", action="store_true", help="bf16 autocast (about 2x faster on AVX512-BF16 CPUs)")
    e.add_argument("--json", action="store_true")
    e.add_argument("--no-progress", action="store_true")
    _add_device(e)
    a = sub.add_parser("attack", help="attack a stored model and measure success, robustness and time",
                       description="Run an attack on a split and report clean/adversarial accuracy, success rate "
                                   "(judged with fresh model noise), robustness rho, perturbation norms, time "
                                   "and queries. Attack parameters: see `genrobust attacks`.")
    a.add_argument("name", help="stored model name")
    a.add_argument("--attack", required=True, help="one of: " + ", ".join(ATTACKS))
    a.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help="attack parameter, repeatable (e.g. --param eps=0.1 --param p=inf); a transfer's inner "
                        "attack as --param attack=pgd --param params.eps=0.05 (or params='{\"eps\": 0.05}')")
    _add_attack_run(a)
    a.add_argument("--json", action="store_true", help="print the report (without per-image arrays) as JSON")
    a.add_argument("--out", help="directory for report.json and the images as .npz")
    a.add_argument("--no-progress", action="store_true")
    _add_device(a)

    sub.add_parser("attacks", help="list the attacks and their parameters")

    tr = sub.add_parser("transfer", help="transfer matrix: an attack crafted on each model, judged on every model",
                        description="Craft a white-box attack on each of the models (the diagonal: the white-box "
                                    "run) and judge those same adversarials on every other model with its own fresh "
                                    "evaluations; prints robust accuracy per (source, target) cell.")
    tr.add_argument("--models", required=True,
                    help="comma-separated stored names or short structure names (dfz = fmnist-dfz), or 'all' "
                         "(every stored model but replicates of another and accuracy-matched checkpoints)")
    tr.add_argument("--attack", default="pgd", help="the white-box attack crafted on each source (default pgd)")
    tr.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                    help="parameter of the attack, repeatable (e.g. --param eps=0.1)")
    _add_attack_run(tr)
    tr.add_argument("--json", action="store_true", help="print the matrix (every cell's report summary) as JSON")
    tr.add_argument("--no-progress", action="store_true")
    _add_device(tr)

    f = sub.add_parser("fit-detectors", help="fit the logit, marginal and KL detectors of a model",
                       description="Fit every detector on the training split (correctly classified images, true "
                                   "labels), calibrate alpha on the validation split to the target false-positive "
                                   "rate, and save them beside the model (detectors/<name>.json).")
    f.add_argument("name", help="stored model name (DFZ, GFZ, GFY, GBZ or GBY structure)")
    f.add_argument("--limit", type=_positive, help="use only the first N images of each split")
    f.add_argument("--samples", type=_positive, default=10, help="K importance samples (default 10)")
    f.add_argument("--seed", type=_nonneg_int, default=0)
    f.add_argument("--fpr", type=float, default=DEFAULT_FPR, help="target false-positive rate (default 0.05)")
    f.add_argument("--no-progress", action="store_true")
    _add_device(f)

    d = sub.add_parser("detect", help="flag adversarial images with a fitted detector",
                       description="Run a detector on images from an .npz file (as written by `genrobust attack "
                                   "--out`: its 'adversarial' array, else 'images') or on a dataset split.")
    d.add_argument("name", help="stored model name")
    d.add_argument("--detector", default="logit", help="logit (default), marginal, kl or all")
    d.add_argument("--input", help=".npz file with an 'adversarial' or 'images' array (N,1,28,28) in [0,1]")
    d.add_argument("--split", choices=["test", "validation"], default="test", help="when no --input is given")
    d.add_argument("--limit", type=_positive, default=100, help="images of the split (default 100)")
    d.add_argument("--seed", type=_nonneg_int, default=0)
    d.add_argument("--json", action="store_true", help="print per-image results as JSON")
    _add_device(d)

    r = sub.add_parser("reproduce", help="run the whole study: tables with intervals, comparisons, curves, report",
                       description="The primary endpoint, declared before the run: robust accuracy under the "
                                   "strongest ensemble (AutoAttack 'rand' with restarts, PGD with EOT, Square, "
                                   "transfers) at L-infinity eps 0.02 on replicate models (--replicates seeds of each "
                                   "named model, missing ones trained once and kept), per seed pair and pooled, with "
                                   "exact tests; the paper's tables beside it as secondary reproduction; the masking "
                                   "checks. Writes DIR/report.md, DIR/report.html, DIR/results.json and "
                                   "DIR/figures/*.png. Attacks run in chunks cached in DIR/cache: an interrupted run "
                                   "resumes at its first unfinished chunk.")
    r.add_argument("--models", default=",".join(STUDY_MODELS),
                   help="comma-separated stored names, short structure names (dfz = fmnist-dfz) or 'all' "
                        "(every stored model but replicates of another and accuracy-matched checkpoints; "
                        "default: fmnist-dfz,fmnist-gfz)")
    r.add_argument("--attacks", default=",".join(STUDY_ATTACKS), help="comma-separated attack names or 'all' "
                   f"(default: {','.join(STUDY_ATTACKS)})")
    r.add_argument("--preset", choices=list(PRESETS), default=None,
                   help="image counts per attack: default (about two hours on a 2-core CPU), quick (about 5 min), "
                        "gpu (the full test set for every attack but ZOO; the default with a CUDA --device)")
    r.add_argument("--quick", action="store_true", help="the same as --preset quick")
    r.add_argument("--limit", type=_positive, default=None,
                   help="cap every image count of the preset at N (attacks, curves, clean images)")
    r.add_argument("--images", action="append", default=[], metavar="ATTACK=N",
                   help="test images for one attack (or 'adaptive'), repeatable; overrides the preset")
    sf = StudyConfig.model_fields  # defaults and help come from the study's config: declared once, there
    r.add_argument("--seed", type=_nonneg_int, default=None, help=f"{sf['seed'].description} (default {sf['seed'].default})")
    r.add_argument("--out", default=None, help=f"output folder (default ./{sf['out'].default})")
    r.add_argument("--param", action="append", default=[], metavar="ATTACK.KEY=VALUE",
                   help="attack parameter override, repeatable (e.g. --param fgsm.eps=0.2)")
    r.add_argument("--clean-limit", type=_positive, default=None,
                   help="clean test images for false-positive rates and ROC negatives (default: the preset's)")
    r.add_argument("--fit-limit", type=_positive, help="training images when detectors must be fitted first "
                   "(default: the whole training split)")
    r.add_argument("--chunk-size", type=_positive, default=None,
                   help=f"images per cached chunk (default {sf['chunk_size'].default})")
    r.add_argument("--no-adaptive", action="store_true", help="skip the detector-aware PGD table")
    r.add_argument("--no-curves", action="store_true", help="skip the robustness curves and the FGS reconstruction")
    r.add_argument("--masking", action=argparse.BooleanOptionalAction, default=None,
                   help="run the gradient-masking checks on every named model (a report section; a flag limits the "
                        "answer; sizes from --preset, capped by --limit; see `genrobust check`). Default: on, off "
                        "with --quick")
    r.add_argument("--masking-preset", choices=list(PRESETS), default=None,
                   help="sizes of the masking checks (default: the study's --preset)")
    r.add_argument("--replicates", type=_positive, default=None,
                   help=sf["replicates"].description)
    r.add_argument("--no-train", action="store_true", help="never train missing replicates: an error names them")
    r.add_argument("--no-matched", action="store_true", help="leave the accuracy-matched checkpoints out")
    r.add_argument("--primary", action="append", default=[], metavar="KEY=VALUE",
                   help="primary endpoint's ensemble, repeatable (e.g. --primary eps=0.05 --primary square_queries=5000"
                        "; fields: " + ", ".join(f for f in Ensemble.model_fields if f != "reason") + ")")
    _add_device(r)

    ck = sub.add_parser("check", help="gradient-masking checks of a stored model: each a pass or a flag, explained",
                        description="Six checks that robust accuracy comes from the model, not from attacks that "
                                    "fail: (a) unbounded budgets fool every image, (b) more steps, EOT draws and "
                                    "restarts never help the model, (c) PGD <= FGSM, (d) white-box <= Square and "
                                    "transfer, (e) robust accuracy falls with eps, (f) minimal attacks fool every "
                                    "image. Each comes with robust accuracies (Wilson 95% intervals, n) and exact "
                                    "one-sided McNemar tests on the same images.")
    ck.add_argument("name", help="stored model name")
    ck.add_argument("--preset", choices=["default", "quick", "gpu"], default=None,
                    help="sizes: default (about 17 min per model on a 2-core CPU), quick (a look), gpu (full size; "
                         "the default with a CUDA --device)")
    ck.add_argument("--limit", type=_positive, default=None, help="cap every check's image count at N")
    ck.add_argument("--checks", default="a,b,c,d,e,f", help="comma-separated letters of the checks to run (default all)")
    ck.add_argument("--transfer-source", default=None,
                    help="stored model the transfer attack of (d) crafts on (default: the other of fmnist-dfz and "
                         "fmnist-gfz; 'none' to skip)")
    ck.add_argument("--param", action="append", default=[], metavar="ATTACK.KEY=VALUE",
                    help="attack parameter override, repeatable (e.g. --param square.queries=1000); the checks' "
                         "budgets win")
    ck.add_argument("--seed", type=_nonneg_int, default=0)
    ck.add_argument("--json", action="store_true", help="print the report as JSON")
    ck.add_argument("--no-progress", action="store_true")
    _add_device(ck)

    sv = sub.add_parser("serve", help="run the web service (jobs in-process by default; Redis if configured)",
                        description="Serve the HTTP API (docs at /docs). Without GENROBUST_REDIS_URL jobs run "
                                    "in-process on an embedded SQLite broker; with it, start workers with "
                                    "`celery -A worker worker`. See docs/service.md.")
    sv.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    sv.add_argument("--port", type=_positive, default=8000, help="port (default 8000)")
    sv.add_argument("--no-access-log", action="store_true", help="do not log every request")
    return p


def cmd_train(args) -> int:
    structure = check_structure(args.structure)
    given = {k: v for k, v in vars(args).items() if v is not None}
    model_config = ModelConfig(structure=structure, **{k: given[k] for k in ModelConfig.model_fields
                                                        if k in given and k != "structure"})
    train_config = TrainConfig(**{k: given[k] for k in TrainConfig.model_fields if k in given})
    name = args.name or default_name(structure, train_config.dataset)
    if args.replicates is not None:
        return _train_replicates(model_config, train_config, name, args)
    trainer = Trainer(model_config, train_config, name, progress=not args.no_progress, restart=args.restart,
                      device=resolve_device(args.device))
    if trainer.resumed_from:
        print(f"resuming {name} after epoch {trainer.resumed_from}")
    try:
        card = trainer.fit()
    except KeyboardInterrupt:
        print(f"\ninterrupted: {name} is saved after epoch {trainer.state['epoch']}; run the same command "
              "again to resume", file=sys.stderr)
        return 130
    print(f"{name}: {card['epochs']} epochs in {card['wall_seconds']:.0f}s, best epoch {card['best_epoch']}, "
          f"validation accuracy {card['validation_accuracy']['accuracy']:.4f}, "
          f"test accuracy {card['test_accuracy']['accuracy']:.4f} (K={card['test_accuracy']['samples']}, "
          f"n={card['test_accuracy']['n']})")
    return 0


def _train_replicates(model_config, train_config, name, args) -> int:
    try:
        cards = train_replicates(model_config, train_config, args.replicates, name, progress=not args.no_progress,
                                 restart=args.restart, device=resolve_device(args.device))
    except KeyboardInterrupt:
        print(f"\ninterrupted: the set {name} keeps its trained seeds and the last epoch of the one in progress; "
              "run the same command again to resume", file=sys.stderr)
        return 130
    for c in cards:
        print(f"{c['name']}: seed {c['training']['seed']}, best epoch {c['best_epoch']}, validation accuracy "
              f"{c['validation_accuracy']['accuracy']:.4f}, test accuracy {c['test_accuracy']['accuracy']:.4f}")
    for line in format_sets([s for s in replicate_sets() if any(m["name"] == name for m in s.members)]):
        print(line)
    return 0


def cmd_models(args) -> int:
    cards = ModelStore().cards()
    if args.json:
        print(json.dumps(cards, indent=2))
        return 0
    if not cards:
        print(f"no models stored (store: {get_settings().model_dir}); train one with `genrobust train GFZ`")
        return 0
    print(f"{'name':<22}{'structure':<10}{'kind':<16}{'epochs':>7}{'val acc':>9}{'test acc':>10}{'train s':>9}")
    for c in cards:
        val = c.get("validation_accuracy", {}).get("accuracy")
        test = c.get("test_accuracy", {}).get("accuracy")
        fmt = lambda v: f"{v:.4f}" if isinstance(v, float) else "-"  # noqa: E731
        print(f"{c['name']:<22}{c['structure']:<10}{c.get('kind', '-'):<16}{c.get('epochs', '-'):>7}{fmt(val):>9}"
              f"{fmt(test):>10}{c.get('wall_seconds', 0):>9.0f}")
    sets = format_sets(replicate_sets())
    if sets:
        print("\nreplicate sets (one structure and recipe, training seeds differ):")
        print("\n".join(sets))
    return 0


def cmd_evaluate(args) -> int:
    store = ModelStore()
    model, card = store.load(args.name, resolve_device(args.device))
    split = data.load(data.dataset_of(card), args.split, args.limit)
    r = accuracy(model, split.images, split.labels, args.samples, args.seed, progress=not args.no_progress,
                 bf16=args.bf16)
    out = {"model": args.name, "split": args.split, "n": r["n"], "samples": r["samples"],
           "accuracy": r["accuracy"], "seconds": round(r["seconds"], 3), "device": str(r["device"])}
    if args.json:
        print(json.dumps(out))
    else:
        print(f"{args.name} on {args.split}: accuracy {r['accuracy']:.4f} (n={r['n']}, K={r['samples']}, "
              f"seed={args.seed}) in {r['seconds']:.1f}s ({r['n'] / r['seconds']:.0f} images/s, {r['device']})")
    return 0


def _add_attack_run(p: argparse.ArgumentParser) -> None:
    """The options of a measured attack run (attack, transfer): images, seed, fresh evaluations, batch."""
    p.add_argument("--split", choices=["test", "validation"], default="test")
    p.add_argument("--limit", type=_positive, default=100, help="number of images (default 100)")
    p.add_argument("--seed", type=_nonneg_int, default=0)
    p.add_argument("--eval-samples", type=_positive, default=10, help="K of the fresh evaluation (default 10)")
    p.add_argument("--eval-draws", type=_positive, default=10,
                   help="R fresh evaluations behind misclassification probability and robust accuracy (default 10)")
    p.add_argument("--batch-size", type=_positive, default=100)


def _parse_params(pairs: list[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise GenrobustError(f"--param takes KEY=VALUE, got {pair!r}")
        out[key.strip().replace("-", "_")] = value.strip()
    return out


def cmd_attack(args) -> int:
    attack = make_attack(args.attack, _parse_params(args.param))  # validates before any heavy work
    model, card = ModelStore().load(args.name, resolve_device(args.device))
    split = data.load(data.dataset_of(card), args.split, args.limit)
    report, adv = run_attack(model, attack, split.images, split.labels, seed=args.seed,
                             eval_samples=args.eval_samples, batch_size=args.batch_size, model_name=args.name,
                             progress=not args.no_progress, eval_draws=args.eval_draws)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        stem = f"{args.name}-{args.attack}"
        (out / f"{stem}.json").write_text(report.model_dump_json(indent=2))
        np.savez_compressed(out / f"{stem}.npz", images=split.images.numpy(), adversarial=adv.cpu().numpy(),
                            labels=split.labels.numpy(), pred_before=np.array(report.per_image["pred_before"]),
                            pred_after=np.array(report.per_image["pred_after"]))
    s = report.summary()
    if args.json:
        print(json.dumps(s))
        return 0
    fmt = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
    print(f"{args.name} / {args.attack} {s['params']} on {s['n']} {args.split} images (seed {args.seed})")
    print(f"  clean accuracy {fmt(s['clean_accuracy'])}  adversarial accuracy {fmt(s['adversarial_accuracy'])}  "
          f"success rate {fmt(s['success_rate'])}  robustness rho {fmt(s['robustness'])}")
    print(f"  L2 mean/median {fmt(s['mean_l2'])}/{fmt(s['median_l2'])}  Linf {fmt(s['mean_linf'])}/"
          f"{fmt(s['median_linf'])}  L0 {fmt(s['mean_l0'])}/{fmt(s['median_l0'])}")
    if s.get("robust_accuracy") is not None:
        print(f"  robust accuracy {fmt(s['robust_accuracy'])}  unfooled residual {fmt(s['residual'])} "
              f"(of the correctly classified, by R = {s['eval_draws']} fresh evaluations)")
    q = f"  queries {s['queries']}" if s["queries"] is not None else ""
    print(f"  {s['seconds']:.1f}s ({s['seconds_per_image']:.3f}s per image){q}")
    return 0


def cmd_attacks(args) -> int:
    for name, cls in ATTACKS.items():
        kind = "black-box" if cls.black_box else "white-box"
        print(f"{name} ({kind}{', targeted' if cls.targeted_ok else ''}): {(cls.__doc__ or '').strip().split(chr(10))[0]}")
        for field, info in cls.Params.model_fields.items():
            default = "(required)" if info.is_required() else repr(info.get_default(call_default_factory=True))
            print(f"    {field} = {default}  {info.description or ''}")
    return 0


def cmd_fit_detectors(args) -> int:
    rec = fit_detectors(ModelStore(), args.name, samples=args.samples, seed=args.seed, limit=args.limit,
                        fpr=args.fpr, progress=not args.no_progress, device=resolve_device(args.device))
    print(f"{args.name}: detectors fitted on {rec['n_train']} training images, calibrated on {rec['n_calibrate']} "
          f"validation images to FPR {rec['fpr']} in {rec['seconds']:.0f}s")
    for name, d in rec["detectors"].items():
        print(f"  {name:<9} alpha {d['alpha']:.3f}  fitted on {d['info']['n_fit']} correctly classified images, "
              f"calibration FPR {d['info']['calibration_fpr']:.4f}")
    return 0


def cmd_detect(args) -> int:
    names = list(DETECTORS) if args.detector == "all" else [check_detector(args.detector)]
    store = ModelStore()
    model, card = store.load(args.name, resolve_device(args.device))
    detectors = {n: load_detector(store, args.name, n, model=model) for n in names}
    if args.input:
        try:
            with np.load(args.input) as z:
                key = "adversarial" if "adversarial" in z else "images"
                images = torch.from_numpy(z[key])
        except (OSError, ValueError, KeyError) as exc:
            raise GenrobustError(f"cannot read images from {args.input}: {exc}") from None
        source = f"{args.input}[{key}]"
    else:
        split = data.load(data.dataset_of(card), args.split, args.limit)
        images, source = split.images, f"{args.split} split, first {len(split)}"
    out = {}
    for n, det in detectors.items():
        r = det.detect(images, seed=args.seed)
        out[n] = {"is_adversarial": r.is_adversarial.tolist(), "scores": r.score.tolist(),
                  "thresholds": r.threshold.tolist(), "predictions": r.prediction.tolist()}
        if not args.json:
            print(f"{args.name} / {n} detector on {source}: {int(r.is_adversarial.sum())} of {len(r.score)} flagged "
                  f"({r.is_adversarial.double().mean().item():.4f})")
    if args.json:
        print(json.dumps(out))
    return 0


def cmd_transfer(args) -> int:
    store = ModelStore()
    names = _resolve_models(args.models, store)
    params = _parse_params(args.param)
    datasets = sorted({data.dataset_of(store.card(n)) for n in names})
    if len(datasets) > 1:
        raise GenrobustError(f"the models were trained on different datasets ({', '.join(datasets)}): a transfer "
                             "matrix needs one")
    make_attack(check_inner(args.attack), params)  # a white-box attack and its parameters, before any work
    split = data.load(datasets[0], args.split, args.limit)
    m = transfer_matrix(names, split.images, split.labels, args.attack, params, seed=args.seed,
                        eval_samples=args.eval_samples, eval_draws=args.eval_draws, batch_size=args.batch_size,
                        store=store, device=resolve_device(args.device), progress=not args.no_progress)
    if args.json:
        print(json.dumps(m.model_dump(mode="json")))
        return 0
    fmt = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
    width = max(16, *(len(n) + 2 for n in names))
    print(f"{m.attack} {m.params} crafted on each source (row), judged on each target (column): robust accuracy "
          f"on {m.n} {args.split} images (n = {m.n} per cell, seed {args.seed}, R = {args.eval_draws})")
    corner = "source \\ target"
    print(f"{corner:<{width}}" + "".join(f"{t:>{width}}" for t in names))
    table = m.table("robust_accuracy")
    for s in names:
        print(f"{s:<{width}}" + "".join(f"{fmt(table[s][t]) + ('*' if s == t else ' '):>{width}}" for t in names))
    print(f"{'clean accuracy':<{width}}" + "".join(f"{fmt(m.cell(t, t)['clean_accuracy']) + ' ':>{width}}"
                                                  for t in names))
    print("* white-box (crafted on the target itself)")
    return 0


def _resolve_models(text: str, store: ModelStore) -> list[str]:
    stored = store.names()
    if text.strip() == "all":
        return base_models(store.cards())
    names = []
    for tok in filter(None, (t.strip() for t in text.split(","))):
        name = tok if tok in stored else f"fmnist-{tok.lower()}" if f"fmnist-{tok.lower()}" in stored else None
        if name is None:
            raise GenrobustError(f"unknown model {tok!r} (stored: {', '.join(stored) or 'none'})")
        names.append(name)
    return names


def cmd_reproduce(args) -> int:
    store = ModelStore()
    params: dict[str, dict[str, str]] = {}
    for key, value in _parse_params(args.param).items():
        attack, dot, field = key.partition(".")
        if not dot or not field:
            raise GenrobustError(f"--param takes ATTACK.KEY=VALUE, got {key}={value}")
        params.setdefault(attack.replace("_", "-"), {})[field] = value
    # 'all': every attack that runs with its defaults, and those (transfer: a source) whose --param were given
    attacks = ([a for a, cls in ATTACKS.items() if a in params or not any(
                   f.is_required() for f in cls.Params.model_fields.values())]
               if args.attacks.strip() == "all" else [a.strip() for a in args.attacks.split(",") if a.strip()])
    limits = {}
    for item in args.images:
        name, eq, n = item.partition("=")
        if not eq or not n.strip().isdigit():
            raise GenrobustError(f"--images takes ATTACK=N, got {item!r}")
        limits[name.strip()] = int(n)
    device = resolve_device(args.device)
    if args.quick and args.preset not in (None, "quick"):
        raise GenrobustError(f"--quick and --preset {args.preset} contradict each other")
    preset = "quick" if args.quick else args.preset or ("gpu" if device.type == "cuda" else "default")
    given = {k: getattr(args, k) for k in ("seed", "out", "chunk_size", "limit", "clean_limit", "fit_limit")
             if getattr(args, k) is not None}  # the rest take StudyConfig's defaults
    if args.replicates is not None:
        given["replicates"] = args.replicates
    if args.masking_preset is not None:
        given["masking_preset"] = args.masking_preset
    config = StudyConfig(models=_resolve_models(args.models, store), attacks=attacks, params=params, limits=limits,
                         preset=preset, adaptive=not args.no_adaptive, curves=not args.no_curves,
                         masking=args.masking, train_missing=not args.no_train, matched=not args.no_matched,
                         primary=_parse_params(args.primary), **given)
    try:
        results = reproduce(config, store, device=device)
    except KeyboardInterrupt:
        print(f"\ninterrupted: finished chunks are cached in {config.out / 'cache'}; run the same command again "
              "to resume", file=sys.stderr)
        return 130
    print(f"wrote {config.out}/report.md, report.html, results.json and {len(results['figures']) + len(results['examples'])} "
          f"figures in {results['seconds']:.0f}s")
    print(f"Answer ({results['answer']['strength']}): {results['answer']['answer']}")
    return 0


def _attack_params(pairs: list[str]) -> dict[str, dict[str, str]]:
    """--param ATTACK.KEY=VALUE pairs as {attack: {key: value}}."""
    params: dict[str, dict[str, str]] = {}
    for key, value in _parse_params(pairs).items():
        attack, dot, field = key.partition(".")
        if not dot or not field:
            raise GenrobustError(f"--param takes ATTACK.KEY=VALUE, got {key}={value}")
        params.setdefault(attack.replace("_", "-"), {})[field] = value
    return params


def cmd_check(args) -> int:
    import textwrap

    from genrobust.masking import MaskingConfig, check_masking, images_needed  # scipy, statsmodels: on use

    store = ModelStore()
    card = store.card(args.name)  # an unknown model fails before any work
    device = resolve_device(args.device)
    preset = args.preset or ("gpu" if device.type == "cuda" else "default")
    checks = [c.strip() for c in args.checks.split(",") if c.strip()]
    source = args.transfer_source
    if source is None:
        pair = [m for m in STUDY_MODELS if m != args.name and m in store.names()]
        source = pair[0] if pair else None
    elif source.lower() == "none":
        source = None
    overrides = _attack_params(args.param)
    base = MaskingConfig.from_preset(preset, limit=args.limit)
    config = MaskingConfig.from_preset(preset, limit=args.limit, seed=args.seed, transfer_source=source,
                                       params={**base.params, **{a: {**base.params.get(a, {}), **kv}
                                                                 for a, kv in overrides.items()}})
    n = images_needed(config, checks)  # validates the letters too
    model, _ = store.load(args.name, device)
    test = data.load(data.dataset_of(card), "test", limit=n)
    report = check_masking(model, test.images, test.labels, config, model_name=args.name, checks=checks,
                           progress=not args.no_progress)
    if args.json:
        print(json.dumps(report.model_dump(mode="json")))
        return 0
    print(f"{args.name}: gradient-masking checks (preset {preset}, seed {args.seed}, {report.device}, "
          f"{'stochastic' if report.stochastic else 'deterministic'} model; {len(report.runs)} attack runs in "
          f"{report.seconds:.0f} s)")
    width = max(len(r[0]) for r in report.rows()) + 2
    print(f"{'check':<{width}}{'status':<9}key numbers")
    for check, status, numbers, explanation in report.rows():
        print(f"{check:<{width}}{status.upper() if status == 'flag' else status:<9}{numbers}")
        print(textwrap.fill(explanation, 110, initial_indent="    ", subsequent_indent="    "))
    flagged = report.flagged
    print(f"{len(flagged)} of {len(report.checks)} checks flagged{': ' + ', '.join(flagged) if flagged else ''}.")
    return 0


SERVICE_MODULES = {"fastapi", "starlette", "uvicorn", "celery", "kombu", "sqlalchemy", "redis", "PIL"}  # [service]


def cmd_serve(args) -> int:
    try:  # the service's dependencies are an extra, loaded only for this command
        from app.main import serve
    except ImportError as exc:
        missing = (exc.name or "").split(".")[0]
        if missing not in SERVICE_MODULES:
            raise
        raise GenrobustError(f"`genrobust serve` needs the service's dependencies ({missing} is not installed): "
                             "pip install 'genrobust[service]'") from None

    return serve(args.host, args.port, access_log=not args.no_access_log)


COMMANDS = {"train": cmd_train, "models": cmd_models, "evaluate": cmd_evaluate, "attack": cmd_attack,
            "attacks": cmd_attacks, "transfer": cmd_transfer, "fit-detectors": cmd_fit_detectors, "detect": cmd_detect,
            "reproduce": cmd_reproduce, "check": cmd_check, "serve": cmd_serve}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if get_settings().threads:
            torch.set_num_threads(get_settings().threads)
        return COMMANDS[args.command](args)
    except GenrobustError as exc:
        print(f"genrobust: error: {exc}", file=sys.stderr)
        return 2
    except ValidationError as exc:
        print(f"genrobust: error: {validation_message(exc)}", file=sys.stderr)
        return 2
    except torch.OutOfMemoryError:
        print(f"genrobust: error: out of memory on {args.device or get_settings().device}: lower --batch-size or "
              "--limit, or use another --device", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
