"""Request and response bodies. Attack parameters, model architecture and training hyper-parameters are the
library's own pydantic models (one definition each), so their limits and descriptions appear in OpenAPI as
they are in genrobust."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import (BaseModel, ConfigDict, Discriminator, Field, ValidationError, WithJsonSchema, create_model,
                      model_validator)

from genrobust.attacks import ATTACKS
from genrobust.data import NUM_CLASSES
from genrobust.detection import DETECTORS
from genrobust.errors import GenrobustError, validation_message
from genrobust.models import ModelConfig
from genrobust.store import NAME_RE
from genrobust.replicates import REPLICATES_MAX
from genrobust.study import StudyConfig
from genrobust.training import TrainConfig
from genrobust import fields
from worker.jobs import State

ModelName = Annotated[str, Field(pattern=NAME_RE.pattern, max_length=64, examples=["fmnist-gfz"],
                                 description="A stored model (see GET /models): 1-64 characters a-z 0-9 . _ -.")]
Seed = Annotated[fields.Seed, Field(description="Seeds the model's noise: the same request gives the same answer.")]
Samples = Annotated[fields.Samples, Field(description=f"K importance samples per class (1-{fields.SAMPLES_MAX}).")]
Label = Annotated[int, Field(ge=0, lt=NUM_CLASSES)]

_PIXEL = {"type": "number", "minimum": 0, "maximum": 1}
_ROWS = {"type": "array", "items": {"type": "array", "items": _PIXEL, "minItems": 28, "maxItems": 28},
         "minItems": 28, "maxItems": 28}
# Validated as plain nested lists and converted with numpy (fast, and its shape errors are the clear ones).
NestedImages = Annotated[list[Any], WithJsonSchema({
    "type": "array", "minItems": 1,
    "items": {"anyOf": [_ROWS, {"type": "array", "items": _ROWS, "minItems": 1, "maxItems": 1}]},
    "description": "Images as nested lists, N x 28 x 28 or N x 1 x 28 x 28 floats in [0, 1] (0 = black). "
                   "At most GENROBUST_MAX_IMAGES (default 256) per request."})]
PngImages = Annotated[list[Annotated[str, Field(max_length=1_000_000)]], Field(
    min_length=1, description="Images as base64-encoded 28 x 28 PNGs (8-bit grayscale; other modes are converted "
                              "to grayscale). At most GENROBUST_MAX_IMAGES (default 256) per request.")]


class ImagesIn(BaseModel):
    """Exactly one of ``images`` and ``images_png``."""

    model_config = ConfigDict(extra="forbid")

    images: NestedImages | None = None
    images_png: PngImages | None = None

    @model_validator(mode="after")
    def _one_kind(self):
        if (self.images is None) == (self.images_png is None):
            raise ValueError("give exactly one of 'images' (nested lists) and 'images_png' (base64 PNGs)")
        return self


class ErrorBody(BaseModel):
    detail: str = Field(description="What is wrong, in one line.")


# ------------------------------------------------------------------ classify
class ClassifyRequest(ImagesIn):
    model: ModelName
    samples: Samples = 10
    seed: Seed = 0


class ClassifyResponse(BaseModel):
    predictions: list[int] = Field(description="argmax_c log p(x, y_c) per image.")
    probabilities: list[list[float]] = Field(description="p(y | x) per image and class (softmax of log_joint).")
    log_joint: list[list[float]] = Field(description="Importance-sampled log p(x, y_c) per image and class "
                                                     "(for the discriminative DFX/DBX: log p(y|x) up to a constant).")


# ------------------------------------------------------------------ attacks
def _attack_variants(base: type[BaseModel], suffix: str) -> Any:
    """One model per registered attack, tagged by ``attack``, its ``params`` the attack's own Params; a
    discriminated union of them (so an unknown attack or a bad parameter is a clear 422)."""
    variants = []
    for name, cls in ATTACKS.items():
        label = cls.Params.__name__.removesuffix("Params") or name
        doc = (cls.__doc__ or "").strip().split("\n")[0]
        # an attack with a required parameter (transfer: its source) needs params; the others default them
        required = any(f.is_required() for f in cls.Params.model_fields.values())
        params = (Field(description=f"Parameters of {name} (required ones must be given).") if required else
                  Field(default_factory=cls.Params, description=f"Parameters of {name} (defaults when omitted)."))
        variants.append(create_model(
            f"{label}{suffix}", __base__=base,
            attack=(Literal[name], Field(description=f"{name}: {doc}")),
            params=(cls.Params, params)))
    return Annotated[Union[tuple(variants)], Discriminator("attack")]


class AttackBase(ImagesIn):
    model: ModelName
    labels: list[Label] | None = Field(None, description="True labels, one per image (0-9). Omitted: the "
                                                         "model's own predictions are attacked.")
    seed: Seed = 0
    eval_samples: Samples = Field(10, description=f"K of the fresh evaluation that judges success (1-{fields.SAMPLES_MAX}).")


AttackRequest = _attack_variants(AttackBase, "AttackRequest")


class AttackResponse(BaseModel):
    adversarial_images: list[list[list[float]]] = Field(description="N x 28 x 28 in [0, 1].")
    labels: list[int] = Field(description="The labels attacked (given, or the model's predictions).")
    predictions_before: list[int] = Field(description="Fresh-noise predictions on the clean images.")
    predictions_after: list[int] = Field(description="Fresh-noise predictions on the adversarial images.")
    success: list[bool] = Field(description="Correct before and wrong after, per image.")
    l2: list[float] = Field(description="||adversarial - clean||_2 per image.")
    linf: list[float] = Field(description="||adversarial - clean||_inf per image.")
    seconds: float = Field(description="Attack time (without the evaluation).")
    queries: list[int] | None = Field(description="Model evaluations per image (black-box attacks).")
    p_misclassified: list[float] | None = Field(None, description="Per image, the fraction of R = 10 further fresh "
                                                                  "evaluations that misclassify the adversarial.")
    summary: dict[str, Any] = Field(description="The library's AttackReport without per-image arrays "
                                                "(success_rate from one fresh evaluation; misclassification_"
                                                "probability and robust_accuracy from R = 10).")


class JobAccepted(BaseModel):
    job_id: str = Field(description="Poll GET /jobs/{job_id}.")
    state: State = "queued"
    detail: str = ""


# ------------------------------------------------------------------ detect
class DetectRequest(ImagesIn):
    model: ModelName
    detector: Literal[tuple(DETECTORS)] = Field(  # type: ignore[valid-type]
        "logit", description="logit (the study's: log p(x, F(x)) against per-class thresholds), marginal "
                             "(log p(x) against one threshold) or kl (KL(pbar_F(x) || p(y|x)) against per-class "
                             "thresholds); all calibrated to 5% false positives on held-out clean images.")
    seed: Seed = 0


class DetectResponse(BaseModel):
    is_adversarial: list[bool]
    scores: list[float] = Field(description="The detector's score per image: log p(x, F(x)) for logit, log p(x) "
                                            "for marginal (flagged below the threshold), the KL divergence for "
                                            "kl (flagged above it).")
    thresholds: list[float] = Field(description="The fitted threshold of each image's predicted class.")
    predictions: list[int] = Field(description="The model's prediction per image.")


# ------------------------------------------------------------------ jobs
class TrainRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    config: ModelConfig = Field(description="Architecture (structure and sizes), as in a model card.")
    training: TrainConfig = Field(default_factory=TrainConfig, description="Training hyper-parameters.")
    name: ModelName | None = Field(None, description="Store name (default fmnist-<structure>); an existing "
                                                     "model of that name is replaced when training ends.")
    restart: bool = Field(False, description="Discard an unfinished run of the same name instead of resuming it.")
    replicates: int = Field(1, ge=1, le=REPLICATES_MAX, description=(
        "Train a replicate set: seeds training.seed onwards of this recipe, named <name>, <name>-s1, ... (one job, "
        "progress over the whole set). Trained members are kept and unfinished ones resume; a stored member "
        "with another recipe is refused (409). 1: one model, replaced when training ends."))


class AttackSpecBase(BaseModel):
    model_config = ConfigDict(extra="forbid")


AttackSpec = _attack_variants(AttackSpecBase, "Spec")


class SweepRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    models: list[ModelName] = Field(min_length=1, max_length=20, description="Stored models (1-20).")
    attacks: list[AttackSpec] = Field(min_length=1, max_length=20, description="Attacks with parameters (1-20).")
    limit: int = Field(100, ge=1, le=10_000, description="Images: the first N of the split.")
    split: Literal["test", "validation"] = "test"
    seed: Seed = 0
    eval_samples: Samples = Field(10, description=f"K of the fresh evaluation (1-{fields.SAMPLES_MAX}).")
    chunk_size: int | None = Field(None, ge=1, le=10_000, description="Images per parallel task (default "
                                                                      "GENROBUST_SWEEP_CHUNK).")
    study: bool = Field(False, description="Run the full `reproduce` study (genrobust.study: tables with "
                                           "intervals and paired comparisons, detection, curves, figures, the "
                                           "answer) on these models and attacks (with their params), seed and "
                                           "eval_samples, limit capping every image count, instead of a plain sweep.")
    study_options: dict[str, Any] = Field(default_factory=dict, description="With study: further fields of "
                                          "genrobust.study.StudyConfig (preset, limits, clean_limit, fpr, fit_limit, "
                                          "adaptive, adaptive_params, curves, curve_eps, eval_draws, chunk_size; the "
                                          "primary endpoint's primary, replicates, train_missing, matched; masking), "
                                          "validated by it.")

    def study_config(self) -> dict[str, Any]:
        """With ``study``: the study job's config, this request's fields in StudyConfig's names (validated by it
        now, so a bad one is a 4xx and not a failed job). The study takes one parameter set per attack."""
        names = [a.attack for a in self.attacks]
        if len(set(names)) < len(names):
            raise GenrobustError("study: each attack at most once (the study runs one parameter set per attack; "
                                 "use a plain sweep to compare parameter sets)")
        if "out" in self.study_options:
            raise GenrobustError("study_options.out: the service chooses the output folder (under the data dir)")
        config = {**self.study_options, "models": self.models, "attacks": names,
                  "params": {a.attack: a.params.model_dump(mode="json") for a in self.attacks},
                  **self.model_dump(mode="json", include={"limit", "seed", "eval_samples"})}
        try:
            StudyConfig(**config, out=".")
        except ValidationError as exc:
            raise GenrobustError(f"study: {validation_message(exc)}") from None
        return config

    def sweep_config(self) -> dict[str, Any]:
        """Without ``study``: the sweep job's config is the request itself."""
        if self.study_options:
            raise GenrobustError("study_options only apply with study: true")
        return self.model_dump(mode="json", exclude={"study", "study_options"})


class HealthResponse(BaseModel):
    status: Literal["ok", "degraded"]
    mode: Literal["embedded", "redis"]
    broker: str = Field(description="'ok' or what is wrong with the broker / result store.")
    worker: str = Field(description="The embedded worker's state, or 'external' (Redis mode).")
    models: int = Field(description="Number of stored models.")
