"""The run's state machine driver: do the stage the run is in, move it on, decide what happens next.

`advance` is what every Celery step calls. It returns how long to wait before
the next step (0 = at once) or None when the run needs no more steps (final,
deleted, or cancelled). What a failure means is decided by `workers.errors`
(refused, transient with the service that failed, or a bug); this module only
acts on the kind: fail in plain words, or retry the step after the client's
own retries gave up, a bounded number of times.

The pipeline, not the stages, decides what a stage needs first: a run resumed
on a pod that lacks its slide files fetches and de-identifies again before the
stage it is in (stages never call each other).

One stage may name a different next status: `downloading` returns `summarising`
when the run reads an earlier Strand job's results (`workers.reuse`; the state
machine allows that one shortcut). Such a run has no job of its own, so failing
or cancelling it never cancels the earlier job it read.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable

from sectra_adapter import cancelled_result, failure_result
from strand_client import NotFoundError, RateLimitError, StrandError
from workers import case, messages
from workers.context import PipelineContext
from workers.errors import Refused, RunCancelled, Service, Transient, classify
from workers.messages import STAGE_MESSAGES
from workers.observability import RUNS_FINISHED, STAGE_SECONDS, redact, run_context
from workers.render import keep_slide_thumbnail
from workers.runstore import RunNotFound, RunRecord, RunStatus
from workers.sectra_progress import publisher_for, remember_result
from workers.stages import deid, fetch, follow, publish, submit, summary, upload

log = logging.getLogger(__name__)

FINAL = frozenset({RunStatus.completed, RunStatus.failed, RunStatus.cancelled})

# Stage run in each working status, and the status the run moves to when it succeeds.
_STAGES: dict[RunStatus, tuple[Callable[[PipelineContext, RunRecord], object], RunStatus]] = {
    RunStatus.downloading: (fetch.run, RunStatus.deidentifying),
    RunStatus.deidentifying: (deid.run, RunStatus.uploading),
    RunStatus.uploading: (upload.run, RunStatus.submitting),
    RunStatus.submitting: (submit.run, RunStatus.waiting),
    RunStatus.summarising: (summary.run, RunStatus.publishing),
    RunStatus.publishing: (publish.run, RunStatus.completed),
}

# Who a stray network error (one no client mapped) came from, by the stage that saw it.
_NETWORK_SERVICE: dict[RunStatus, Service] = {
    RunStatus.downloading: Service.sectra,
    RunStatus.deidentifying: Service.sectra,
    RunStatus.uploading: Service.strand,
    RunStatus.submitting: Service.strand,
    RunStatus.waiting: Service.strand,
    RunStatus.summarising: Service.strand,
    RunStatus.publishing: Service.sectra,
}

# The step's own backoff, on top of the clients' per-request retries: 1-2 s, 2-4 s, ... at most 300 s.
_STEP_BACKOFF_CAP = 300.0
# When Strand's 429 names no Retry-After (its concurrency answer does: reference/strand-rest-api.md).
_BUSY_RETRY_SECONDS = 2.0


def advance(ctx: PipelineContext, run_id: str) -> float | None:
    record = ctx.store.get(run_id)
    if record is None:
        _forget(ctx, run_id)
        return None
    if record.status in FINAL:
        return None
    with run_context(run_id=run_id, app=record.app_id, stage=record.status.value):
        ctx.in_flight.started(run_id)
        try:
            if record.cancel_requested:
                _finish_cancelled(ctx, record)
                return None
            try:
                return _step(ctx, record)
            except RunCancelled:
                fresh = ctx.store.get(run_id)
                if fresh is None:
                    _forget(ctx, run_id)
                else:
                    _finish_cancelled(ctx, fresh)
                return None
            except RunNotFound:
                raise
            except Exception as exc:
                return _handle_error(ctx, record, exc)
        except RunNotFound:
            # Deleted (Sectra `delete`) while a stage or its error handling was writing to it.
            _forget(ctx, run_id)
            return None


def _step(ctx: PipelineContext, record: RunRecord) -> float | None:
    if record.status == RunStatus.received:
        if case.is_case_root(ctx.app(record), record):
            case.request_fan_out(record.run_id)  # its own task: the siblings start beside this run
        ctx.store.transition(
            record.run_id, RunStatus.downloading, message=STAGE_MESSAGES[RunStatus.downloading]
        )
        return 0.0
    started = time.monotonic()
    try:
        if record.status == RunStatus.waiting:
            return _wait(ctx, record)
        record = _prepare_inputs(ctx, record)
        stage, next_status = _STAGES[record.status]
        outcome = stage(ctx, record)
        if isinstance(outcome, RunStatus):
            next_status = outcome  # results reuse: straight to `summarising`
    finally:
        STAGE_SECONDS.labels(stage=record.status.value).observe(time.monotonic() - started)
    if next_status == RunStatus.completed:
        ctx.staging.remove(record.run_id)  # before the run reads completed: no slide file outlives it
    elif next_status == RunStatus.submitting:
        _release_slide(ctx, record)
    ctx.store.transition(
        record.run_id, next_status, attempts=0, error=None, message=STAGE_MESSAGES[next_status]
    )
    ctx.store.append_event(record.run_id, "stage_done", stage=record.status.value)
    if next_status == RunStatus.completed:
        RUNS_FINISHED.labels(app=record.app_id, status="completed").inc()
        _case_changed(ctx, record)
        ctx.in_flight.finished(record.run_id)
        log.info("run completed")
        return None
    return 0.0


def _prepare_inputs(ctx: PipelineContext, record: RunRecord) -> RunRecord:
    """Bring the files the stage needs onto this pod (the work volume is per pod): fetch, de-identify."""
    if record.status == RunStatus.uploading and upload.needs_outgoing_copy(ctx, record):
        ctx.store.append_event(record.run_id, "prepare_again", reason="outgoing copy not on this pod")
        record = _ensure_originals(ctx, record)
        deid.run(ctx, record)
        return ctx.store.require(record.run_id)
    if record.status == RunStatus.deidentifying:
        return _ensure_originals(ctx, record)
    return record


def _ensure_originals(ctx: PipelineContext, record: RunRecord) -> RunRecord:
    if deid.inputs(ctx, record) is not None:
        return record
    ctx.store.append_event(record.run_id, "fetch_again", reason="slide not on this pod")
    fetch.run(ctx, record)
    return ctx.store.require(record.run_id)


def _release_slide(ctx: PipelineContext, record: RunRecord) -> None:
    """Remove the run's slide files from this pod as soon as Strand holds its complete upload.

    Nothing later reads them: submitting and waiting talk to Strand, the summary reads Strand's
    results, a retry resumes at its checkpoint, and publish draws on the thumbnail kept here
    first. So a run waiting for Strand (behind the organisation's cap, or a long job) holds no
    disk, and a pod's work volume is bounded by its slots, not by its backlog. A run that does
    need the copy again (its upload lost before it completed) fetches and de-identifies again, as
    a run resumed on another pod does.
    """
    keep_slide_thumbnail(ctx, record)
    if ctx.staging.remove(record.run_id):
        ctx.store.append_event(record.run_id, "slide_files_released")


def _wait(ctx: PipelineContext, record: RunRecord) -> float | None:
    status = follow.run(ctx, record)
    if status.status in ("completed", "partial_failed"):
        ctx.store.transition(
            record.run_id, RunStatus.summarising, attempts=0, message=STAGE_MESSAGES[RunStatus.summarising]
        )
        ctx.store.append_event(record.run_id, "job_finished", job_status=status.status)
        return 0.0
    if status.status == "failed":
        _fail(ctx, record, messages.job_failed(status.error_message), refundable=False)
        return None
    if status.status == "cancelled":
        _fail(ctx, record, messages.job_cancelled_by_strand(), refundable=False)
        return None
    return follow.next_poll_delay(record)


def _handle_error(ctx: PipelineContext, record: RunRecord, exc: Exception) -> float | None:
    if isinstance(exc, RateLimitError) and record.status == RunStatus.submitting:
        return _strand_busy(ctx, record, exc)
    kind = classify(exc, network_service=_NETWORK_SERVICE.get(record.status, Service.storage))
    error_type = type(exc).__name__
    if isinstance(kind, Refused):
        log.info("run refused", extra={"error_type": error_type})
        _fail(ctx, record, kind.message)
        return None
    attempts = record.attempts + 1
    if isinstance(kind, Transient):
        # The client already retried the request itself; this retries the step on top, and says so.
        log.warning(
            "still failing after the client's own retries; the step will be retried",
            extra={"error_type": error_type, "service": kind.service.value, "attempt": attempts},
        )
    else:
        log.exception("unexpected failure in stage", extra={"attempt": attempts})
    service = kind.service.value if isinstance(kind, Transient) else "bridge"
    # Masked before it is cut (a cut could leave a credential its pattern no longer finds): the record's
    # error is read in the admin page and `runs show`, and an exception's text may quote a request.
    ctx.store.update(record.run_id, attempts=attempts, error=redact(f"{error_type}: {exc}")[:500])
    ctx.store.append_event(
        record.run_id, "step_failed", error_type=error_type, service=service, attempt=attempts
    )
    publishing = record.status == RunStatus.publishing
    if attempts >= ctx.max_attempts and not (publishing and isinstance(kind, Transient)):
        if isinstance(kind, Transient):
            _fail(ctx, record, kind.message(attempts))
        else:
            _fail(ctx, record, messages.internal_error(record.run_id))
        return None
    delay = min(_STEP_BACKOFF_CAP, random.uniform(0.5, 1.0) * 2 ** min(attempts, 8))
    if isinstance(kind, Transient) and kind.retry_after is not None:
        delay = max(delay, kind.retry_after)  # a server's Retry-After is a floor
    ctx.store.append_event(record.run_id, "step_retry_scheduled", delay_s=round(delay, 1), attempt=attempts)
    return delay


def _strand_busy(ctx: PipelineContext, record: RunRecord, exc: RateLimitError) -> float:
    """The organisation is at Strand's cap on running jobs (`POST /predict` 429 + Retry-After, nothing
    reserved): busy, not down. The run waits its turn as long as it takes, and the wait is no failed
    attempt; it asks again just after Retry-After, spread over half of it so the waiting runs do not
    all ask at once. An exponential backoff here left Strand's freed slots idle and failed runs
    "after 5 attempts" in a busy hour (bench/soak.py, docs/capacity.md)."""
    delay = min(_STEP_BACKOFF_CAP, exc.retry_after or _BUSY_RETRY_SECONDS) * random.uniform(1.0, 1.5)
    ctx.store.append_event(record.run_id, "strand_busy", retry_in_s=round(delay, 1))
    return delay


def _post_final(ctx: PipelineContext, record: RunRecord, message: str, *, cancelled: bool) -> None:
    """Best effort: the run's one Sectra result says how it ended."""
    app = ctx.app(record)
    result = (
        cancelled_result(record.slide_id, app.version, message)
        if cancelled
        else failure_result(record.slide_id, app.version, message)
    )
    try:
        with ctx.sectra(record) as sectra:
            publisher = publisher_for(ctx, record, sectra)
            publisher.publish(result)
            remember_result(ctx, record.run_id, publisher)
    except Exception as exc:
        log.warning("could not post the final message to Sectra", extra={"error_type": type(exc).__name__})
        ctx.store.append_event(record.run_id, "sectra_notify_failed", error_type=type(exc).__name__)


