from fastapi import APIRouter, Response

from app import images
from app.api.deps import BatcherDep, SettingsDep, known_model
from app.api.routes import errors
from app.schemas import ClassifyRequest, ClassifyResponse

router = APIRouter(tags=["inference"])


@router.post("/classify", response_model=ClassifyResponse, responses=errors(400, 413, 422, 503))
async def classify(req: ClassifyRequest, settings: SettingsDep, batcher: BatcherDep, response: Response):
    """Classify images with a stored model: predictions, p(y|x) and the importance-sampled log p(x, y_c)
    per class (K = ``samples``). Concurrent requests are batched into one forward pass; each keeps its own
    seeded noise, so the answer does not depend on the batching. Headers X-Batch-Images and
    X-Inference-Ms tell which pass served the request."""
    x = images.decode(req, settings.max_images)
    known_model(req.model)
    logits, info = await batcher.logits(req.model, req.samples, req.seed, x)
    response.headers["X-Batch-Images"] = str(info.images)
    response.headers["X-Inference-Ms"] = f"{info.seconds * 1000:.1f}"
    return ClassifyResponse(predictions=logits.argmax(1).tolist(), probabilities=logits.softmax(1).tolist(),
                            log_joint=logits.tolist())
