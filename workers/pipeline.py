"""The run's state machine driver: do the stage the run is in, move it on, decide what happens next.

`advance` is what every Celery step calls. It returns how long to wait before
the next step (0 = at once) or None when the run needs no more steps (final,
deleted, or cancelled). Errors are sorted here, once, into three kinds: the
pathologist's problem (a plain-words result, no retry), a transient fault
(retry with backoff, then a plain-words result), and a bug (logged with its
traceback, retried a few times, then an internal-error result).
"""

from __future__ import annotations

import logging
import random
import shutil
import time
from collections.abc import Callable

import httpx

from sectra_adapter.errors import DownloadError, SectraError, SectraUnavailable
from sectra_adapter.results import cancelled_result, failure_result
from strand_client.errors import (
    BadRequestError,
    InsufficientCreditsError,
    MarkerNotAvailableError,
    NotFoundError,
    RateLimitError,
    StrandError,
    UnknownMarkersError,
)
from workers import messages
from workers.context import PipelineContext, RunCancelled
from workers.deidentify import DeidentificationFailed, UnsupportedSlideFormat
from workers.observability import RUNS_FINISHED, RUNS_IN_FLIGHT, STAGE_SECONDS, run_context
from workers.runstore import RunRecord, RunStatus
from workers.stages import deid, fetch, follow, publish, submit, summary, upload
from workers.stages.fetch import RunRefused
from workers.stages.progress import publisher_for, remember_result
from workers.stages.submit import SubmissionPending

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


# What the run record (and `runs list`, and the demo) says while a stage is under way.
STAGE_MESSAGES: dict[RunStatus, str] = {
    RunStatus.downloading: "Fetching the slide from Sectra",
    RunStatus.deidentifying: "Removing patient data from the copy to be sent",
    RunStatus.uploading: "Uploading to Strand",
    RunStatus.submitting: "Submitting the analysis to Strand",
    RunStatus.waiting: "Waiting for Strand",
    RunStatus.summarising: "Summarising Strand's marker maps",
    RunStatus.publishing: "Posting the result to Sectra",
    RunStatus.completed: "Result posted to Sectra",
}


def advance(ctx: PipelineContext, run_id: str) -> float | None:
    record = ctx.store.get(run_id)
    if record is None or record.status in FINAL:
        return None
    with run_context(run_id=run_id, app=record.app_id, stage=record.status.value):
        if record.cancel_requested:
            _finish_cancelled(ctx, record)
            return None
        try:
            return _step(ctx, record)
        except RunCancelled:
            fresh = ctx.store.get(run_id)
            if fresh is not None:
                _finish_cancelled(ctx, fresh)
            return None
        except Exception as exc:
            return _handle_error(ctx, record, exc)


def _step(ctx: PipelineContext, record: RunRecord) -> float | None:
    if record.status == RunStatus.received:
        ctx.store.transition(
            record.run_id, RunStatus.downloading, message=STAGE_MESSAGES[RunStatus.downloading]
        )
        RUNS_IN_FLIGHT.inc()
        return 0.0
    started = time.monotonic()
    try:
        if record.status == RunStatus.waiting:
            return _wait(ctx, record)
        stage, next_status = _STAGES[record.status]
        stage(ctx, record)
    finally:
        STAGE_SECONDS.labels(stage=record.status.value).observe(time.monotonic() - started)
    ctx.store.transition(
        record.run_id, next_status, attempts=0, error=None, message=STAGE_MESSAGES[next_status]
    )
    ctx.store.append_event(record.run_id, "stage_done", stage=record.status.value)
    if next_status == RunStatus.completed:
        RUNS_FINISHED.labels(app=record.app_id, status="completed").inc()
        RUNS_IN_FLIGHT.dec()
        log.info("run completed")
        return None
    return 0.0


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
    plain = _plain_words(exc)
    if plain is not None:
        log.info("run refused", extra={"error_type": type(exc).__name__})
        _fail(ctx, record, plain)
        return None
    if isinstance(exc, RateLimitError):
        delay = exc.retry_after if exc.retry_after is not None else 5.0
        ctx.store.append_event(record.run_id, "rate_limited", retry_after=delay)
        return delay
    attempts = record.attempts + 1
    transient = _is_transient(exc)
    if transient:
        log.warning(
            "transient failure; will retry", extra={"error_type": type(exc).__name__, "attempt": attempts}
        )
    else:
        log.exception("unexpected failure in stage", extra={"attempt": attempts})
    ctx.store.update(record.run_id, attempts=attempts, error=f"{type(exc).__name__}: {exc}"[:500])
    ctx.store.append_event(record.run_id, "step_failed", error_type=type(exc).__name__, attempt=attempts)
    publishing = record.status == RunStatus.publishing
    if attempts >= ctx.max_attempts and not (publishing and transient):
        message = (
            messages.strand_unreachable(attempts) if transient else messages.internal_error(record.run_id)
        )
        _fail(ctx, record, message)
        return None
    return min(300.0, random.uniform(0.5, 1.0) * 2 ** min(attempts, 8))


def _plain_words(exc: Exception) -> str | None:
    """The pathologist-facing reason for failures no retry can fix; None for the others."""
    if isinstance(exc, RunRefused | UnsupportedSlideFormat):
        return str(exc)
    if isinstance(exc, DeidentificationFailed):
        return str(exc)
    if isinstance(exc, InsufficientCreditsError):
        return messages.insufficient_credits(exc.required, exc.balance)
    if isinstance(exc, UnknownMarkersError):
        return messages.unknown_markers(exc.unknown)
    if isinstance(exc, MarkerNotAvailableError):
        return messages.markers_not_available(exc.unavailable)
    if isinstance(exc, DownloadError) and not exc.transient:
        return messages.sectra_download_failed(str(exc))
    if isinstance(exc, BadRequestError | NotFoundError):
        return f"Strand refused the request: {exc}"
    return None


def _is_transient(exc: Exception) -> bool:
    if isinstance(exc, SubmissionPending | httpx.TransportError | TimeoutError | ConnectionError):
        return True
    if isinstance(exc, StrandError):
        return exc.status_code is None or exc.status_code >= 500 or exc.status_code in (408, 429)
    if isinstance(exc, DownloadError | SectraUnavailable):
        return not isinstance(exc, DownloadError) or exc.transient
    if isinstance(exc, SectraError):
        status = getattr(exc, "status_code", None)
        return status is None or status >= 500 or status in (408, 429)
    return False


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
    if refundable and record.job_id:
        _cancel_strand_job(ctx, record)
    ctx.store.transition(record.run_id, RunStatus.failed, error=message, message=message)
    ctx.store.append_event(record.run_id, "failed", reason=message)
    _post_final(ctx, record, message, cancelled=False)
    RUNS_FINISHED.labels(app=record.app_id, status="failed").inc()
    RUNS_IN_FLIGHT.dec()


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
    if record.job_id and record.status in (RunStatus.submitting, RunStatus.waiting):
        try:
            refunded, known = _cancel_strand_job(ctx, record)
        except Exception as exc:
            log.warning("could not cancel the Strand job", extra={"error_type": type(exc).__name__})
            known = False
    message = messages.cancelled(refunded, known)
    ctx.store.transition(record.run_id, RunStatus.cancelled, message=message, cancel_note=message)
    ctx.store.append_event(record.run_id, "cancelled", refunded=refunded or 0)
    _post_final(ctx, record, message, cancelled=True)
    shutil.rmtree(ctx.run_dir(record.run_id), ignore_errors=True)
    RUNS_FINISHED.labels(app=record.app_id, status="cancelled").inc()
    RUNS_IN_FLIGHT.dec()
