"""The one Celery app, configured from genrobust's settings.

Redis mode (``GENROBUST_REDIS_URL`` set): Redis is broker and result backend; workers are separate
processes (``celery -A worker worker``). Embedded mode (unset): kombu's SQLAlchemy transport and Celery's
database backend on SQLite files under ``<data_dir>/service``, and ``genrobust serve`` runs a worker
in-process (``worker.embedded``) with the same task code.
"""

from __future__ import annotations

from pathlib import Path

from celery import Celery

from worker.settings import ServiceSettings as Settings, get_service_settings as get_settings


app = Celery("genrobust", include=["worker.tasks"])


def service_dir(settings: Settings) -> Path:
    """Where the embedded broker, results and job records live."""
    path = Path(settings.data_dir) / "service"
    path.mkdir(parents=True, exist_ok=True)
    return path


def embedded_urls(settings: Settings) -> tuple[str, str]:
    d = service_dir(settings).resolve()
    return f"sqla+sqlite:///{d / 'broker.sqlite'}", f"db+sqlite:///{d / 'results.sqlite'}"


def configure(settings: Settings | None = None) -> Celery:
    """(Re)configure the app from the settings: by the API at start, by a worker at start, by tests."""
    s = settings or get_settings()
    if s.redis_url:
        broker = backend = s.redis_url
        # Unacknowledged messages of a dead worker come back after visibility_timeout; scan for them every
        # few seconds (kombu's default scans every 100 s, which would dominate a short timeout).
        transport = {"visibility_timeout": s.visibility_timeout, "unacked_restore_throttle": 1,
                     "unacked_restore_interval": min(10, max(1, s.visibility_timeout // 2))}
        backend_options = {"visibility_timeout": s.visibility_timeout}
    else:
        broker, backend = embedded_urls(s)
        # kombu hands these to create_engine: wait on a locked SQLite file instead of failing
        transport, backend_options = {"connect_args": {"timeout": 30}}, {}
    changed = (app.conf.broker_url, app.conf.result_backend) != (broker, backend)
    app.conf.update(
        broker_url=broker, result_backend=backend,
        broker_transport_options=transport, result_backend_transport_options=backend_options,
        broker_connection_retry_on_startup=True,
        task_default_queue=s.jobs_queue,  # workers consume it too: one setting routes both ends
        task_serializer="json", result_serializer="json", accept_content=["json"],
        # nothing lost: a task is acknowledged only once done, and re-queued if its worker dies mid-task
        task_acks_late=True, task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,  # a busy worker does not hold tasks another could run
        result_expires=s.result_expires,
        result_extended=True,
        task_track_started=True,
        worker_hijack_root_logger=False,
        # the database backend polls chord members; one second is plenty for chunked sweeps
        result_chord_retry_interval=1.0,
        # a result store that is briefly unreachable (Redis restarting) is waited out, about a minute, instead
        # of losing the result of a finished task
        result_backend_always_retry=True, result_backend_max_retries=40,
        result_backend_base_sleep_between_retries_ms=200, result_backend_max_sleep_between_retries_ms=2000,
    )
    if changed:  # connections and the result backend made for the old URLs must not be reused
        app._pool, app._backend_cache = None, None
        app._local.__dict__.pop("backend", None)  # this thread's (backends that are not thread-safe)
        if "amqp" in app.__dict__:
            app.__dict__["amqp"]._producer_pool = None
    return app



# Configured when this module is imported, which only the worker (`celery -A worker worker` finds the app
# here), the embedded worker and job submission do: the broker's transport options (the visibility timeout
# that re-delivers a dead worker's task) must be set before the worker builds its connection, which a
# configuration at `celeryd_init` was too late for. Importing worker.jobs, calls or runtime imports no Celery.
configure()
