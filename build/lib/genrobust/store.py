"""Model store: weights as safetensors + a JSON card per model. Loading never unpickles anything.

Two places are read: the user's store (``GENROBUST_MODEL_DIR``, where new models are written) and
the pretrained models shipped inside the package. A user model shadows a shipped one of the same name.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from genrobust.errors import GenrobustError
from genrobust.models import LatentClassifier, ModelConfig
from genrobust.settings import PRETRAINED_DIR, get_settings

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
CARD_KEYS = ("structure", "config")  # what every reader of a card relies on (kind follows from structure)
log = logging.getLogger(__name__)


class CorruptStoreFile(GenrobustError):
    """A card, checkpoint or detectors file that cannot be read; the message names the file."""


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_RE.match(name) or ".." in name:
        raise GenrobustError(
            f"invalid model name {name!r}: use 1-64 lower-case letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


class StoreWriteError(GenrobustError):
    """A file of the store could not be written (full disk, no permission); what was there is unchanged."""


def atomic_write(path: Path, write) -> None:
    """Write through a temporary file in the same folder, flushed to disk, and rename it into place: a
    reader, a crash or a full disk sees either the old file or the whole new one, never a partial file."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        write(tmp)
        with open(tmp, "rb+") as f:  # the data must be on disk before the rename makes it the file
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; stored files are meant to be shared
        os.replace(tmp, path)
    except OSError as exc:
        raise StoreWriteError(f"cannot write {path}: {exc.strerror or exc}; the previous version of the file "
                              "is unchanged (free space or fix permissions and run again)") from None
    except SafetensorError as exc:  # safetensors reports a failed write (e.g. disk full) as its own error
        raise StoreWriteError(f"cannot write {path}: {exc}; the previous version of the file is unchanged") from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            try:
                os.unlink(tmp)
            except OSError:  # an unwritable folder: nothing was created there anyway
                pass


def write_json(path: Path, obj: Any) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n"))


def file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CorruptStoreFile(f"corrupt or unreadable checkpoint {path}: {exc}") from None


class ModelStore:
    def __init__(self, root: str | Path | None = None, extra_dirs: tuple[Path, ...] = (PRETRAINED_DIR,)):
        self.root = Path(root) if root is not None else get_settings().model_dir
        self.dirs = (self.root, *extra_dirs)

    # -------------------------------------------------------------- reading
    def _find(self, name: str) -> Path:
        check_name(name)
        for d in self.dirs:
            if (d / f"{name}.json").is_file():
                return d
        known = ", ".join(self.names()) or "none"
        raise GenrobustError(f"unknown model {name!r} (stored models: {known}); train one with `genrobust train`")

    def exists(self, name: str) -> bool:
        check_name(name)
        return any((d / f"{name}.json").is_file() for d in self.dirs)

    def is_shipped(self, name: str) -> bool:
        """Whether ``name`` is read from the package's pretrained models (not shadowed by a user model)."""
        return self.exists(name) and self._find(name) == PRETRAINED_DIR

    def names(self) -> list[str]:
        found = {p.stem for d in self.dirs if d.is_dir() for p in d.glob("*.json") if NAME_RE.match(p.stem)}
        return sorted(found)

    def card(self, name: str) -> dict[str, Any]:
        path = self._find(name) / f"{name}.json"
        try:
            card = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CorruptStoreFile(f"corrupt model card {path}: {exc}") from None
        missing = [k for k in CARD_KEYS if not isinstance(card, dict) or k not in card]
        if missing:
            raise CorruptStoreFile(f"corrupt model card {path}: no {', '.join(repr(k) for k in missing)}")
        return card

    def cards(self) -> list[dict[str, Any]]:
        """The readable cards; a corrupt one is skipped with a warning (the rest of the store stays usable)."""
        out = []
        for n in self.names():
            try:
                out.append(self.card(n))
            except CorruptStoreFile as exc:
                log.warning("%s", exc)
        return out

    def load(self, name: str, device: str | torch.device = "cpu") -> tuple[LatentClassifier, dict[str, Any]]:
        """The model in eval mode, and its card."""
        card = self.card(name)
        try:
            config = ModelConfig(**card["config"])
        except (KeyError, TypeError, ValidationError) as exc:
            raise CorruptStoreFile(f"model card of {name!r} ({self._find(name) / f'{name}.json'}) has no valid "
                                   f"'config': {exc}") from None
        model = LatentClassifier(config)
        path = self._find(name) / f"{name}.safetensors"
        if not path.is_file():
            raise GenrobustError(f"model {name!r} has a card but no weights file {path}")
        try:
            model.load_state_dict(load_tensors(path), strict=True)
        except RuntimeError as exc:
            raise CorruptStoreFile(f"checkpoint {path} does not match its card: {str(exc).splitlines()[0]}") from None
        if card.get("weights_sha256") and file_sha256(path) != card["weights_sha256"]:
            # readable weights of the right shape, but not these: a save interrupted between the two files
            raise CorruptStoreFile(f"checkpoint {path} is not the one its card {path.with_suffix('.json')} was "
                                   "written for (an interrupted save?): train or copy the model again")
        return model.to(device).eval(), card

    # -------------------------------------------------------------- writing
    def save(self, name: str, model: LatentClassifier, card: dict[str, Any]) -> Path:
        """Write weights, then the card (the card's presence is what makes a model visible). The card records
        the weights' SHA-256, so a save interrupted between the two files is caught on load, never served."""
        check_name(name)
        weights = self.root / f"{name}.safetensors"
        save_tensors(weights, model.state_dict(), {"name": name})
        write_json(self.root / f"{name}.json", {"name": name, **card, "weights_sha256": file_sha256(weights)})
        return weights
