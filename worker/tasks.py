"""Thin Celery tasks over genrobust. Each task carries its job id, marks the job running, reports progress
to the job record, stops when the job was cancelled, and records its result or error.

Every task is ``acks_late`` with ``reject_on_worker_lost`` (see worker.celery): a worker killed mid-task
leaves its message unacknowledged and another worker runs the task again from the start (training resumes
from its last saved epoch). Re-running is safe because results are deterministic functions of the request.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from celery import Task, signals
from celery.exceptions import Ignore

from genrobust.device import is_out_of_memory
from genrobust.errors import GenrobustError
from worker.settings import get_service_settings as get_settings
from worker import calls, runtime
from worker.celery import app
from worker.jobs import job_store

log = logging.getLogger(__name__)


class JobCancelled(Ignore):
    """Raised inside a task whose job was cancelled: the message is acknowledged, nothing is recorded."""


def checkpoint(job_id: str) -> None:
    if job_store().cancelled(job_id):
        raise JobCancelled()


def public_error(exc: BaseException) -> str:
    """A job's error message: a user-fixable problem verbatim, anything else without internals."""
    if isinstance(exc, GenrobustError):
        return str(exc)
    if is_out_of_memory(exc):
        return (f"out of memory on {runtime.device()}: lower the work per task (the sweep's chunk_size or "
                f"GENROBUST_SWEEP_CHUNK, the training batch_size, the study's limit) or run on a larger device")
    return f"internal error ({type(exc).__name__}); see the worker log"


class JobTask(Task):
    def before_start(self, task_id, args, kwargs):
        if not job_store().start(kwargs["job_id"]):
            raise JobCancelled()

    def on_failure(self, exc, task_id, args, kwargs, einfo):
        if not isinstance(exc, Ignore):
            job_store().update(kwargs["job_id"], state="failed", error=public_error(exc))
        if is_out_of_memory(exc):
            import torch
            torch.cuda.empty_cache()  # hand the cached blocks back so the next task starts clean


def task(name: str):
    return app.task(name=f"genrobust.{name}", base=JobTask, bind=True)


# ------------------------------------------------------------------ process set-up
@signals.worker_init.connect
def _remember_concurrency(sender=None, **_):
    # the prefork children inherit this and split the cores among themselves
    os.environ["GENROBUST_WORKER_PROCESSES"] = str(getattr(sender, "concurrency", 1) or 1)


@signals.worker_process_init.connect
def _child_setup(**_):
    runtime.set_threads(share=int(os.environ.get("GENROBUST_WORKER_PROCESSES", "1")))


# ------------------------------------------------------------------ tasks
@task("train")
def train(self, *, job_id: str, config: dict, training: dict, name: str, restart: bool, replicates: int = 1) -> dict:
    from genrobust.models import ModelConfig
    from genrobust.replicates import train_replicates
    from genrobust.training import TrainConfig, Trainer

    store = job_store()

    def on_epoch(epoch: int, epochs: int) -> None:
        store.update(job_id, done=epoch, total=epochs + 1)  # the final evaluation is the last step
        checkpoint(job_id)

    # a re-delivered task (its worker died) resumes the saved run instead of restarting it
    restart = restart and not (self.request.delivery_info or {}).get("redelivered")
    if replicates > 1:  # one job over the set: progress counts epochs of every seed
        cards = train_replicates(ModelConfig(**config), TrainConfig(**training), replicates, name,
                                 store=runtime.store(), progress=False, restart=restart,
                                 on_epoch=lambda done, total: (store.update(job_id, done=done, total=total),
                                                               checkpoint(job_id)),
                                 device=runtime.device())
        models = [c["name"] for c in cards]
        store.update(job_id, state="succeeded", result={"model": models[0], "models": models, "cards": cards})
        return {"models": models}
    trainer = Trainer(ModelConfig(**config), TrainConfig(**training), name, store=runtime.store(),
                      progress=False, restart=restart, on_epoch=on_epoch, device=runtime.device())
    card = trainer.fit()
    store.update(job_id, state="succeeded", result={"model": name, "card": card})
    return {"model": name}


@task("attack")
def attack(self, *, job_id: str, request: dict) -> dict:
    result = calls.attack(**request)
    job_store().update(job_id, state="succeeded", result=result)
    return {"n": len(result["success"])}


@task("sweep_chunk")
def sweep_chunk(self, *, job_id: str, model: str, attack_index: int, attack: str, params: dict, start: int,
                stop: int, split: str, seed: int, eval_samples: int, limit: int | None = None) -> dict:
    from genrobust.attacks import make_attack
    from genrobust.data import dataset_of
    from genrobust.robustness import run_attack_chunk

    net = runtime.load_model(model)
    images = runtime.dataset(dataset_of(runtime.store().card(model)), split)  # on the device, once per process
    report = run_attack_chunk(net, make_attack(attack, params), images.images, images.labels, start, stop,
                              seed=seed, eval_samples=eval_samples, model_name=model)
    job_store().advance(job_id)
    return {"model": model, "attack_index": attack_index, "start": start, "report": report.model_dump(mode="json")}


@task("sweep_merge")
def sweep_merge(self, chunks: list[dict], *, job_id: str, pairs: list[list], starts: list[list[int]],
                seed: int) -> dict:
    """``starts[i]``: the chunk starts of attack i (chunk sizes differ per attack)."""
    from genrobust.robustness import AttackReport, merge_reports

    # keyed, so a chunk that ran twice (re-delivered after a worker loss) counts once
    by_key = {(c["model"], c["attack_index"], c["start"]): c["report"] for c in chunks}
    reports = []
    for model, attack_index in pairs:
        missing = [s for s in starts[attack_index] if (model, attack_index, s) not in by_key]
        if missing:
            raise GenrobustError(f"sweep incomplete: {model} / attack {attack_index} lacks chunks at {missing}")
        reports.append(merge_reports([AttackReport(**by_key[(model, attack_index, s)]) for s in starts[attack_index]],
                                     seed).model_dump(mode="json"))
    job_store().update(job_id, state="succeeded", result={"reports": reports,
                                                                 "chunks": sum(len(starts[i]) for _, i in pairs)})
    return {"reports": len(reports)}


@task("study")
def study(self, *, job_id: str, request: dict) -> dict:
    from genrobust.study import StudyConfig, reproduce

    store = job_store()

    def progress(fraction: float) -> None:
        store.update(job_id, done=float(fraction), total=1.0)
        checkpoint(job_id)

    out = Path(get_settings().data_dir) / "studies" / job_id
    results = reproduce(StudyConfig(**request, out=out), store=runtime.store(), progress=progress,
                        device=runtime.device())
    # the answer and the tables (with verdicts) go in the job record; the report, figures and full results.json stay in `out`
    store.update(job_id, state="succeeded", result={"out": str(out), "seconds": results["seconds"],
                                                    "answer": results["answer"], "tables": results["tables"]})
    return {"out": str(out)}
