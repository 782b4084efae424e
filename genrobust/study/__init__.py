"""The study in one command: `genrobust reproduce` (tables, figures, ROC curves, report)."""

from genrobust.study.config import DEFAULT_LIMIT, STUDY_ATTACKS, STUDY_MODELS, StudyConfig


def reproduce(*args, **kwargs):
    """See ``genrobust.study.runner.reproduce`` (imported on first use: it brings in matplotlib)."""
    from genrobust.study.runner import reproduce as run
    return run(*args, **kwargs)


__all__ = ["DEFAULT_LIMIT", "STUDY_ATTACKS", "STUDY_MODELS", "StudyConfig", "reproduce"]
