"""The genrobust web service (FastAPI): classify, attack and detect inline; training, sweeps and the study as
Celery jobs (``worker``). No ML logic here: validate, enqueue, call genrobust, serialise."""
