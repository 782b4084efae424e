"""Model store: weights as safetensors + a JSON card per model. Loading never unpickles anything.

Two places are read: the user's store (``GENROBUST_MODEL_DIR``, where new models are written) and
the pretrained models shipped inside the package. A user model shadows a shipped one of the same name.
"""

from __future__ import annotations

import json
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


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_RE.match(name) or ".." in name:
        raise GenrobustError(
            f"invalid model name {name!r}: use 1-64 lower-case letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def atomic_write(path: Path, write) -> None:
    """Write through a temporary file in the same folder and rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; stored files are meant to be shared
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json(path: Path, obj: Any) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n"))


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise GenrobustError(f"corrupt or unreadable checkpoint {path}: {exc}") from None


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

    def names(self) -> list[str]:
        found = {p.stem for d in self.dirs if d.is_dir() for p in d.glob("*.json") if NAME_RE.match(p.stem)}
        return sorted(found)

    def card(self, name: str) -> dict[str, Any]:
        path = self._find(name) / f"{name}.json"
        try:
            return json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise GenrobustError(f"corrupt model card {path}: {exc}") from None

    def cards(self) -> list[dict[str, Any]]:
        return [self.card(n) for n in self.names()]

    def load(self, name: str, device: str | torch.device = "cpu") -> tuple[LatentClassifier, dict[str, Any]]:
        """The model in eval mode, and its card."""
        card = self.card(name)
        try:
            config = ModelConfig(**card["config"])
        except (KeyError, TypeError, ValidationError) as exc:
            raise GenrobustError(f"model card of {name!r} has no valid 'config': {exc}") from None
        model = LatentClassifier(config)
        path = self._find(name) / f"{name}.safetensors"
        if not path.is_file():
            raise GenrobustError(f"model {name!r} has a card but no weights file {path}")
        try:
            model.load_state_dict(load_tensors(path), strict=True)
        except RuntimeError as exc:
            raise GenrobustError(f"checkpoint {path} does not match its card: {str(exc).splitlines()[0]}") from None
        return model.to(device).eval(), card

    # -------------------------------------------------------------- writing
    def save(self, name: str, model: LatentClassifier, card: dict[str, Any]) -> Path:
        """Write weights, then the card (the card's presence is what makes a model visible)."""
        check_name(name)
        save_tensors(self.root / f"{name}.safetensors", model.state_dict(), {"name": name})
        write_json(self.root / f"{name}.json", {"name": name, **card})
        return self.root / f"{name}.safetensors"
