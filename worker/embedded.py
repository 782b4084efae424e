"""The embedded default: a Celery worker in a thread of the API process, running the same tasks from the
SQLite broker. Started by ``genrobust serve`` when no Redis is configured."""

from __future__ import annotations

import logging
import threading

from celery.worker import WorkController

from genrobust.settings import get_settings
from worker.celery import app

log = logging.getLogger(__name__)


class EmbeddedWorker:
    def __init__(self):
        # The thread pool cannot terminate a running task: cancellation is cooperative (tasks check their
        # job record at every progress step). No remote control, heartbeats or gossip: one process, one worker.
        app.conf.worker_enable_remote_control = False
        # pool threads look tasks up in the *default* app (thread-local current app), as the celery CLI sets up
        app.set_default()
        self.controller = WorkController(app=app, pool_cls="threads", concurrency=get_settings().worker_concurrency,
                                         hostname="embedded@genrobust", without_heartbeat=True, without_mingle=True,
                                         without_gossip=True, loglevel="INFO")
        self.thread = threading.Thread(target=self._run, name="genrobust-worker", daemon=True)

    def _run(self) -> None:
        try:
            self.controller.start()
        except Exception:  # keep the API up; /health reports the worker as down
            log.exception("embedded worker stopped")

    def start(self) -> "EmbeddedWorker":
        self.thread.start()
        return self

    def alive(self) -> bool:
        return self.thread.is_alive()

    def stop(self, timeout: float = 10.0) -> None:
        self.controller.stop(in_sighandler=False, exitcode=0)
        self.thread.join(timeout)
