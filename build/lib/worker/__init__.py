"""Celery workers for genrobust's long jobs (training, sweeps, the study). ``celery -A worker worker`` finds
the app in ``worker.celery``; the tasks are thin wrappers over the ``genrobust`` package."""

from worker.celery import app

__all__ = ["app"]
