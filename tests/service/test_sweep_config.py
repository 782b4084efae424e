"""A sweep request is the job's config, and the study job's config is StudyConfig's (issue 24): no field is
copied by hand, so a field added to either schema cannot be dropped on the way."""

from app.schemas import SweepRequest
from genrobust.study import StudyConfig

BODY = {"models": ["fmnist-dfz", "fmnist-gfz"], "limit": 7, "seed": 3, "eval_samples": 5,
        "attacks": [{"attack": "fgsm", "params": {"eps": 0.2}}, {"attack": "pgd", "params": {"steps": 3}}]}


def test_the_sweep_config_is_the_request():
    req = SweepRequest(**BODY, chunk_size=4)
    config = req.sweep_config()
    assert SweepRequest(**config) == req
    assert set(config) == set(SweepRequest.model_fields) - {"study", "study_options"}


def test_the_study_config_carries_every_request_field_into_study_config():
    req = SweepRequest(**BODY, study=True, study_options={"preset": "quick", "adaptive": False})
    study = StudyConfig(**req.study_config(), out=".")
    assert (study.models, study.attacks) == (BODY["models"], ["fgsm", "pgd"])
    assert (study.limit, study.seed, study.eval_samples) == (7, 3, 5)
    assert study.params["fgsm"]["eps"] == 0.2 and study.params["pgd"]["steps"] == 3
    # every attack's full parameter set travels, defaults included, so the study runs what the request showed
    assert study.params["pgd"] == req.attacks[1].params.model_dump(mode="json")
    assert (study.preset, study.adaptive) == ("quick", False)
