"""How the web role (and operators) hand runs to the workers."""

from __future__ import annotations

from workers import runtime
from workers.runstore import RunRecord, RunStatus
from workers.tasks import schedule


def enqueue_run(run_id: str) -> None:
    """Start a freshly recorded run."""
    schedule(run_id)


def resume_point(record: RunRecord) -> RunStatus:
    """The first stage a failed run still has to do, from its checkpoints (nothing is redone)."""
    if record.job_id and record.summary is not None:
        return RunStatus.publishing
    if record.job_id:
        return RunStatus.waiting
    if record.upload_id and record.upload_complete:
        return RunStatus.submitting
    if record.outgoing_files:
        return RunStatus.uploading
    if record.staged_files:
        return RunStatus.deidentifying
    return RunStatus.downloading


def retry_run(run_id: str) -> RunStatus:
    """Re-drive a failed run from its last good checkpoint; returns the stage it restarts at."""
    store = runtime.context().store
    record = store.require(run_id)
    target = resume_point(record)
    store.transition(run_id, target, retry=True, attempts=0, error=None)
    store.append_event(run_id, "operator_retry", stage=target.value)
    schedule(run_id)
    return target


def cancel_run(run_id: str, note: str = "cancelled by an operator") -> None:
    store = runtime.context().store
    store.request_cancel(run_id, note)
    schedule(run_id)


def cancel_strand_job(job_id: str) -> None:
    """Cancel a Strand job whose run is being deleted, so its reserved credits are refunded.

    Raises the client's errors; the caller decides whether a failure matters.
    """
    runtime.context().strand().jobs.cancel(job_id)
