from typing import Annotated

from fastapi import APIRouter, Body, Request
from fastapi.responses import JSONResponse

from app import images
from app.api.deps import ApiKeyValue, SettingsDep, check_api_key, inline_slot, known_model
from app.api.routes import errors
from app.api.routes.jobs import JOB_LINKS
from app.schemas import AttackRequest, AttackResponse, JobAccepted
from genrobust.attacks import make_attack
from worker import calls, submit

router = APIRouter(tags=["inference"])


@router.post("/attack", response_model=AttackResponse,
             responses={202: {"model": JobAccepted, "description": "Too much work to run inline: queued as a job "
                                                                   "(needs X-API-Key when configured).",
                              "links": JOB_LINKS},
                        **errors(400, 401, 413, 422, 503)})
def attack(req: Annotated[AttackRequest, Body()], settings: SettingsDep, request: Request,
           api_key: ApiKeyValue = None):
    """Attack images of a stored model with one of the library's attacks (parameters: the attack's own
    schema, e.g. FGSMParams). Success is judged by a fresh evaluation of the model with independent noise.
    Requests whose work (images x the attack's estimated passes per image) exceeds
    GENROBUST_INLINE_ATTACK_WORK are not run inline: 202 with a job id whose result has this same shape."""
    x = images.decode(req, settings.max_images)
    known_model(req.model)
    params = req.params.model_dump(mode="json")
    work = make_attack(req.attack, params).cost(len(x))
    call = dict(model=req.model, attack=req.attack, params=params, labels=req.labels, seed=req.seed,
                eval_samples=req.eval_samples)
    if work > settings.inline_attack_work:
        check_api_key(settings, api_key)
        job = submit.attack(call | {"images": x.squeeze(1).tolist()}, call | {"n": len(x), "work": work})
        detail = (f"work {work:.0f} > inline limit {settings.inline_attack_work:.0f} "
                  "(GENROBUST_INLINE_ATTACK_WORK): queued as a job")
        return JSONResponse(JobAccepted(job_id=job.id, detail=detail).model_dump(), status_code=202)
    with inline_slot(request):
        return calls.attack(images=x, **call)
