"""Every failure becomes a 4xx/5xx JSON ``{"detail": "..."}`` with a one-line message, never a traceback."""

from __future__ import annotations

import logging

import kombu.exceptions
import redis.exceptions
import sqlalchemy.exc
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from app.batching import Overloaded
from app.images import TooManyImages
from genrobust.attacks import ATTACKS
from genrobust.errors import GenrobustError
from worker.settings import get_service_settings as get_settings
from worker.submit import BrokerUnavailable

log = logging.getLogger("genrobust.service")
# what the job store and the broker raise when Redis or the SQLite files cannot be reached
_UNREACHABLE = (BrokerUnavailable, redis.exceptions.ConnectionError, redis.exceptions.TimeoutError,
                sqlalchemy.exc.OperationalError, kombu.exceptions.OperationalError)
# seconds a client should wait before retrying a 503 when the broker is unreachable (overload: Overloaded's
# retry_after, estimated by the batcher)
RETRY_UNREACHABLE = 5


def _where(loc) -> str:
    # drop FastAPI's 'body' and pydantic's union-member tags (e.g. 'FGSMAttackRequest') from the location
    parts = [str(p) for p in loc if p != "body" and not str(p).endswith(("AttackRequest", "Spec"))]
    return ".".join(parts) or "body"


def _message(e: dict) -> str:
    # the only tagged unions are the attack variants (app.schemas); pydantic's wording names no choices
    choices = f"choose one of {', '.join(ATTACKS)}"
    if e["type"] == "union_tag_not_found":
        return f"'attack' is missing; {choices}"
    if e["type"] == "union_tag_invalid":
        return f"unknown attack {e['ctx']['tag']!r}; {choices}"
    return e["msg"].removeprefix("Value error, ")


def validation_detail(exc: RequestValidationError) -> tuple[int, str]:
    errors = exc.errors()
    bad_json = [e for e in errors if e.get("type") == "json_invalid"]
    if bad_json:
        ctx = bad_json[0].get("ctx", {})
        return 400, f"malformed JSON: {ctx.get('error', 'cannot be parsed')}"
    msgs = [f"{_where(e['loc'])}: {_message(e)}" for e in errors[:5]]
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return 422, "; ".join(msgs) + more


def install(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        status, detail = validation_detail(exc)
        return JSONResponse({"detail": detail}, status_code=status)

    @app.exception_handler(TooManyImages)
    async def _too_many(request: Request, exc: TooManyImages):
        return JSONResponse({"detail": str(exc)}, status_code=413)

    @app.exception_handler(GenrobustError)
    async def _user_error(request: Request, exc: GenrobustError):
        return JSONResponse({"detail": str(exc)}, status_code=422)

    @app.exception_handler(Overloaded)
    async def _overloaded(request: Request, exc: Overloaded):
        return overloaded_response(exc)

    async def _broker(request: Request, exc: Exception):
        log.error("broker / result store unreachable on %s %s: %s", request.method, request.url.path, exc)
        where = ("Redis (GENROBUST_REDIS_URL)" if get_settings().redis_url
                 else "the SQLite files under GENROBUST_DATA_DIR")
        return JSONResponse({"detail": f"the job broker or result store is unreachable ({where}); try again later"},
                            status_code=503, headers={"Retry-After": str(RETRY_UNREACHABLE)})

    for unreachable in _UNREACHABLE:
        app.add_exception_handler(unreachable, _broker)

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception):
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse({"detail": "internal error; see the server log"}, status_code=500)


class BodyLimit:
    """Reject bodies over GENROBUST_MAX_BODY_BYTES with 413 before anything parses them. The body is read
    here (bounded) and replayed to the app, so a chunked upload without Content-Length is bounded too."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        limit = get_settings().max_body_bytes
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            return await _reject(scope, send, 413 if length.isdigit() else 400,
                                 f"request body too large: {int(length)} bytes, at most {limit} "
                                 "(GENROBUST_MAX_BODY_BYTES)" if length.isdigit() else "invalid Content-Length")
        body, more = bytearray(), True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # client went away
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > limit:
                return await _reject(scope, send, 413, f"request body too large: over {limit} bytes "
                                                "(GENROBUST_MAX_BODY_BYTES)")
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


async def _reject(scope, send, status: int, detail: str) -> None:
    await JSONResponse({"detail": detail}, status_code=status)(scope, None, send)


def overloaded_response(exc: Overloaded) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=503, headers={"Retry-After": str(exc.retry_after)})


class ShedClassify:
    """Refuse /classify with 503 before its body is read or parsed when the batcher is already full or the
    requests in flight would make a new one wait too long: under overload, parsing JSON that will be refused
    anyway would take the CPU the admitted requests need."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        batcher = None
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] == "/classify":
            batcher = getattr(scope["app"].state, "batcher", None)
        if batcher is None:
            return await self.app(scope, receive, send)
        try:
            batcher.admit()
        except Overloaded as exc:
            return await overloaded_response(exc)(scope, receive, send)
        try:
            await self.app(scope, receive, send)
        finally:
            batcher.release()