def _fail(ctx: PipelineContext, record: RunRecord, message: str, *, refundable: bool = True) -> None:
    """Fail the run. Its files stay for `runs retry`; the janitor removes the originals after retention."""
    # The pathologist reads it in Sectra: it may quote Strand's or Sectra's own words, so it is masked
    # as a log line is.
    message = redact(message)
    if refundable and record.job_id and record.reused_job is None:
        try:
            _cancel_strand_job(ctx, record)
        except Exception as exc:  # the failure is what the pathologist must read; the refund is logged
            log.warning("could not cancel the Strand job", extra={"error_type": type(exc).__name__})
    ctx.store.transition(record.run_id, RunStatus.failed, error=message, message=message)
    ctx.store.append_event(record.run_id, "failed", reason=message)
    _post_final(ctx, record, message, cancelled=False)
    RUNS_FINISHED.labels(app=record.app_id, status="failed").inc()
    _case_changed(ctx, record)
    ctx.in_flight.finished(record.run_id)


def _cancel_strand_job(ctx: PipelineContext, record: RunRecord) -> tuple[int | None, bool]:
    """Cancel a running Strand job so its reservation is refunded; returns (credits refunded, known)."""
    assert record.job_id is not None
    try:
        status = ctx.strand().jobs.cancel(record.job_id)
    except NotFoundError:
        ctx.store.append_event(record.run_id, "strand_cancel_unsupported", job_id=record.job_id)
        return None, False
    except StrandError as exc:
        if exc.status_code in (400, 409):  # already terminal: nothing reserved any more
            return None, True
        if exc.status_code == 405:
            ctx.store.append_event(record.run_id, "strand_cancel_unsupported", job_id=record.job_id)
            return None, False
        raise
    refunded = record.reserved_credits if status.status == "cancelled" else None
    ctx.store.append_event(
        record.run_id, "strand_job_cancelled", job_id=record.job_id, refunded=refunded or 0
    )
    return refunded, True


