"""Celery tasks: one step of one run, the recovery sweep that re-drives orphaned runs, and a case's steps."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

import redis
from celery import Task

from workers import case, runtime
from workers.case import CaseIndex
from workers.celery_app import QUEUE, celery_app
from workers.errors import Refused, Service, classify
from workers.locks import run_lease
from workers.pipeline import FINAL, advance
from workers.priority import RunPriorities, queue_keys
from workers.runstore import RunStatus
from workers.scheduler import ScheduledStep
from workers.stages import case as case_stage

log = logging.getLogger(__name__)

_T = TypeVar("_T")

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
        if token is not None:
            scheduler.mark_started(run_id, token)
        delay = advance(ctx, run_id)
    if delay is not None:
        schedule(run_id, delay)


def schedule(run_id: str, delay: float = 0.0) -> None:
    """Queue the run's next step, due in `delay` s, superseding any other scheduled step of the run."""
    delay = max(0.0, delay)
    token = runtime.scheduler().new_token(run_id, delay)
    priority = RunPriorities(runtime.redis_client()).of(run_id)
    run_step.apply_async((run_id, token), countdown=delay, priority=priority)


def due_time(step: ScheduledStep | None, changed_at: float) -> float:
    """When the run's next step was due: as scheduled, or (never scheduled) its last change."""
    return step.due_at if step is not None else changed_at


def is_stalled(
    step: ScheduledStep | None, changed_at: float, *, now: float, slack: float, queued: int
) -> bool:
    """Whether recovery should re-drive a run no worker holds (see `recover_runs`); `changed_at` is
    the record's `updated_at`."""
    # A run that changed within the last lease is being worked on, even if a heartbeat was late.
    if now < max(due_time(step, changed_at), changed_at) + slack:
        return False
    # A step no worker took is waiting in the queue while the queue holds messages.
    return step is None or step.started or queued == 0


def take_recovery_turn(client: redis.Redis, prefix: str, seconds: float, holder: str) -> bool:
    """Whether this worker sweeps now: one sweep per interval for the whole deployment.

    Every worker offers to sweep every interval and the first to set the turn key does; the key
    expires after `seconds` by itself (never released), so a worker that dies mid-sweep hands the
    turn on within one interval and recovery is no slower than with every worker sweeping. Before,
    each of P workers read every unfinished run: Redis commands and CPU grew as pods x runs in
    flight, for nothing. `holder` names the worker (host and pid) for whoever looks at the key.
    """
    key = f"{prefix}:recovery-turn"
    return bool(client.set(key, holder, nx=True, px=max(1, int(seconds * 1000))))


@celery_app.task(name=RECOVER_TASK)
def recover_runs(grace: float | None = None) -> int:
    """Re-drive runs whose scheduled step is overdue and that no worker holds (a worker died).

    A step is overdue `grace` seconds (default: one lease) after it was due and
    after the run last changed: a run waiting out a backoff or a `Retry-After` is
    left alone until then, and a run whose worker died moves again once its lease
    has lapsed. A step no worker has started is left alone while the step queue
    holds messages: it is waiting its turn there (`workers.scheduler`). Re-driving
    supersedes the lost step's token, so a late redelivery of it does nothing.

    One worker a turn (`take_recovery_turn`) runs this every third of a lease over every unfinished
    run, so it reads only what the decision needs, a page of runs per round trip
    (`RunStore.last_changes`, `StepScheduler.held_and_current`).
    """
    ctx = runtime.context()
    client = runtime.redis_client()
    scheduler = runtime.scheduler()
    slack = ctx.settings.lease_seconds if grace is None else grace
    now = time.time()
    count = 0
    queued = sum(int(client.llen(key)) for key in queue_keys(QUEUE))
    for status in RunStatus:
        if status in FINAL:
            continue
        for page in ctx.store.last_changes(status):
            views = scheduler.held_and_current([run_id for run_id, _ in page])
            for (run_id, changed_at), (held, step) in zip(page, views, strict=True):
                if held or not is_stalled(step, changed_at, now=now, slack=slack, queued=queued):
                    continue
                due_at = due_time(step, changed_at)
                log.info("re-driving a stalled run", extra={"run_id": run_id, "stage": status.value})
                ctx.store.append_event(run_id, "recovered", overdue_seconds=int(now - due_at))
                schedule(run_id)
                count += 1
    return count


# A case's fan-out and summary refreshes wait for each other (one lock per case): this often, this long.
_CASE_LOCK_RETRY_SECONDS = 1.0
_CASE_MAX_RETRIES = 30


@celery_app.task(name=case.FAN_OUT_TASK, bind=True, acks_late=True, max_retries=_CASE_MAX_RETRIES)
def fan_out_case(self: Task, root_run_id: str) -> None:
    """List a case-scope run's case and start the runs of its H&E siblings (`workers.stages.case`)."""
    ctx = runtime.context()
    root = ctx.store.get(root_run_id)
    if root is None:
        return  # deleted before its case was listed
    started = _case_step(self, root_run_id, lambda cases: case_stage.fan_out(ctx, cases, root)) or []
    for run_id in started:
        schedule(run_id)


@celery_app.task(name=case.REFRESH_TASK, bind=True, acks_late=True, max_retries=_CASE_MAX_RETRIES)
def refresh_case(self: Task, root_run_id: str) -> None:
    """Rewrite a case summary after one of its runs ended; waits its turn behind the case's lock."""
    ctx = runtime.context()
    _case_step(self, root_run_id, lambda cases: case_stage.refresh(ctx, cases, root_run_id))


def _case_step(task: Task, root_run_id: str, work: Callable[[CaseIndex], _T]) -> _T | None:
    """`work` under the case's lock; retried with backoff when Sectra or Redis fail for now,
    dropped (and logged) when Sectra refuses: the slides' own runs go on either way."""
    ctx = runtime.context()
    cases = case.case_index(ctx.store)
    with run_lease(runtime.redis_client(), cases.lock_key(root_run_id), ctx.settings.lease_seconds) as held:
        if not held:
            raise task.retry(countdown=_CASE_LOCK_RETRY_SECONDS)
        try:
            return work(cases)
        except Exception as exc:
            kind = classify(exc, network_service=Service.sectra)
            extra = {"run_id": root_run_id, "error_type": type(exc).__name__}
            if isinstance(kind, Refused):
                log.warning("a case step was refused; the case summary is not updated", extra=extra)
                ctx.store.append_event(root_run_id, "case_step_refused", error_type=type(exc).__name__)
                return None
            log.warning("a case step failed; retrying", extra=extra)
            countdown = min(60.0, 2.0 ** min(task.request.retries, 6))
            raise task.retry(exc=exc, countdown=countdown) from exc
