"""Request images -> a checked float32 (N, 1, 28, 28) tensor; every problem is a GenrobustError (422)."""

from __future__ import annotations

import base64
import binascii
import io

import numpy as np
import torch
from PIL import Image

from genrobust.data import check_images
from genrobust.errors import GenrobustError


class TooManyImages(GenrobustError):
    """More images than GENROBUST_MAX_IMAGES (413)."""


def decode(req, max_images: int) -> torch.Tensor:
    """The images of a request with ``images`` (nested lists) or ``images_png`` (base64 PNGs)."""
    items = req.images if req.images is not None else req.images_png
    if len(items) > max_images:
        raise TooManyImages(f"too many images: {len(items)} in one request, at most {max_images} "
                            "(GENROBUST_MAX_IMAGES)")
    if req.images is not None:
        return _from_lists(req.images)
    return check_images(torch.from_numpy(np.stack([_png(i, s) for i, s in enumerate(req.images_png)])))


def _from_lists(images: list) -> torch.Tensor:
    try:
        arr = np.asarray(images)
    except ValueError:  # ragged
        raise GenrobustError("images must be a regular N x 28 x 28 or N x 1 x 28 x 28 array of numbers "
                             "(rows of different lengths found)") from None
    if arr.dtype.kind not in "fiu":
        raise GenrobustError("images must contain only numbers in [0, 1] "
                             f"(found {'booleans' if arr.dtype.kind == 'b' else 'non-numeric values'})")
    return check_images(torch.from_numpy(arr.astype(np.float32)))


def _png(i: int, text: str) -> np.ndarray:
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise GenrobustError(f"images_png[{i}] is not valid base64") from None
    try:
        with Image.open(io.BytesIO(raw), formats=["PNG"]) as im:
            if im.size != (28, 28):  # checked on the header, before decoding any pixels
                raise GenrobustError(f"images_png[{i}] must be 28 x 28 pixels, got {im.size[0]} x {im.size[1]}")
            return np.asarray(im.convert("L"), dtype=np.float32)[None] / 255.0
    except GenrobustError:
        raise
    except Exception as exc:  # PIL raises many types for corrupt data
        raise GenrobustError(f"images_png[{i}] is not a decodable PNG ({type(exc).__name__}: {exc})") from None


def encode_png(image) -> str:
    """A (28, 28) or (1, 28, 28) array in [0, 1] as a base64 PNG (for clients and tests)."""
    a = np.asarray(image, dtype=np.float32).reshape(28, 28)
    buf = io.BytesIO()
    Image.fromarray(np.round(a * 255).astype(np.uint8)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()
