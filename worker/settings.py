"""The service's settings (app/ and worker/): the library's (data and model dirs, threads, device) plus the
broker, the API key, limits and job routing, all from ``GENROBUST_*`` environment variables; docs/service.md
lists them. Cached with the library's: clearing ``genrobust.settings.get_settings`` clears these too."""

from __future__ import annotations

from pydantic import Field

from genrobust.settings import Settings, get_settings


class ServiceSettings(Settings):
    redis_url: str | None = Field(
        None, description="Redis for the job broker and results, e.g. redis://localhost:6379/0. Unset: the "
                          "embedded default (SQLite broker and results under <data_dir>/service, jobs run "
                          "in-process by `genrobust serve`).")
    api_key: str | None = Field(
        None, description="Required in the X-API-Key header of job submission, cancellation and store writes. "
                          "Unset: open (the embedded default; a warning is logged at start).")
    max_images: int = Field(256, ge=1, le=100_000, description="Most images accepted in one request.")
    max_body_bytes: int = Field(16 * 2**20, ge=1024, description="Largest request body accepted, in bytes.")
    inline_attack_work: float = Field(
        2000.0, ge=0, description="/attack runs inline up to this work (images x estimated passes per image, "
                                  "see genrobust.attacks.Attack.cost); above it the request becomes a job (202).")
    result_expires: int = Field(7 * 24 * 3600, ge=60, description="Seconds job records and results are kept.")
    batch_wait_ms: float = Field(5.0, ge=0, le=1000, description="/classify dynamic batching: how long the first "
                                                                  "request of a batch waits for others, in ms.")
    batch_max_images: int = Field(128, ge=1, description="/classify dynamic batching: most images in one pass.")
    # backpressure: what the service cannot serve soon is refused at once (503 + Retry-After), not queued
    classify_queue_images: int = Field(512, ge=1, description="/classify: most images admitted at once (waiting "
                                                               "or in the running pass); more is refused with 503.")
    classify_max_wait_ms: float = Field(
        500.0, ge=0, description="/classify: refuse (503) a request whose images would wait longer than this for "
                                 "the images ahead of them, estimated from recent passes; 0 turns the check off.")
    classify_timeout_s: float = Field(30.0, gt=0, description="/classify: longest a request waits for its pass "
                                                               "before it is answered 503.")
    sweep_max_tasks: int = Field(1000, ge=1, description="Most tasks (models x attacks x chunks) one sweep may "
                                                          "enqueue; more is refused with 422.")
    inline_concurrency: int = Field(4, ge=1, description="Inline /attack and /detect requests computed at once by "
                                                          "one API process; more are refused with 503.")
    sweep_chunk: int | None = Field(
        None, ge=1, description="Images per sweep chunk (one task each, run in parallel). Unset: sized to the "
                                "device and the attack's cost (genrobust.robustness.default_chunk_size): about "
                                "50 images of a K=10 gradient attack's work per chunk on a CPU, 40x that on CUDA.")
    jobs_queue: str = Field("genrobust", pattern=r"^[A-Za-z0-9_.-]{1,64}$", description=(
        "The Celery queue jobs are sent to and that `celery -A worker worker` consumes: route heavy work to GPU "
        "workers by giving them and the API e.g. `gpu` (docker-compose.yml, docs/service.md)."))
    jobs_device: str = Field("auto", pattern=r"^(auto|cpu|cuda)$", description=(
        "The device class of the workers on jobs_queue, which sizes sweep chunks: a CPU API in front of GPU "
        "workers sets cuda. auto: the API's own device (right when they share a machine)."))
    visibility_timeout: int = Field(
        3600, ge=1, description="Redis broker: seconds before a task taken by a worker that vanished is given to "
                                "another worker. Must exceed the longest task (a sweep chunk, a training run).")
    worker_concurrency: int = Field(1, ge=1, description="Tasks one embedded worker runs at a time.")



_cache: dict[str, object] = {}


def get_service_settings() -> ServiceSettings:
    """The service's settings, read again whenever the library's cache was cleared (tests, reconfiguration)."""
    lib = get_settings()
    if _cache.get("lib") is not lib:
        _cache.update(lib=lib, service=ServiceSettings())
    return _cache["service"]  # type: ignore[return-value]


__all__ = ["ServiceSettings", "get_service_settings"]
