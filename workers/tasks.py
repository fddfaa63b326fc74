"""Celery tasks: one step of one run, and the recovery sweep that re-drives orphaned runs."""

from __future__ import annotations

import logging
import time

from workers import runtime
from workers.celery_app import celery_app
from workers.locks import run_lease
from workers.pipeline import FINAL, advance
from workers.runstore import RunStatus

log = logging.getLogger(__name__)

STEP_TASK = "bridge.run.step"
RECOVER_TASK = "bridge.runs.recover"


@celery_app.task(name=STEP_TASK, acks_late=True, reject_on_worker_lost=True)
def run_step(run_id: str, token: str | None = None) -> None:
    scheduler = runtime.scheduler()
    if not scheduler.is_current(run_id, token):
        return  # superseded by a newer chain (recovery or an operator retry)
    ctx = runtime.context()
    with run_lease(runtime.redis_client(), scheduler.lease_key(run_id), ctx.settings.lease_seconds) as held:
        if not held:
            return  # another worker is on this run; it schedules the next step itself
        delay = advance(ctx, run_id)
    if delay is not None:
        schedule(run_id, delay)


def schedule(run_id: str, delay: float = 0.0) -> None:
    """Queue the run's next step, superseding any other scheduled step of the same run."""
    token = runtime.scheduler().new_token(run_id)
    run_step.apply_async((run_id, token), countdown=max(0.0, delay))


@celery_app.task(name=RECOVER_TASK)
def recover_runs(stale_after: float = 120.0) -> int:
    """Re-drive runs that are not final but that no step has touched for a while (a worker died)."""
    ctx = runtime.context()
    client = runtime.redis_client()
    scheduler = runtime.scheduler()
    now = time.time()
    count = 0
    for status in RunStatus:
        if status in FINAL:
            continue
        for record in ctx.store.list_runs(status=status, limit=10_000):
            if now - record.updated_at < stale_after:
                continue
            if client.exists(scheduler.lease_key(record.run_id)):
                continue
            log.info("re-driving a stalled run", extra={"run_id": record.run_id, "stage": status.value})
            ctx.store.append_event(record.run_id, "recovered", stalled_seconds=int(now - record.updated_at))
            schedule(record.run_id)
            count += 1
    return count
