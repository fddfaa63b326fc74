"""A Celery worker app with the bridge's real broker settings whose step task only records its run id.

`tests/workers/test_priority.py` runs it as a real worker process: the messages it consumes are the
ones `workers.tasks.schedule` publishes, so the order it records is the order the bridge's own
workers would take the runs in.
"""

from __future__ import annotations

import os

import redis

from workers.celery_app import make_celery

PROBE_LIST = "test-priority:taken"
# `workers.tasks.STEP_TASK`, spelled out: importing `workers.tasks` here would register the real
# step task in this worker too (Celery tasks are shared between apps).
STEP_TASK = "bridge.run.step"

# The test gives the worker process its REDIS_URL; importing this module for the names above
# (at collection, before any REDIS_URL is set) must not need one, and connects to nothing.
_URL = os.environ.get("REDIS_URL", "redis://localhost:6379/0")
app = make_celery(_URL)
app.conf.include = []
_redis = redis.Redis.from_url(_URL)


@app.task(name=STEP_TASK, shared=False)
def step(run_id: str, token: str | None = None) -> None:
    _redis.rpush(PROBE_LIST, run_id)
