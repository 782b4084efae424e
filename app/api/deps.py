"""Dependencies of the routes, as ``Annotated`` aliases."""

from __future__ import annotations

import secrets
import threading
from contextlib import contextmanager
from typing import Annotated

from fastapi import Depends, HTTPException, Request, Security
from fastapi.security import APIKeyHeader

from app.batching import Batcher, Overloaded
from worker.settings import ServiceSettings as Settings, get_service_settings as get_settings
from genrobust.store import ModelStore
from worker import runtime
from worker.jobs import JobStore, job_store

# Cheap dependencies are ``async def``: FastAPI runs a plain ``def`` in its thread pool, a hand-off to another
# thread and back per request, which under load takes the core from inference (BENCHMARKS.md, Load).


async def _settings() -> Settings:
    return get_settings()


SettingsDep = Annotated[Settings, Depends(_settings)]
StoreDep = Annotated[ModelStore, Depends(runtime.store)]


def _jobs() -> JobStore:
    return job_store()


JobsDep = Annotated[JobStore, Depends(_jobs)]


async def _batcher(request: Request) -> Batcher:
    return request.app.state.batcher


BatcherDep = Annotated[Batcher, Depends(_batcher)]

api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, scheme_name="APIKey",
                              description="GENROBUST_API_KEY; required for job submission, cancellation and "
                                          "store writes when configured.")


async def require_api_key(settings: SettingsDep, key: Annotated[str | None, Security(api_key_header)] = None) -> None:
    check_api_key(settings, key)


def check_api_key(settings: Settings, key: str | None) -> None:
    if settings.api_key is None:  # the embedded default: open (a warning was logged at start)
        return
    if key is None or not secrets.compare_digest(key.encode(), settings.api_key.encode()):
        raise HTTPException(401, "missing or wrong X-API-Key header (this service requires GENROBUST_API_KEY)",
                            headers={"WWW-Authenticate": "APIKey"})


ApiKey = Depends(require_api_key)
ApiKeyValue = Annotated[str | None, Security(api_key_header)]


def known_model(name: str) -> str:
    """The name if the store has it; GenrobustError (422) saying which models exist otherwise."""
    runtime.store().card(name)
    return name


class InlineLimit:
    """Bounds the inline /attack and /detect computations of one API process (GENROBUST_INLINE_CONCURRENCY).
    Over the bound a request is refused at once (503 + Retry-After) rather than queued behind minutes of work
    in the server's thread pool."""

    def __init__(self, slots: int):
        self.slots = slots
        self._sem = threading.BoundedSemaphore(slots)

    @contextmanager
    def slot(self):
        if not self._sem.acquire(blocking=False):
            raise Overloaded(f"overloaded: {self.slots} inline attack/detect requests already running, at most "
                             f"{self.slots} (GENROBUST_INLINE_CONCURRENCY); retry later")
        try:
            yield
        finally:
            self._sem.release()


def inline_slot(request: Request):
    """``with inline_slot(request):`` around an inline computation."""
    return request.app.state.inline.slot()
