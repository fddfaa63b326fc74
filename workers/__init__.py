"""Settings, the Redis run store, the Celery app and the run pipeline."""
