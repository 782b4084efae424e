"""Enqueueing jobs (used by the API): create the job record, send the tasks, remember their ids so a
cancellation can revoke them."""

from __future__ import annotations

import logging
from typing import Any

import torch
from celery import chord, uuid

from genrobust.attacks import make_attack
from genrobust.errors import GenrobustError
from genrobust.device import resolve_device
from genrobust.robustness import chunk_bounds, default_chunk_size
from worker.settings import get_service_settings as get_settings
from worker import tasks
from worker.celery import app
from worker.jobs import JobRecord, job_store

log = logging.getLogger(__name__)


class BrokerUnavailable(RuntimeError):
    """The job could not be enqueued; its record is marked failed."""


def _enqueue(job: JobRecord, send) -> JobRecord:
    try:
        send()
    except Exception as exc:  # connection refused, timeouts: kombu/redis/sqlalchemy raise their own types
        log.error("could not enqueue job %s: %s", job.id, exc)
        job_store().update(job.id, state="failed", error="could not enqueue the job: the broker is unreachable")
        raise BrokerUnavailable(str(exc)) from None
    return job


def _send(signature, job: JobRecord) -> JobRecord:
    task_id = uuid()
    job_store().update(job.id, task_ids=[task_id])
    return _enqueue(job, lambda: signature.apply_async(task_id=task_id))


def train(request: dict[str, Any]) -> JobRecord:
    job = job_store().create("train", request)
    return _send(tasks.train.s(job_id=job.id, **request), job)


def attack(request: dict[str, Any], summary: dict[str, Any]) -> JobRecord:
    """An /attack request too large to run inline; ``summary`` (without the images) is what the record shows."""
    job = job_store().create("attack", summary)
    return _send(tasks.attack.s(job_id=job.id, request=request), job)


def study(request: dict[str, Any]) -> JobRecord:
    job = job_store().create("study", request)
    return _send(tasks.study.s(job_id=job.id, request=request), job)


def jobs_device() -> torch.device:
    """The device of the workers that run the jobs (GENROBUST_JOBS_DEVICE), not the API's: chunks are sized
    for where they run. ``auto``: the API's own device, right when both share a machine."""
    s = get_settings()
    return torch.device(s.jobs_device) if s.jobs_device != "auto" else resolve_device(s.device)


def sweep(request: dict[str, Any]) -> JobRecord:
    """models x attacks, each over ``limit`` images cut into chunks: one task per chunk (a chord header, run
    by any number of workers), merged by one callback. Chunks follow genrobust.robustness.chunk_bounds, so
    the result equals ``run_attack_chunked`` in one process with the same chunk size. The chunk size is the
    request's, else GENROBUST_SWEEP_CHUNK, else sized per attack to its cost and the device."""
    fixed = request.get("chunk_size") or get_settings().sweep_chunk
    device = jobs_device()
    chunks = [fixed or default_chunk_size(make_attack(a["attack"], a["params"]), device) for a in request["attacks"]]
    bounds = [chunk_bounds(request["limit"], c) for c in chunks]  # per attack
    pairs = [(m, i) for m in request["models"] for i in range(len(request["attacks"]))]
    n_tasks, most = sum(len(bounds[i]) for _, i in pairs), get_settings().sweep_max_tasks
    if n_tasks > most:  # each task is a broker message and a result: bound what one request can enqueue
        raise GenrobustError(f"this sweep would be {n_tasks} tasks (models x attacks x chunks), at most {most} "
                             "(GENROBUST_SWEEP_MAX_TASKS): use a larger chunk_size, fewer images, models or attacks")
    job = job_store().create("sweep", request | {"chunk_size": fixed, "chunk_sizes": chunks}, total=n_tasks)
    header = [tasks.sweep_chunk.s(job_id=job.id, model=m, attack_index=i, attack=request["attacks"][i]["attack"],
                                  params=request["attacks"][i]["params"], start=s, stop=e, split=request["split"],
                                  seed=request["seed"], eval_samples=request["eval_samples"]).set(task_id=uuid())
              for m, i in pairs for s, e in bounds[i]]
    callback = tasks.sweep_merge.s(job_id=job.id, pairs=pairs, starts=[[s for s, _ in b] for b in bounds],
                                   seed=request["seed"]).set(task_id=uuid())
    job_store().update(job.id, task_ids=[h.id for h in header] + [callback.id])
    return _enqueue(job, lambda: chord(header)(callback))


def cancel(job_id: str) -> bool:
    """Mark the job cancelled and revoke its tasks (terminating running ones on prefork workers). Tasks
    also check the record when they start and at every epoch/progress step, which covers workers that
    cannot terminate (the embedded thread pool) and workers started after the revoke."""
    store = job_store()
    if not store.update(job_id, state="cancelled"):
        return False
    ids = store.task_ids(job_id)
    if ids and get_settings().redis_url:
        try:
            app.control.revoke(ids, terminate=True, signal="SIGTERM")
        except Exception as exc:  # the record says cancelled; tasks will stop at their next check
            log.warning("revoke of job %s failed: %s", job_id, exc)
    return True
