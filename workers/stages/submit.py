"""Stage `submitting`: price the job, check guardrails, and submit it exactly once.

The guardrails: the app's per-slide ceiling, the organisation's balance, and the daily credit
limits (`workers.quotas`), whose counters take the estimate before the POST.

The intent is persisted *before* the POST. If the worker dies (or the answer
is lost) after that, the next attempt asks Strand which jobs exist for the
upload and adopts the one this run created instead of paying twice.

A busy organisation (`POST /predict` 429: at Strand's cap on running jobs, nothing
reserved) makes a run ask again and again. It then asks only the POST: the 429
proves no job was made, so the intent this attempt recorded is withdrawn (no
lookup next time), and the estimate is kept and reused for `ESTIMATE_REUSE_SECONDS`
(the guardrails are checked again on its figures; Strand checks the balance itself
when it takes the job). Only a 429 keeps one: a run refused on its estimate (say, the
balance) and retried by an operator is priced afresh.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from strand_client import Estimate, JobStatus, NotFoundError, RateLimitError, SubmissionUncertainError
from workers import messages
from workers.context import PipelineContext
from workers.errors import RunRefused, SubmissionPending
from workers.observability import CREDITS_RESERVED
from workers.quotas import DailyCredits, DailyLimitExceeded
from workers.runstore import RunRecord

log = logging.getLogger(__name__)

# Strand's and our clocks differ; a job created this long before our intent still counts.
_CLOCK_SKEW_SECONDS = 300.0
# How long an estimate stands for the same upload and request (a run waiting out Strand's cap).
ESTIMATE_REUSE_SECONDS = 600.0


def _priced(ctx: PipelineContext, record: RunRecord, request: dict[str, Any]) -> tuple[Estimate, bool]:
    """The job's estimate, and whether it is the one kept after a 429 (still standing for `request`)."""
    kept = record.estimate
    if (
        kept is not None
        and kept.get("request") == request
        and time.time() - kept["at"] < ESTIMATE_REUSE_SECONDS
    ):
        return Estimate(**kept["figures"]), True
    assert record.upload_id is not None
    estimate = ctx.strand().predict.estimate(record.upload_id, request["markers"], model=request["model"])
    ctx.store.append_event(
        record.run_id, "estimated", credits=estimate.estimated_credits, balance=estimate.org_balance
    )
    return estimate, False


def _kept(estimate: Estimate, request: dict[str, Any]) -> dict[str, Any]:
    """What the record keeps of an estimate while its run waits out Strand's cap."""
    figures = {
        "patch_count": estimate.patch_count,
        "marker_count": estimate.marker_count,
        "estimated_credits": estimate.estimated_credits,
        "org_balance": estimate.org_balance,
        "org_pending": estimate.org_pending,
    }
    return {"request": request, "at": time.time(), "figures": figures}


def _find_submitted(ctx: PipelineContext, record: RunRecord, markers: list[str]) -> JobStatus | None:
    """The job this run already created, if Strand has one; None when it provably has none."""
    assert record.upload_id is not None
    try:
        jobs = ctx.strand().jobs.for_upload(record.upload_id)
    except NotFoundError:
        return None
    since = (record.submit_intent_at or 0.0) - _CLOCK_SKEW_SECONDS
    for job in jobs:
        created = job.created_at.timestamp() if job.created_at else since
        same_request = sorted(job.markers) == sorted(markers) and created >= since
        if same_request and ctx.uploads.claim_job(job.id, record.run_id):
            return job
    return None


def _adopt(
    ctx: PipelineContext, record: RunRecord, job_id: str, credits: int | None, model: str | None
) -> None:
    ctx.uploads.claim_job(job_id, record.run_id)
    ctx.store.update(record.run_id, job_id=job_id, reserved_credits=credits, model=model, estimate=None)
    if credits:
        CREDITS_RESERVED.labels(app=record.app_id).inc(credits)


def run(ctx: PipelineContext, record: RunRecord) -> None:
    if record.job_id:
        return
    app = ctx.app(record)
    assert record.upload_id is not None
    if record.submit_intent_at is not None:
        existing = _find_submitted(ctx, record, app.markers)
        if existing is not None:
            _adopt(ctx, record, existing.id, existing.reserved_credits, existing.model)
            ctx.store.append_event(record.run_id, "submission_adopted", job_id=existing.id)
            return
    request = {"upload_id": record.upload_id, "markers": sorted(app.markers), "model": app.model}
    estimate, reused = _priced(ctx, record, request)
    if app.credit_ceiling is not None and estimate.estimated_credits > app.credit_ceiling:
        raise RunRefused(messages.over_ceiling(estimate.estimated_credits, app.credit_ceiling))
    available = estimate.org_balance - estimate.org_pending
    if estimate.estimated_credits > available:
        raise RunRefused(messages.insufficient_credits(estimate.estimated_credits, available))
    daily = DailyCredits(ctx.store.client, prefix=ctx.store.prefix)
    try:
        daily.reserve(
            record.run_id,
            record.app_id,
            estimate.estimated_credits,
            app_limit=app.daily_credit_limit,
            bridge_limit=ctx.settings.daily_credit_limit,
        )
    except DailyLimitExceeded as exc:
        raise RunRefused(str(exc)) from None
    earlier_intent = record.submit_intent_at  # an earlier POST whose outcome is still unknown
    ctx.store.update(record.run_id, submit_intent_at=time.time())
    try:
        job = ctx.strand().predict.submit(record.upload_id, app.markers, model=app.model)
    except RateLimitError:
        daily.release(record.run_id, record.app_id)
        # This POST made no job: nothing to look up next time (unless an earlier one may have), and
        # the next attempt submits on this estimate while it stands.
        waiting: dict[str, Any] = {} if reused else {"estimate": _kept(estimate, request)}
        if earlier_intent is None:
            waiting["submit_intent_at"] = None
        if waiting:
            ctx.store.update(record.run_id, **waiting)
        raise
    except SubmissionUncertainError as exc:
        log.warning("Strand submit outcome unknown; will reconcile", extra={"error_type": type(exc).__name__})
        raise SubmissionPending(str(exc)) from exc
    except BaseException:
        daily.release(record.run_id, record.app_id)  # Strand took no job: the credits are not spent
        raise
    _adopt(ctx, record, job.id, job.reserved_credits, app.model)
    ctx.store.append_event(
        record.run_id, "submitted", job_id=job.id, reserved_credits=job.reserved_credits or 0
    )
