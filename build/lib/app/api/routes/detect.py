from fastapi import APIRouter, Request

from app import images
from app.api.deps import SettingsDep, inline_slot, known_model
from app.api.routes import errors
from app.schemas import DetectRequest, DetectResponse
from worker import calls

router = APIRouter(tags=["inference"])


@router.post("/detect", response_model=DetectResponse, responses=errors(400, 413, 422, 503))
def detect(req: DetectRequest, settings: SettingsDep, request: Request):
    """Flag adversarial images with a detector fitted for the model (genrobust.detection): score, threshold,
    verdict and the model's prediction per image. 422 for models where detection does not apply (the
    discriminative DFX and DBX have no density of x) or that have no fitted detector."""
    x = images.decode(req, settings.max_images)
    known_model(req.model)
    with inline_slot(request):
        return calls.detect(req.model, req.detector, x, seed=req.seed)
