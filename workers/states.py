"""The run state machine: which status may follow which.

Kept strict on purpose: the pipeline walks every stage, so a skipped or
backwards step is a bug (or two workers racing on one run) and must fail
loudly instead of silently corrupting a run's checkpoints.
"""

from __future__ import annotations

from enum import StrEnum


class RunStatus(StrEnum):
    # Lower-case members, so `RunStatus.waiting` reads like the value stored in Redis and shown in logs.
    received = "received"
    downloading = "downloading"
    deidentifying = "deidentifying"
    uploading = "uploading"
    submitting = "submitting"
    waiting = "waiting"
    summarising = "summarising"
    publishing = "publishing"
    completed = "completed"
    failed = "failed"
    cancelled = "cancelled"

    @property
    def is_final(self) -> bool:
        return self in FINAL_STATES


# The happy path, in order; each state may only advance to the next one.
WORKING_ORDER: tuple[RunStatus, ...] = (
    RunStatus.received,
    RunStatus.downloading,
    RunStatus.deidentifying,
    RunStatus.uploading,
    RunStatus.submitting,
    RunStatus.waiting,
    RunStatus.summarising,
    RunStatus.publishing,
)
FINAL_STATES = frozenset({RunStatus.completed, RunStatus.failed, RunStatus.cancelled})
WORKING_STATES = frozenset(WORKING_ORDER)
# The one step off the happy path: a run that reads an earlier Strand job's results of the same slide
# (`workers.reuse`) goes from `downloading` (where it learnt the slide's size and found the job) straight
# to `summarising`; it has nothing to de-identify, upload, submit or wait for. Nothing else may skip.
REUSE_SHORTCUT: tuple[RunStatus, RunStatus] = (RunStatus.downloading, RunStatus.summarising)


class IllegalTransition(ValueError):
    """A status change the state machine forbids; names both ends so the log explains the race."""

    def __init__(self, run_id: str, current: RunStatus, target: RunStatus, *, retry: bool = False) -> None:
        hint = ""
        if retry and current is not RunStatus.failed:
            hint = " (only a failed run may be retried)"
        elif current is RunStatus.failed and target in WORKING_STATES:
            hint = " (a failed run restarts only when an operator retries it)"
        super().__init__(f"run {run_id}: cannot move from {current.value!r} to {target.value!r}{hint}")
        self.run_id = run_id
        self.current = current
        self.target = target


def allowed_sources(target: RunStatus, *, retry: bool = False) -> frozenset[RunStatus]:
    """Every status from which `target` may be entered.

    Re-entering the same status is always allowed: a worker killed after the
    transition but before the stage finished replays the stage from the top.
    """
    sources = {target}
    if target is RunStatus.completed:
        sources.add(RunStatus.publishing)
    elif target in (RunStatus.failed, RunStatus.cancelled):
        sources |= WORKING_STATES
    else:
        index = WORKING_ORDER.index(target)
        if index > 0:
            sources.add(WORKING_ORDER[index - 1])
        if target is REUSE_SHORTCUT[1]:
            sources.add(REUSE_SHORTCUT[0])
        if retry:
            # Operator re-drive: a failed run restarts at whichever stage the operator picks.
            sources.add(RunStatus.failed)
    return frozenset(sources)


def check_transition(run_id: str, current: RunStatus, target: RunStatus, *, retry: bool = False) -> None:
    if current not in allowed_sources(target, retry=retry):
        raise IllegalTransition(run_id, current, target, retry=retry)
