"""The study in one command: `genrobust reproduce` (tables with intervals and paired comparisons, robustness
curves, the study's FGS reconstructed, ROC curves, a report that opens with its answer)."""

from genrobust.study.config import PRESETS, STUDY_ATTACKS, STUDY_MODELS, StudyConfig


def reproduce(*args, **kwargs):
    """See ``genrobust.study.runner.reproduce`` (imported on first use: it brings in matplotlib)."""
    from genrobust.study.runner import reproduce as run
    return run(*args, **kwargs)


__all__ = ["PRESETS", "STUDY_ATTACKS", "STUDY_MODELS", "StudyConfig", "reproduce"]
