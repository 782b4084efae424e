"""Where computation runs: one setting (``GENROBUST_DEVICE`` or ``--device``) resolved to a torch device.

``auto`` is CUDA when torch sees a GPU, else the CPU. Asking for CUDA where there is none is an error a user
can fix, not a traceback from deep inside torch. Everything else in the library follows its inputs' device:
only the entry points (CLI, workers, training) choose one.
"""

from __future__ import annotations

import platform
import re

import torch

from genrobust.errors import GenrobustError

DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
DEVICE_HELP = "auto (CUDA when present, else CPU), cpu, cuda or cuda:N"


def check_device_spec(spec: str) -> str:
    spec = str(spec).strip().lower()
    if not DEVICE_RE.match(spec):
        raise GenrobustError(f"unknown device {spec!r}; use {DEVICE_HELP}")
    return spec


def resolve_device(spec: str | torch.device | None = None) -> torch.device:
    """The torch device for a device setting (default: ``GENROBUST_DEVICE``)."""
    if isinstance(spec, torch.device):
        spec = str(spec)
    if spec is None:
        from genrobust.settings import get_settings
        spec = get_settings().device
    spec = check_device_spec(spec)
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise GenrobustError(f"device {spec!r} requested (--device / GENROBUST_DEVICE) but torch sees no CUDA "
                             f"device (torch {torch.__version__}, CUDA build: {torch.version.cuda or 'no'}); "
                             f"use --device cpu or auto")
    device = torch.device(spec)
    if device.index is not None and device.index >= torch.cuda.device_count():
        raise GenrobustError(f"device {spec!r} requested but only {torch.cuda.device_count()} CUDA device(s) "
                             f"are visible (cuda:0 to cuda:{torch.cuda.device_count() - 1})")
    return device


def device_info(device: torch.device | str) -> dict[str, str]:
    """What a card or report records about where it ran: the device and its human name."""
    device = torch.device(device)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = _cpu_name()
    return {"device": str(device), "name": name}


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def module_device(model: torch.nn.Module) -> torch.device:
    """The device of a module's parameters (CPU for a module without any)."""
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def is_out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError)