def _finish_cancelled(ctx: PipelineContext, record: RunRecord) -> None:
    refunded: int | None = None
    known = True
    own_job = record.job_id and record.reused_job is None
    if own_job and record.status in (RunStatus.submitting, RunStatus.waiting):
        try:
            refunded, known = _cancel_strand_job(ctx, record)
        except Exception as exc:
            log.warning("could not cancel the Strand job", extra={"error_type": type(exc).__name__})
            known = False
    message = messages.cancelled(refunded, known)
    ctx.staging.remove(record.run_id)  # before the run reads cancelled: no slide file outlives it
    ctx.store.transition(record.run_id, RunStatus.cancelled, message=message, cancel_note=message)
    ctx.store.append_event(record.run_id, "cancelled", refunded=refunded or 0)
    _post_final(ctx, record, message, cancelled=True)
    RUNS_FINISHED.labels(app=record.app_id, status="cancelled").inc()
    _case_changed(ctx, record)
    ctx.in_flight.finished(record.run_id)


def _case_changed(ctx: PipelineContext, record: RunRecord) -> None:
    """Best effort: the run has ended, so the case summaries that list it are rewritten."""
    try:
        case.run_ended(ctx.app(record), ctx.store, record)
    except Exception as exc:  # the run's own result is posted; a stale summary is logged, not fatal
        log.warning("could not queue the case summary update", extra={"error_type": type(exc).__name__})


def _forget(ctx: PipelineContext, run_id: str) -> None:
    """The run was deleted: free this pod's copy of its files and stop counting it."""
    if ctx.staging.remove(run_id):
        log.info("run deleted; its files on this pod were removed", extra={"run_id": run_id})
    ctx.in_flight.finished(run_id)
