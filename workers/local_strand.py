"""The Strand side of analysing a local slide: one upload and one job per slide and app, resumable.

The same rules as the pipeline's upload and submit stages, with a small JSON
file in place of the run record: the upload is reused while Strand still holds
it, an interrupted one continues in its session (`UploadCheckpoint`), the intent
to submit is written before the POST and a lost answer is looked up on Strand
(`jobs.for_upload`) before anything is submitted again, so no slide pays twice.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from strand_client import (
    Client,
    Job,
    JobEvent,
    JobFailedError,
    JobStatus,
    JobTimeoutError,
    NotFoundError,
    SubmissionUncertainError,
    UploadCheckpoint,
)
from workers.apps import AppConfig
from workers.jsonfile import write_json
from workers.settings import Settings

Echo = Callable[[str], None]
Confirm = Callable[[int, int], bool]  # (estimated credits, ceiling) -> go ahead?
UploadProgress = Callable[[int, int], None]  # (bytes Strand holds, total)
JobProgress = Callable[[JobEvent], None]

# Upload statuses a job may be submitted on (those the pipeline's upload stage reuses).
REUSABLE_UPLOADS = frozenset({"ready", "preprocessing", "uploaded", "deid_running"})
# Strand's and our clocks differ; a job created this long before our intent still counts as ours.
CLOCK_SKEW_SECONDS = 300.0


class SlideNotAnalysed(Exception):
    """Why a slide was not analysed, in plain words (never a path or a value from the slide).

    `kind` is "refused" (the slide, its state or its cost stopped it) or "failed" (Strand did).
    """

    def __init__(self, message: str, kind: str = "refused") -> None:
        super().__init__(message)
        self.kind = kind


@dataclass
class SlideState:
    """What a later call needs to reuse the upload and the job; kept in `path` (mode 0600).

    The checkpoint holds the resumable session URL, which lets its holder write
    the upload: hence the private file.
    """

    path: Path = field(compare=False)
    sha256: str
    app_id: str
    upload_id: str | None = None
    upload_checkpoint: dict[str, Any] | None = None
    upload_complete: bool = False
    submit_intent_at: float | None = None
    job_id: str | None = None

    @classmethod
    def load(cls, path: Path, sha256: str, app_id: str) -> SlideState:
        if not path.exists():
            return cls(path=path, sha256=sha256, app_id=app_id)
        try:
            state = cls(path=path, **json.loads(path.read_text(encoding="utf-8")))
        except (ValueError, TypeError) as exc:
            raise SlideNotAnalysed(
                f"its state file in --out ({path.name}) is unreadable ({type(exc).__name__}); "
                "delete it to start this slide afresh"
            ) from exc
        if (state.sha256, state.app_id) != (sha256, app_id):
            raise SlideNotAnalysed(f"its state file in --out ({path.name}) belongs to another slide or app")
        return state

    def save(self) -> None:
        fields = asdict(self)
        del fields["path"]
        write_json(self.path, fields, private=True)


def client_from_settings(settings: Settings) -> Client:
    """A Strand client from `STRAND_API_KEY` / `STRAND_BASE_URL`; every call bounded by a 60 s timeout."""
    if settings.strand_api_key is None:
        raise ValueError("STRAND_API_KEY is not set")
    return Client(
        api_key=settings.strand_api_key.get_secret_value(), base_url=settings.strand_base_url, timeout=60.0
    )


def upload(strand: Client, state: SlideState, path: Path, progress: UploadProgress, echo: Echo) -> str:
    """The Strand upload of this content: the one recorded, else a resumed or a new one."""
    if state.upload_id and state.upload_complete:
        try:
            known = strand.uploads.get(state.upload_id)
        except NotFoundError:
            known = None
        if known is not None and known.status in REUSABLE_UPLOADS:
            echo(f"upload {state.upload_id} reused")
            return state.upload_id
        state.upload_id, state.upload_complete, state.upload_checkpoint = None, False, None
    resume = UploadCheckpoint.from_dict(state.upload_checkpoint) if state.upload_checkpoint else None

    def checkpoint(cp: UploadCheckpoint) -> None:
        state.upload_id, state.upload_checkpoint = cp.upload_id, cp.to_dict()
        state.save()

    done = strand.uploads.upload_file(
        path,
        progress=progress,
        filename=f"slide-{state.sha256[:16]}{path.suffix}",  # neutral: what Strand records
        content_sha256=state.sha256,
        resume=resume,
        on_checkpoint=checkpoint,
    )
    state.upload_id, state.upload_complete, state.upload_checkpoint = done.id, True, None
    state.save()
    echo(f"upload {done.id} {'already held by Strand' if done.existing else 'sent'}")
    return done.id


def submitted_job(
    strand: Client, app: AppConfig, state: SlideState, upload_id: str, confirm: Confirm, echo: Echo
) -> Job:
    """The job for this slide and app: the recorded one, one a lost answer created, or a new one."""
    if state.job_id:
        echo(f"job {state.job_id} followed again")
        return strand.jobs.get(state.job_id)
    if state.submit_intent_at is not None and (found := _find_submitted(strand, app, state, upload_id)):
        return _adopt(strand, state, found, echo)
    estimate = strand.predict.estimate(upload_id, app.markers, model=app.model)  # dryRun: reserves nothing
    credits, ceiling = estimate.estimated_credits, app.credit_ceiling
    echo(f"estimate: {credits} credits")
    if ceiling is not None and credits > ceiling and not confirm(credits, ceiling):
        raise SlideNotAnalysed(
            f"the estimate of {credits} credits is above app {app.id}'s ceiling of {ceiling}; "
            "not submitted (accept it on a terminal, or pass --yes)"
        )
    available = estimate.org_balance - estimate.org_pending
    if credits > available:
        raise SlideNotAnalysed(f"not enough Strand credits: {credits} needed, {available} available")
    state.submit_intent_at = time.time()  # before the POST: a lost answer is looked up, not resent
    state.save()
    try:
        job = strand.predict.submit(upload_id, app.markers, model=app.model)
    except SubmissionUncertainError as exc:
        found = _find_submitted(strand, app, state, upload_id)
        if found is None:
            raise SlideNotAnalysed(
                "Strand did not confirm the submission; run again: the job is looked up before any resubmit"
            ) from exc
        return _adopt(strand, state, found, echo)
    state.job_id = job.id
    state.save()
    echo(f"job {job.id} submitted ({job.reserved_credits or 0} credits reserved)")
    return job


def _find_submitted(strand: Client, app: AppConfig, state: SlideState, upload_id: str) -> JobStatus | None:
    """A job on this upload with this app's markers and model, created since the recorded intent."""
    since = (state.submit_intent_at or 0.0) - CLOCK_SKEW_SECONDS
    for job in strand.jobs.for_upload(upload_id):
        created = job.created_at.timestamp() if job.created_at else since
        same_model = app.model is None or job.model in (None, app.model)
        if sorted(job.markers) == sorted(app.markers) and same_model and created >= since:
            return job
    return None


def _adopt(strand: Client, state: SlideState, found: JobStatus, echo: Echo) -> Job:
    state.job_id = found.id
    state.save()
    echo(f"job {found.id} found at Strand (submitted by an earlier call)")
    return strand.jobs.get(found.id)


def follow(job: Job, timeout: float, on_event: JobProgress) -> JobStatus:
    """The job's final status; at `timeout` the job runs on, to be followed again by a later call."""
    status = job.last_status or job.refresh()
    if status.is_terminal:
        return status
    try:
        return job.wait(timeout=timeout, poll_interval=2.0, on_event=on_event)
    except JobFailedError as exc:
        return JobStatus(id=job.id, status="failed", error_message=exc.error_message)
    except JobTimeoutError as exc:
        raise SlideNotAnalysed(
            f"the job is still running after {timeout:g} s; run the same command again to keep "
            "following it (no new job is submitted)"
        ) from exc


def forget_job(state: SlideState) -> None:
    """A failed or cancelled job is not followed again: the next call submits a new one."""
    state.job_id, state.submit_intent_at = None, None
    state.save()
