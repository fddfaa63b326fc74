"""Stage `waiting`: follow the Strand job in short slices, mirroring its progress into Sectra.

A waiting job must not hold a worker slot (one worker carries hundreds of
waiting runs), so each step looks once (or streams for a bounded slice) and
then re-schedules itself with a delay that grows with the job's age.
"""

from __future__ import annotations

import logging
import time

from strand_client import JobStatus
from workers import messages
from workers.context import PipelineContext
from workers.runstore import RunRecord
from workers.sectra_progress import publisher_for, remember_result

log = logging.getLogger(__name__)

TERMINAL = frozenset({"completed", "partial_failed", "failed", "cancelled"})
# Strand's SSE stream sends a keep-alive every 15 s (reference/strand-rest-api.md, GET /jobs/{id}/stream):
# a poller looking more often than that costs Strand more requests than a follower of the stream.
HEARTBEAT_SECONDS = 15.0
_STATUS_WORDS = {"queued": "queued", "running": "running", "preprocessing": "preparing the slide"}


def next_poll_delay(record: RunRecord) -> float:
    """Look again after as long as the job has run (2, 4, 8 s: a short job is seen soon), never more
    often than Strand's heartbeat once past that, and every 30 s for a job older than 10 minutes."""
    age = time.time() - (record.submit_intent_at or time.time())
    return min(30.0, max(2.0, min(age, HEARTBEAT_SECONDS), age / 20.0))


def run(ctx: PipelineContext, record: RunRecord) -> JobStatus:
    """Look at the job once (or for a slice); returns its latest status.

    `jobs.get` already reads the job's status (one `GET /jobs/{id}`); a slice follows the stream from there.
    """
    assert record.job_id is not None
    job = ctx.strand().jobs.get(record.job_id)
    status = job.last_status
    assert status is not None
    if ctx.wait_slice_seconds > 0 and status.status not in TERMINAL:
        status = job.wait_slice(ctx.wait_slice_seconds)
    if status.status not in TERMINAL and status.status not in _STATUS_WORDS:
        log.warning("unknown Strand job status; waiting it out", extra={"job_status": status.status})
    words = messages.strand_job_progress(_STATUS_WORDS.get(status.status, status.status), status.progress)
    ctx.store.update(record.run_id, stage_progress=status.progress, job_status=status.status, message=words)
    recently = time.time() - (record.progress_posted_at or 0.0) < ctx.progress_interval
    if status.status not in TERMINAL and not recently:
        try:
            with ctx.sectra(record) as sectra:
                publisher = publisher_for(ctx, record, sectra)
                publisher.progress(words)
                remember_result(ctx, record.run_id, publisher)
            ctx.store.update(record.run_id, progress_posted_at=time.time())
        except Exception as exc:  # progress is a courtesy; the job goes on regardless
            log.warning("progress update to Sectra failed", extra={"error_type": type(exc).__name__})
    return status
