"""The service layer under the API: job records, the inline compute and the Celery workers for long jobs
(training, sweeps, the study), all thin wrappers over the ``genrobust`` package. Importing it configures
nothing: the Celery app lives in ``worker.celery`` (``celery -A worker worker`` finds it there) and is
configured when the API starts, when a worker starts, or when a job is first sent."""
