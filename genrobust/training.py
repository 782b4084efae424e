"""ELBO training with per-epoch validation, best-checkpoint selection and resume.

After every epoch the whole run state (weights, Adam moments, history) is written atomically to
``<model_dir>/runs/<name>/``, so Ctrl-C or a kill loses at most the epoch in progress; running the same
command again resumes. The best epoch by validation accuracy is kept in the store under ``name``.
Randomness is derived from (seed, epoch) through ``genrobust.seeding``, so a resumed run draws the same
batches and noise as an uninterrupted one. Training runs on one device (``device``, default
``GENROBUST_DEVICE``): the data are moved there once, batches are indexed there and the latent noise comes
from a generator there. Initial weights and batch order are drawn on the CPU, so they are the same on every
device, and a run saved on one device resumes on another.
"""

from __future__ import annotations

import json
import math
import platform
import shutil
import sys
import time
from typing import Any, Callable, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from tqdm import tqdm

import genrobust
from genrobust import data as data_mod
from genrobust import seeding
from genrobust.device import device_info, resolve_device
from genrobust.errors import GenrobustError, validation_message
from genrobust.evaluation import accuracy
from genrobust.models import LatentClassifier, ModelConfig
from genrobust.store import CorruptStoreFile, ModelStore, check_name, load_tensors, save_tensors, write_json
from genrobust.fields import Dataset, Samples, Seed

CARD_SAMPLES = 10  # K for the accuracies in a model card


class TrainConfig(BaseModel):
    """Training hyper-parameters (the defaults of the study: Adam, lr 1e-3, batch 100)."""

    model_config = ConfigDict(extra="forbid")

    epochs: int = Field(20, ge=1, le=10_000, description="Passes over the training split.")
    batch_size: int = Field(100, ge=1, le=100_000, description="Images per Adam step.")
    lr: float = Field(1e-3, gt=0, le=1.0, description="Adam learning rate.")
    seed: Seed = Field(0,
                      description="Seeds initial weights, batch order, dropout and latent noise.")
    limit: int | None = Field(None, ge=1, description="Train on the first N training images only.")
    dataset: Dataset = Field("fashion-mnist", description="Dataset to train on.")
    val_samples: Samples = Field(1, description="K for the per-epoch validation used to pick the best epoch.")
    test_limit: int | None = Field(None, ge=1, description="Evaluate the card's test accuracy on N images.")
    schedule: Literal["constant", "cosine"] = Field(
        "constant", description="Learning rate: constant, or cosine decay from lr to 0 over all epochs.")
    kl_warmup: int = Field(0, ge=0, le=10_000, description="Epochs over which the KL term's weight rises "
                                                          "linearly from 0 to 1 (against posterior collapse, "
                                                          "e.g. for DBX); 0: the plain ELBO throughout.")
    keep_at: float | None = Field(
        None, gt=0, le=1, description="Also keep the first epoch whose validation accuracy at K = 10 (as in the "
                                      "cards) reaches this value, as <name>-at<value> (an accuracy-matched "
                                      "checkpoint); it does not change the training run.")


def matched_name(name: str, keep_at: float) -> str:
    """The store name of a run's accuracy-matched checkpoint (``fmnist-dfz-at0.865``)."""
    return check_name(f"{name}-at{keep_at:g}")


