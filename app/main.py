"""The FastAPI app and ``serve`` (what `genrobust serve` runs)."""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI

import genrobust
from app import errors
from app.api.deps import InlineLimit
from app.api.main import api_router
from app.batching import Batcher
from genrobust.evaluation import logits_for_requests
from worker.settings import get_service_settings as get_settings
from worker import runtime
from worker.celery import configure

log = logging.getLogger("genrobust.service")


def _classify_group(model: str, samples: int, requests):
    # memory grows with images x K: keep each forward pass at the size of 100 images at K = 10
    return logits_for_requests(runtime.load_model(model), requests, samples, batch_size=max(1, 1000 // samples))


def create_app(embedded_worker: bool | None = None) -> FastAPI:
    """``embedded_worker``: run jobs in-process (default: when no Redis is configured)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        settings = get_settings()
        configure(settings)
        if not settings.api_key:
            log.warning("GENROBUST_API_KEY is not set: job submission, cancellation and store writes are open "
                        "to anyone who can reach this service")
        runtime.set_threads()
        batcher = Batcher(_classify_group, settings.batch_wait_ms / 1000, settings.batch_max_images,
                          queue_images=settings.classify_queue_images,
                          max_wait_s=settings.classify_max_wait_ms / 1000, timeout_s=settings.classify_timeout_s)
        await batcher.start()
        app.state.batcher = batcher
        embedded = not settings.redis_url if embedded_worker is None else embedded_worker
        app.state.embedded_worker = None
        if embedded:
            from worker.embedded import EmbeddedWorker

            app.state.embedded_worker = EmbeddedWorker().start()
        log.info("genrobust service: %s mode, models in %s", "redis" if settings.redis_url else "embedded",
                 settings.model_dir)
        try:
            yield
        finally:
            await batcher.stop()
            if app.state.embedded_worker:
                app.state.embedded_worker.stop()

    app = FastAPI(title="genrobust", version=genrobust.__version__, lifespan=lifespan,
                  description="Latent-variable classifiers of Li, Bradshaw & Sharma (ICML 2019): classification, "
                              "adversarial attacks, detection, and training / attack sweeps / the study as jobs.")
    app.state.embedded_worker = None
    app.state.inline = InlineLimit(get_settings().inline_concurrency)
    errors.install(app)
    app.add_middleware(errors.BodyLimit)
    app.add_middleware(errors.ShedClassify)  # added last = outermost: sheds before the body is read
    app.include_router(api_router)
    return app


KEEP_ALIVE_S = 75  # as nginx's default


def serve(host: str = "127.0.0.1", port: int = 8000, access_log: bool = True) -> int:
    import uvicorn

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # keep-alive longer than clients' idle-connection expiry (httpx: 5 s, uvicorn's default too): otherwise the
    # server closes a pooled connection just as a client reuses it, and that request is lost (ReadError)
    uvicorn.run(create_app(), host=host, port=port, access_log=access_log, timeout_graceful_shutdown=10,
                timeout_keep_alive=KEEP_ALIVE_S)
    return 0
