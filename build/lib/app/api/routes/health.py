from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from app.api.deps import JobsDep, SettingsDep, StoreDep
from app.schemas import HealthResponse

router = APIRouter(tags=["service"])


@router.get("/health", response_model=HealthResponse, responses={503: {"model": HealthResponse}})
def health(request: Request, settings: SettingsDep, store: StoreDep, jobs: JobsDep):
    """Service status: the broker / result store (pinged), the embedded worker, the number of stored models.
    503 with the same body when something is down."""
    try:
        jobs.ping()
        broker = "ok"
    except Exception as exc:  # reported, not raised: this endpoint exists to say what is down
        broker = f"unreachable: {type(exc).__name__}: {str(exc)[:200]}"
    embedded = request.app.state.embedded_worker
    worker = "external" if settings.redis_url else ("running" if embedded and embedded.alive() else "stopped")
    ok = broker == "ok" and worker != "stopped"
    body = HealthResponse(status="ok" if ok else "degraded", mode="redis" if settings.redis_url else "embedded",
                          broker=broker, worker=worker, models=len(store.names()))
    return JSONResponse(body.model_dump(), status_code=200 if ok else 503)
