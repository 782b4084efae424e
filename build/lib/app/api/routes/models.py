from typing import Any

from fastapi import APIRouter, HTTPException, Path

from app.api.deps import StoreDep
from app.api.routes import errors
from genrobust.store import NAME_RE

router = APIRouter(prefix="/models", tags=["models"])


@router.get("", response_model=list[dict[str, Any]])
def list_models(store: StoreDep):
    """The stored models (user store and shipped pretrained ones) with their cards: structure, kind,
    architecture, training settings and history, validation and test accuracy."""
    return store.cards()


@router.get("/{name}", response_model=dict[str, Any], responses=errors(404, 422))
def get_model(store: StoreDep, name: str = Path(max_length=200, description="A stored model name.")):
    """One model's card."""
    if not NAME_RE.match(name) or name not in store.names():
        raise HTTPException(404, f"unknown model {name!r}; stored models: {', '.join(store.names()) or 'none'}")
    return store.card(name)
