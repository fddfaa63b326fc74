"""Stage `waiting`: follow the Strand job in short slices, mirroring its progress into Sectra.

A waiting job must not hold a worker slot (one worker carries hundreds of
waiting runs), so each step looks once (or streams for a bounded slice) and
then re-schedules itself with a delay that grows with the job's age.
"""

from __future__ import annotations

import logging
import time

from strand_client.models import JobStatus
from workers.context import PipelineContext
from workers.runstore import RunRecord
from workers.stages.progress import publisher_for, remember_result

log = logging.getLogger(__name__)

TERMINAL = frozenset({"completed", "partial_failed", "failed", "cancelled"})
_STATUS_WORDS = {"queued": "queued", "running": "running", "preprocessing": "preparing the slide"}


def next_poll_delay(record: RunRecord) -> float:
    """Poll often while a job is young, then back off to spare Strand (2 s .. 30 s)."""
    age = time.time() - (record.submit_intent_at or time.time())
    return max(2.0, min(30.0, age / 20.0))


def run(ctx: PipelineContext, record: RunRecord) -> JobStatus:
    """Look at the job once (or for a slice); returns its latest status."""
    assert record.job_id is not None
    job = ctx.strand().jobs.get(record.job_id)
    status = job.wait_slice(ctx.wait_slice_seconds) if ctx.wait_slice_seconds > 0 else job.refresh()
    if status.status not in TERMINAL and status.status not in _STATUS_WORDS:
        log.warning("unknown Strand job status; waiting it out", extra={"job_status": status.status})
    words = _STATUS_WORDS.get(status.status, status.status)
    pct = f" {status.progress * 100:.0f} %" if status.progress is not None else ""
    ctx.store.update(
        record.run_id,
        stage_progress=status.progress,
        job_status=status.status,
        message=f"Strand: {words}{pct}",
    )
    recently = time.time() - (record.progress_posted_at or 0.0) < ctx.progress_interval
    if status.status not in TERMINAL and not recently:
        try:
            with ctx.sectra(record) as sectra:
                publisher = publisher_for(ctx, record, sectra)
                publisher.progress(f"Strand: {words}{pct}")
                remember_result(ctx, record.run_id, publisher)
            ctx.store.update(record.run_id, progress_posted_at=time.time())
        except Exception as exc:  # progress is a courtesy; the job goes on regardless
            log.warning("progress update to Sectra failed", extra={"error_type": type(exc).__name__})
    return status
