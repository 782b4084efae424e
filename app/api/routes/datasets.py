"""Dataset images for clients (the web page's gallery): a listing with labels and single images as PNG."""

from __future__ import annotations

import functools
import io
from typing import Literal

import numpy as np
from fastapi import APIRouter, HTTPException, Path, Query, Response
from PIL import Image
from pydantic import BaseModel, Field

from app.api.routes import errors
from genrobust.data import CLASS_NAMES, DATASETS, Data, load
from worker.settings import get_service_settings as get_settings

router = APIRouter(prefix="/datasets", tags=["datasets"])
DatasetName = Literal[tuple(DATASETS)]  # type: ignore[valid-type]
SplitName = Literal["test", "validation"]  # held-out images, as in sweeps (the training split stays internal)


class DatasetInfo(BaseModel):
    name: str
    classes: list[str] = Field(description="Class names, by label.")
    available: bool = Field(description="Whether its files are in the data dir (otherwise its images give 404).")


class GalleryItem(BaseModel):
    index: int
    label: int
    class_name: str
    url: str = Field(description="The image as a 28 x 28 grayscale PNG.")


class Gallery(BaseModel):
    dataset: str
    split: str
    total: int = Field(description="Images in the split.")
    offset: int
    classes: list[str]
    items: list[GalleryItem]


def _classes(name: str) -> list[str]:
    return CLASS_NAMES[name]


def _available(name: str) -> bool:
    raw = get_settings().data_dir / DATASETS[name].__name__ / "raw"
    return raw.is_dir() and any(raw.iterdir())


def _split(name: str, split: str) -> Data:
    # only files already present: a missing dataset is a 404 here, never a download from a request
    if not _available(name):
        raise HTTPException(404, f"dataset {name!r} is not in the data dir {get_settings().data_dir} "
                                 "(`genrobust` downloads it on first training or evaluation)")
    return _loaded(name, split, str(get_settings().data_dir))


@functools.lru_cache(maxsize=4)
def _loaded(name: str, split: str, root: str) -> Data:  # the validation split is a gather: do it once
    return load(name, split, root=root)


@router.get("", response_model=list[DatasetInfo])
def list_datasets():
    """The datasets the library knows, with class names and whether their files are present."""
    return [DatasetInfo(name=n, classes=_classes(n), available=_available(n)) for n in DATASETS]


@router.get("/{name}/{split}", response_model=Gallery, responses=errors(404, 422))
def gallery(name: DatasetName, split: SplitName,
            offset: int = Query(0, ge=0, le=100_000, description="First index."),
            limit: int = Query(24, ge=1, le=200, description="How many (1-200).")):
    """A page of a split: index, label and class name of each image, with the URL of its PNG."""
    data, classes = _split(name, split), _classes(name)
    stop = min(offset + limit, len(data))
    items = [GalleryItem(index=i, label=int(data.labels[i]), class_name=classes[int(data.labels[i])],
                         url=f"/datasets/{name}/{split}/{i}.png") for i in range(offset, stop)]
    return Gallery(dataset=name, split=split, total=len(data), offset=offset, classes=classes,
                   items=items)


@router.get("/{name}/{split}/{index}.png", response_class=Response, responses={
    200: {"content": {"image/png": {}}, "description": "28 x 28 grayscale PNG; its label in the X-Label header."},
    **errors(404, 422)})
def image(name: DatasetName, split: SplitName,
          index: int = Path(ge=0, le=1_000_000, description="Index in the split (0-based).")):
    """One image of a split as a PNG (8-bit grayscale, 0 = black); headers X-Label and X-Class-Name."""
    data = _split(name, split)
    if index >= len(data):
        raise HTTPException(404, f"index {index} out of range: {name} {split} has {len(data)} images "
                                 f"(0-{len(data) - 1})")
    buf = io.BytesIO()
    pixels = np.round(data.images[index, 0].numpy() * 255).astype(np.uint8)
    Image.fromarray(pixels).save(buf, format="PNG")
    label = int(data.labels[index])
    return Response(buf.getvalue(), media_type="image/png",
                    headers={"X-Label": str(label), "X-Class-Name": _classes(name)[label],
                             "Cache-Control": "public, max-age=86400"})
