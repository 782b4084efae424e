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
from genrobust.attacks import ATTACKS, make_attack
from genrobust.errors import GenrobustError, validation_message
from genrobust.evaluation import accuracy
from genrobust.models import STRUCTURES, ModelConfig
from genrobust.robustness import run_attack
from genrobust.settings import get_settings
from genrobust.store import ModelStore
from genrobust.training import TrainConfig, Trainer, check_structure, default_name


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
    opt("--hidden", "hidden", mf, type=_positive)
    opt("--latent-dim", "latent_dim", mf, type=_positive)
    opt("--enc-channels", "enc_channels", mf, type=_channels)
    opt("--dec-channels", "dec_channels", mf, type=_channels)
    opt("--dropout", "dropout", mf, type=float)
    t.add_argument("--restart", action="store_true", help="discard an unfinished run of the same name")
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
    a = sub.add_parser("attack", help="attack a stored model and measure success, robustness and time",
                       description="Run an attack on a split and report clean/adversarial accuracy, success rate "
                                   "(judged with fresh model noise), robustness rho, perturbation norms, time "
                                   "and queries. Attack parameters: see `genrobust attacks`.")
    a.add_argument("name", help="stored model name")
    a.add_argument("--attack", required=True, help="one of: " + ", ".join(ATTACKS))
    a.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help="attack parameter, repeatable (e.g. --param eps=0.1 --param p=inf)")
    a.add_argument("--split", choices=["test", "validation"], default="test")
    a.add_argument("--limit", type=_positive, default=100, help="number of images (default 100)")
    a.add_argument("--seed", type=_nonneg_int, default=0)
    a.add_argument("--eval-samples", type=_positive, default=10, help="K of the fresh evaluation (default 10)")
    a.add_argument("--batch-size", type=_positive, default=100)
    a.add_argument("--json", action="store_true", help="print the report (without per-image arrays) as JSON")
    a.add_argument("--out", help="directory for report.json and the images as .npz")
    a.add_argument("--no-progress", action="store_true")

    sub.add_parser("attacks", help="list the attacks and their parameters")
    return p


def cmd_train(args) -> int:
    structure = check_structure(args.structure)
    given = {k: v for k, v in vars(args).items() if v is not None}
    model_config = ModelConfig(structure=structure, **{k: given[k] for k in ModelConfig.model_fields
                                                        if k in given and k != "structure"})
    train_config = TrainConfig(**{k: given[k] for k in TrainConfig.model_fields if k in given})
    name = args.name or default_name(structure, train_config.dataset)
    trainer = Trainer(model_config, train_config, name, progress=not args.no_progress, restart=args.restart)
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
        print(f"{c['name']:<22}{c['structure']:<10}{c['kind']:<16}{c.get('epochs', '-'):>7}{fmt(val):>9}"
              f"{fmt(test):>10}{c.get('wall_seconds', 0):>9.0f}")
    return 0


def cmd_evaluate(args) -> int:
    store = ModelStore()
    model, card = store.load(args.name)
    split = data.load(card.get("dataset", {}).get("name", "fashion-mnist"), args.split, args.limit)
    r = accuracy(model, split.images, split.labels, args.samples, args.seed, progress=not args.no_progress,
                 bf16=args.bf16)
    out = {"model": args.name, "split": args.split, "n": r["n"], "samples": r["samples"],
           "accuracy": r["accuracy"], "seconds": round(r["seconds"], 3)}
    if args.json:
        print(json.dumps(out))
    else:
        print(f"{args.name} on {args.split}: accuracy {r['accuracy']:.4f} (n={r['n']}, K={r['samples']}, "
              f"seed={args.seed}) in {r['seconds']:.1f}s ({r['n'] / r['seconds']:.0f} images/s)")
    return 0


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
    model, card = ModelStore().load(args.name)
    split = data.load(card.get("dataset", {}).get("name", "fashion-mnist"), args.split, args.limit)
    report, adv = run_attack(model, attack, split.images, split.labels, seed=args.seed,
                             eval_samples=args.eval_samples, batch_size=args.batch_size, model_name=args.name,
                             progress=not args.no_progress)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        stem = f"{args.name}-{args.attack}"
        (out / f"{stem}.json").write_text(report.model_dump_json(indent=2))
        np.savez_compressed(out / f"{stem}.npz", images=split.images.numpy(), adversarial=adv.numpy(),
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
    q = f"  queries {s['queries']}" if s["queries"] is not None else ""
    print(f"  {s['seconds']:.1f}s ({s['seconds_per_image']:.3f}s per image){q}")
    return 0


def cmd_attacks(args) -> int:
    for name, cls in ATTACKS.items():
        kind = "black-box" if cls.black_box else "white-box"
        print(f"{name} ({kind}{', targeted' if cls.targeted_ok else ''}): {(cls.__doc__ or '').strip().split(chr(10))[0]}")
        for field, info in cls.Params.model_fields.items():
            print(f"    {field} = {info.default!r}  {info.description or ''}")
    return 0


COMMANDS = {"train": cmd_train, "models": cmd_models, "evaluate": cmd_evaluate, "attack": cmd_attack,
            "attacks": cmd_attacks}


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


if __name__ == "__main__":
    sys.exit(main())
