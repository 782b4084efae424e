"""What the service benchmarks share: a free local port and test images as JSON-ready lists."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_images(n: int) -> list:
    """The first ``n`` Fashion-MNIST test images as nested lists (28 x 28 each), the /classify body format."""
    sys.path.insert(0, str(REPO))
    from genrobust import data

    return data.load("fashion-mnist", "test", n).images[:, 0].tolist()