def _optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Adam state as flat tensors for safetensors plus the JSON-able rest (no pickle anywhere)."""
    sd = opt.state_dict()
    tensors = {f"opt.{i}.{k}": v for i, st in sd["state"].items() for k, v in st.items()
               if isinstance(v, torch.Tensor)}
    return tensors, {"param_groups": sd["param_groups"], "state_keys": {str(i): list(st) for i, st in sd["state"].items()}}


def _restore_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    state = {int(i): {k: tensors[f"opt.{i}.{k}"] for k in keys} for i, keys in meta["state_keys"].items()}
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def _versions() -> dict[str, str]:
    import torchvision
    return {"genrobust": genrobust.__version__, "torch": torch.__version__, "torchvision": torchvision.__version__,
            "python": platform.python_version()}


class Trainer:
    def __init__(self, model_config: ModelConfig, train_config: TrainConfig, name: str,
                 store: ModelStore | None = None, progress: bool = True, restart: bool = False,
                 on_epoch: Callable[[int, int], None] | None = None, device: str | torch.device | None = None):
        """``on_epoch(epoch, epochs)`` is called after each epoch's state is saved (the service reports
        progress and checks for cancellation there; an exception it raises leaves a resumable run).
        ``device``: a torch device or a device setting (default ``GENROBUST_DEVICE``)."""
        self.on_epoch = on_epoch
        self.device = resolve_device(device)
        self.name = check_name(name)
        self.store = store or ModelStore()
        self.model_config, self.cfg, self.progress = model_config, train_config, progress
        self.run_dir = self.store.root / "runs" / name
        if restart and self.run_dir.exists():
            shutil.rmtree(self.run_dir)
        torch.manual_seed(seeding.derive(train_config.seed, "weights"))  # initial weights, drawn on the CPU
        self.model = LatentClassifier(model_config).to(self.device)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=train_config.lr)
        self.state: dict[str, Any] = {"epoch": 0, "best_epoch": 0, "best_val": -1.0, "seconds": 0.0, "history": [],
                                      "matched_epoch": None}
        self.resumed_from = 0  # the epoch an unfinished run was resumed after (0: fresh run)
        self._maybe_resume()

    # ---------------------------------------------------------------- resume
    def _maybe_resume(self) -> None:
        meta_path = self.run_dir / "state.json"
        if not meta_path.is_file():
            return
        try:
            meta = json.loads(meta_path.read_text())
            meta["model_config"], meta["train_config"], meta["optimizer"], meta["state"]["epoch"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CorruptStoreFile(f"corrupt run state {meta_path} ({type(exc).__name__}: {exc}); use --restart "
                                   "(API: \"restart\": true) to discard the unfinished run") from None
        if meta["model_config"] != self.model_config.model_dump(mode="json"):
            raise GenrobustError(
                f"an unfinished run named {self.name!r} has a different architecture; use --restart to "
                f"discard it or pick another --name")
        if meta["train_config"] != self.cfg.model_dump(mode="json"):
            raise GenrobustError(
                f"an unfinished run named {self.name!r} used other training settings "
                f"({meta['train_config']}); use --restart to discard it or pick another --name")
        tensors = load_tensors(self.run_dir / "state.safetensors")
        self.model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        _restore_optimizer(self.opt, tensors, meta["optimizer"])
        self.state = meta["state"]
        self.resumed_from = self.state["epoch"]

    def _save_run_state(self) -> None:
        opt_tensors, opt_meta = _optimizer_tensors(self.opt)
        tensors = {**{f"model.{k}": v for k, v in self.model.state_dict().items()}, **opt_tensors}
        save_tensors(self.run_dir / "state.safetensors", tensors)
        write_json(self.run_dir / "state.json", {
            "model_config": self.model_config.model_dump(mode="json"),
            "train_config": self.cfg.model_dump(mode="json"),
            "optimizer": opt_meta, "state": self.state})

    # ---------------------------------------------------------------- card
    def _card(self, extra: dict[str, Any]) -> dict[str, Any]:
        s = self.model.structure
        return {
            "structure": s.name, "kind": s.kind, "factorisation": s.factorisation,
            "logits_have_density": s.logits_have_density,
            "config": self.model_config.model_dump(mode="json"),
            "training": self.cfg.model_dump(mode="json") | {"train_images": self.n_train},
            "dataset": {"name": self.cfg.dataset, "md5": data_mod.dataset_md5s(self.cfg.dataset)},
            "epochs": self.state["epoch"], "best_epoch": self.state["best_epoch"],
            "wall_seconds": round(self.state["seconds"], 1),
            "history": self.state["history"],
            "trained_on": device_info(self.device),
            "versions": _versions(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            **extra,
        }

    # ---------------------------------------------------------------- loop
    def fit(self) -> dict[str, Any]:
        cfg = self.cfg
        train = data_mod.load(cfg.dataset, "train", cfg.limit).to(self.device)  # moved once, indexed there
        val = data_mod.load(cfg.dataset, "validation").to(self.device)
        self.n_train = len(train)
        counts = torch.bincount(train.labels, minlength=self.model_config.num_classes).clamp_min(1)
        self.model.log_prior_y.copy_((counts / counts.sum()).log())
        if self.state["epoch"] >= cfg.epochs:
            print(f"{self.name}: run already has {self.state['epoch']} epochs; finishing")
        for epoch in range(self.state["epoch"] + 1, cfg.epochs + 1):
            t0 = time.perf_counter()
            loss, acc = self._epoch(train, epoch)
            val_acc = accuracy(self.model, val.images, val.labels, cfg.val_samples, seed=0)["accuracy"]
            self.state["seconds"] += time.perf_counter() - t0
            self.state["epoch"] = epoch
            self.state["history"].append({"epoch": epoch, "loss": round(loss, 3), "train_accuracy": round(acc, 4),
                                          "val_accuracy": round(val_acc, 4), "seconds": round(self.state["seconds"], 1)})
            best = val_acc > self.state["best_val"]
            if best:
                self.state["best_val"], self.state["best_epoch"] = val_acc, epoch
                self.store.save(self.name, self.model, self._card({"status": "training"}))
            if cfg.keep_at is not None and self.state.get("matched_epoch") is None:
                self._maybe_keep_matched(epoch, val)
            self._save_run_state()
            tqdm.write(f"epoch {epoch}/{cfg.epochs}: loss {loss:.2f}  train acc {acc:.4f}  "
                       f"val acc (K={cfg.val_samples}) {val_acc:.4f}{'  *best' if best else ''}  "
                       f"[{self.state['seconds']:.0f}s]", file=sys.stdout)
            sys.stdout.flush()
            if self.on_epoch is not None:
                self.on_epoch(epoch, cfg.epochs)
        return self._finish()

    def matched_validation(self, val: data_mod.Data) -> dict[str, Any]:
        """Validation accuracy at the card's K, which decides the matched checkpoint: the same measure as
        every card's validation accuracy (the per-epoch K = 1 figure of a DFZ is ~2 points lower)."""
        return accuracy(self.model, val.images, val.labels, CARD_SAMPLES, seed=0)

    def _maybe_keep_matched(self, epoch: int, val: data_mod.Data) -> None:
        """Until the target is reached, measure each epoch at the card's K; the first epoch that reaches it is
        saved as a complete model (validation and test accuracy at K = 10), so the run may stop after it."""
        r = self.matched_validation(val)
        self.state["history"][-1]["val_accuracy_card_k"] = round(r["accuracy"], 4)
        if r["accuracy"] < self.cfg.keep_at:
            return
        self.state["matched_epoch"] = epoch  # the run state saved next records it, so a resume never redoes it
        test = data_mod.load(self.cfg.dataset, "test", self.cfg.test_limit).to(self.device)
        t = accuracy(self.model, test.images, test.labels, CARD_SAMPLES, seed=0)
        card = self._card({"status": "trained",
                           "validation_accuracy": {k: r[k] for k in ("accuracy", "n", "samples")},
                           "test_accuracy": {k: t[k] for k in ("accuracy", "n", "samples")}})
        card["matched"] = {
            "of": self.name, "target": self.cfg.keep_at, "epoch": epoch, "val_accuracy": round(r["accuracy"], 4),
            "val_samples": CARD_SAMPLES,
            "what": f"the first epoch of {self.name}'s run whose validation accuracy (K={CARD_SAMPLES}, as in every "
                    f"card) reached {self.cfg.keep_at:g}: an accuracy-matched checkpoint, not the run's best"}
        card["epochs"] = card["best_epoch"] = epoch
        card["wall_seconds"] = self.state["history"][-1]["seconds"]
        card["history"] = [h for h in card["history"] if h["epoch"] <= epoch]
        self.store.save(matched_name(self.name, self.cfg.keep_at), self.model, card)

    def _kl_weight(self, epoch: int, fraction: float) -> float:
        """Linear KL warm-up, a function of (epoch, step) only, so a resumed run repeats it exactly."""
        w = self.cfg.kl_warmup
        return 1.0 if w == 0 else min(1.0, (epoch - 1 + fraction) / w)

    def _epoch(self, train: data_mod.Data, epoch: int) -> tuple[float, float]:
        cfg, model = self.cfg, self.model
        model.train()
        torch.manual_seed(seeding.derive(cfg.seed, "training", epoch, 0))  # dropout (CPU and CUDA generators)
        # batch order on the CPU (the same on every device), moved once; latent noise from the device
        order = torch.randperm(len(train), generator=seeding.generator(cfg.seed, "training", epoch, 1),
                               device="cpu").to(self.device)
        noise = seeding.generator(cfg.seed, "training", epoch, 2, device=self.device)
        # running sums stay on the device: no host sync per step
        total_loss = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device)
        seen = measured = 0  # images seen; batches the running accuracy was computed on
        steps = math.ceil(len(train) / cfg.batch_size)
        bar = tqdm(range(steps), desc=f"epoch {epoch}/{cfg.epochs}", unit="step", disable=not self.progress,
                   leave=False)
        all_classes = torch.arange(self.model_config.num_classes, device=self.device)
        for step in bar:
            if cfg.schedule == "cosine":  # a function of (epoch, step) only, so resuming needs no scheduler state
                progress = (epoch - 1 + step / steps) / cfg.epochs
                for group in self.opt.param_groups:
                    group["lr"] = cfg.lr * 0.5 * (1 + math.cos(math.pi * progress))
            idx = order[step * cfg.batch_size:(step + 1) * cfg.batch_size]
            x, y = train.images[idx], train.labels[idx]
            loss = -model.elbo(x, y, noise, kl_weight=self._kl_weight(epoch, step / steps)).mean()
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            total_loss += loss.detach() * len(y)
            seen += len(y)
            if step % 10 == 0:  # running accuracy on a K=1 pass every 10th batch: cheap, and a live signal
                with torch.no_grad():
                    lw = model.log_weights(x, all_classes.expand(len(y), -1), 1, noise)[..., 0]
                    correct += (lw.argmax(-1) == y).float().mean()
                measured += 1
                if self.progress and step % 50 == 0:  # the bar's figures are the only per-step host syncs
                    bar.set_postfix(loss=f"{total_loss.item() / seen:.2f}", acc=f"{correct.item() / measured:.3f}")
        loss_mean, acc = total_loss.item() / seen, correct.item() / measured
        if not math.isfinite(loss_mean):
            raise GenrobustError(f"training diverged at epoch {epoch} (non-finite loss); try a smaller --lr")
        return loss_mean, acc

    def _card_accuracies(self, name: str) -> dict[str, Any]:
        """Load ``name`` into the trainer's model and measure the card's accuracies at K=10."""
        model, _ = self.store.load(name)
        self.model.load_state_dict(model.state_dict())
        val = data_mod.load(self.cfg.dataset, "validation").to(self.device)
        test = data_mod.load(self.cfg.dataset, "test", self.cfg.test_limit).to(self.device)
        out = {}
        for key, split in (("validation_accuracy", val), ("test_accuracy", test)):
            r = accuracy(self.model, split.images, split.labels, CARD_SAMPLES, seed=0, progress=self.progress,
                         desc=f"{name} {key.split('_')[0]} K=10")
            out[key] = {k: r[k] for k in ("accuracy", "n", "samples")}
        return out

    def _finish(self) -> dict[str, Any]:
        """Reload the best epoch, measure the card's accuracies at K=10 and publish the final card."""
        matched = self.state.get("matched_epoch")
        card = self._card({"status": "trained", **self._card_accuracies(self.name)})
        if self.cfg.keep_at is not None and matched is None:
            card["matched"] = {"target": self.cfg.keep_at, "epoch": None,
                               "what": "no epoch's validation accuracy reached the target"}
        self.store.save(self.name, self.model, card)
        shutil.rmtree(self.run_dir, ignore_errors=True)
        return self.store.card(self.name)


def default_name(structure: str, dataset: str) -> str:
    prefix = {"fashion-mnist": "fmnist", "mnist": "mnist"}.get(dataset, dataset)
    return f"{prefix}-{structure.lower()}"


def check_structure(structure: str) -> str:
    """The canonical structure name; ModelConfig's validator is the one place that knows the names."""
    try:
        return ModelConfig(structure=structure).structure
    except ValidationError as exc:
        raise GenrobustError(validation_message(exc)) from None


__all__ = ["TrainConfig", "Trainer", "default_name", "check_structure", "matched_name"]
