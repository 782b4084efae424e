import re

from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import JSONResponse

from app.api.deps import ApiKey, JobsDep, known_model
from app.api.routes import errors
from app.schemas import JobAccepted, SweepRequest, TrainRequest
from genrobust.errors import GenrobustError
from genrobust.replicates import plan_replicates
from genrobust.training import default_name
from worker import runtime, submit
from worker.jobs import JobRecord

router = APIRouter(prefix="/jobs", tags=["jobs"])
JOB_ID = re.compile(r"^[0-9a-f]{32}$")
# OpenAPI links: clients (and schemathesis' stateful tests) can follow a submission to its record
JOB_LINKS = {name: {"operationId": op, "parameters": {"job_id": "$response.body#/job_id"}}
             for name, op in (("GetJob", "get_job_jobs__job_id__get"),
                              ("CancelJob", "cancel_job_jobs__job_id__delete"))}
ACCEPTED = {"model": JobAccepted, "description": "Queued; poll GET /jobs/{job_id}.", "links": JOB_LINKS}


def _accepted(job: JobRecord) -> JSONResponse:
    return JSONResponse(JobAccepted(job_id=job.id).model_dump(), status_code=202)


@router.post("/train", status_code=202, response_model=JobAccepted, dependencies=[ApiKey],
             responses={202: ACCEPTED, **errors(400, 401, 409, 413, 422, 503)})
def train(req: TrainRequest):
    """Train a model (ELBO, best epoch by validation accuracy) as a job; progress is per epoch. The model is
    written atomically to the store when training ends. With ``replicates`` N > 1 the job trains the missing
    seeds of a replicate set (409 if a stored member has another recipe); progress counts epochs over the set.
    Needs X-API-Key when configured."""
    name = req.name or default_name(req.config.structure, req.training.dataset)
    if req.replicates > 1:
        try:  # a member stored with another recipe is refused now, not in the worker
            plan_replicates(req.config, req.training, req.replicates, name, runtime.store())
        except GenrobustError as exc:
            raise HTTPException(409, str(exc)) from None
    return _accepted(submit.train({"config": req.config.model_dump(mode="json"),
                                   "training": req.training.model_dump(mode="json"), "name": name,
                                   "restart": req.restart, "replicates": req.replicates}))


@router.post("/sweep", status_code=202, response_model=JobAccepted, dependencies=[ApiKey],
             responses={202: ACCEPTED, **errors(400, 401, 413, 422, 503)})
def sweep(req: SweepRequest):
    """Attack every model with every attack on the first ``limit`` images of a split. The images are cut into
    chunks that run as parallel tasks on all workers and are merged; progress is per chunk. The result (one
    AttackReport per model and attack) equals genrobust.robustness.run_attack_chunked with the same seed
    and chunk size. With ``study: true`` the full `reproduce` study runs instead. Needs X-API-Key when
    configured."""
    for m in req.models:
        known_model(m)
    if req.study:
        return _accepted(submit.study(req.study_config()))
    return _accepted(submit.sweep(req.sweep_config()))


@router.get("", response_model=list[JobRecord], responses=errors(422, 503))
def list_jobs(jobs: JobsDep, limit: int = Query(20, ge=1, le=200, description="How many (1-200).")):
    """Recent jobs, newest first."""
    return jobs.recent(limit)


def _get(jobs, job_id: str) -> JobRecord:
    record = jobs.get(job_id) if JOB_ID.match(job_id) else None
    if record is None:
        raise HTTPException(404, f"unknown job {job_id!r} (expired, or never submitted)")
    return record


@router.get("/{job_id}", response_model=JobRecord, responses=errors(404, 503))
def get_job(job_id: str, jobs: JobsDep):
    """A job's state (queued, running, succeeded, failed, cancelled), progress 0-1, result or error."""
    return _get(jobs, job_id)


@router.delete("/{job_id}", response_model=JobRecord, dependencies=[ApiKey], responses=errors(401, 404, 409, 503))
def cancel_job(job_id: str, jobs: JobsDep):
    """Cancel a job: its tasks are revoked (running ones terminated) and its state becomes cancelled. 409 if
    it already finished. Needs X-API-Key when configured."""
    record = _get(jobs, job_id)
    if not submit.cancel(job_id):
        raise HTTPException(409, f"job {job_id} already {jobs.get(job_id).state}")
    return jobs.get(job_id) or record
