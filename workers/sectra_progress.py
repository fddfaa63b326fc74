"""Progress in the run's one Sectra result, and the cancellation checkpoint inside long transfers.

A slide transfer can take many minutes; checking the run store on every chunk
would hammer Redis, so both the Sectra update and the cancellation check are
throttled to a few seconds.
"""

from __future__ import annotations

import logging
import time

from sectra_adapter import ResultPublisher, SectraAdapter
from workers.context import PipelineContext
from workers.result_guard import RunResultGuard
from workers.runstore import RunRecord

log = logging.getLogger(__name__)


def publisher_for(ctx: PipelineContext, record: RunRecord, sectra: SectraAdapter) -> ResultPublisher:
    """The run's single Sectra result, resumed from the ids the run store remembers."""
    app = ctx.app(record)
    return ResultPublisher(
        sectra,
        record.app_id,
        record.slide_id,
        app.version,
        result_id=record.sectra_result_id,
        version_id=record.sectra_version_id,
        min_interval=ctx.progress_interval,
        guard=RunResultGuard(ctx.store, record.run_id),
    )


def remember_result(ctx: PipelineContext, run_id: str, publisher: ResultPublisher) -> None:
    """Persist the result's latest version so the next task's update does not conflict."""
    ctx.store.update(run_id, sectra_result_id=publisher.result_id, sectra_version_id=publisher.version_id)


class TransferProgress:
    """Callback for byte transfers: throttled progress in Sectra, cancellation checks, a store checkpoint."""

    def __init__(
        self,
        ctx: PipelineContext,
        record: RunRecord,
        publisher: ResultPublisher,
        label: str,
        *,
        interval: float = 2.0,
    ) -> None:
        self._ctx = ctx
        self._record = record
        self._publisher = publisher
        self._label = label
        self._interval = interval
        self._last = 0.0

    def __call__(self, done: int, total: int | None) -> None:
        now = time.monotonic()
        if now - self._last < self._interval:
            return
        self._last = now
        self._ctx.check_cancelled(self._record.run_id)
        fraction = done / total if total else None
        message = f"{self._label} {fraction * 100:.0f} %" if fraction is not None else self._label
        self._ctx.store.update(self._record.run_id, stage_progress=fraction, message=message)
        try:
            self._publisher.progress(message)
        except Exception as exc:  # progress is a courtesy; a failed update must not fail the transfer
            log.warning("progress update to Sectra failed", extra={"error_type": type(exc).__name__})
            return
        remember_result(self._ctx, self._record.run_id, self._publisher)
