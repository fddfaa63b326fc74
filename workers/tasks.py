"""Celery tasks: one step of one run, and the recovery sweep that re-drives orphaned runs."""

from __future__ import annotations

import logging
import time

from workers import runtime
from workers.celery_app import celery_app
from workers.locks import run_lease
from workers.pipeline import FINAL, advance
from workers.runstore import RunRecord, RunStatus
from workers.scheduler import ScheduledStep

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
    """Queue the run's next step, due in `delay` s, superseding any other scheduled step of the run."""
    delay = max(0.0, delay)
    token = runtime.scheduler().new_token(run_id, delay)
    run_step.apply_async((run_id, token), countdown=delay)


def due_time(step: ScheduledStep | None, record: RunRecord) -> float:
    """When the run's next step was due: as scheduled, or (never scheduled) its last change."""
    return step.due_at if step is not None else record.updated_at


@celery_app.task(name=RECOVER_TASK)
def recover_runs(grace: float | None = None) -> int:
    """Re-drive runs whose scheduled step is overdue and that no worker holds (a worker died).

    A step is overdue `grace` seconds (default: one lease) after it was due and
    after the run last changed: a run waiting out a backoff or a `Retry-After` is
    left alone until then, and a run whose worker died moves again once its lease
    has lapsed. Re-driving supersedes the lost step's token, so a late redelivery
    of it does nothing.
    """
    ctx = runtime.context()
    client = runtime.redis_client()
    scheduler = runtime.scheduler()
    slack = ctx.settings.lease_seconds if grace is None else grace
    now = time.time()
    count = 0
    for status in RunStatus:
        if status in FINAL:
            continue
        for record in ctx.store.list_runs(status=status, limit=10_000):
            if client.exists(scheduler.lease_key(record.run_id)):
                continue
            due_at = due_time(scheduler.current(record.run_id), record)
            # A run that changed within the last lease is being worked on, even if a heartbeat was late.
            if now < max(due_at, record.updated_at) + slack:
                continue
            log.info("re-driving a stalled run", extra={"run_id": record.run_id, "stage": status.value})
            ctx.store.append_event(record.run_id, "recovered", overdue_seconds=int(now - due_at))
            schedule(record.run_id)
            count += 1
    return count
