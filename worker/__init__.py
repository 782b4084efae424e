"""The service layer under the API: job records, the inline compute and the Celery workers for long jobs
(training, sweeps, the study), all thin wrappers over the ``genrobust`` package. Importing it (or the job
records, the inline compute, the settings) imports no Celery: the Celery app lives in ``worker.celery``
(``celery -A worker worker`` finds it there), configured when the worker, the API or job submission loads it."""
