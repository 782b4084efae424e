"""The embedded default: a Celery worker in a thread of the API process, running the same tasks from the
SQLite broker. Started by ``genrobust serve`` when no Redis is configured."""

from __future__ import annotations

import logging
import threading

from celery.worker import WorkController

from worker.settings import get_service_settings as get_settings
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
        try:
            recover_interrupted()
        except Exception:  # serve anyway; the jobs concerned keep their state
            log.exception("could not recover the jobs interrupted by the last stop")
        self.thread.start()
        return self

    def alive(self) -> bool:
        return self.thread.is_alive()

    def stop(self, timeout: float = 10.0) -> None:
        self.controller.stop(in_sighandler=False, exitcode=0)
        self.thread.join(timeout)


def recover_interrupted() -> None:
    """Jobs left "running" by an earlier process of the embedded service were interrupted (it was killed or
    crashed: its one worker ran in that process), and the SQLite broker never hands their taken messages out
    again. Training and studies are sent again and resume from what they saved (the last epoch, the study's
    finished entries); sweeps and inline-sized attacks, whose partial results are not kept, are marked
    failed with the reason. Called before this process's worker starts, so nothing else runs them."""
    from worker import submit, tasks
    from worker.jobs import job_store

    store = job_store()
    for job in store.running():
        if job.kind == "train":
            log.warning("job %s (train) was interrupted by a restart: resuming it from its last saved epoch", job.id)
            store.update(job.id, state="queued")
            submit._send(tasks.train.s(job_id=job.id, **(job.request | {"restart": False})), job)
        elif job.kind == "study":
            log.warning("job %s (study) was interrupted by a restart: resuming it", job.id)
            store.update(job.id, state="queued")
            submit._send(tasks.study.s(job_id=job.id, request=job.request), job)
        else:
            log.warning("job %s (%s) was interrupted by a restart: marked failed", job.id, job.kind)
            store.update(job.id, state="failed", error=f"interrupted: the service stopped while this {job.kind} "
                                                       "job ran and its partial results are not kept; submit it again")
