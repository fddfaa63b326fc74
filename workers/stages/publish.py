"""Stage `publishing`: replace the pending Sectra result with the final one.

Retried until Sectra answers (the summary is safe in the run record); the
update targets the run's one result, so a repeat cannot create a second.
The pipeline frees the run's disk once the run is completed.
"""

from __future__ import annotations

from sectra_adapter import build_final_result
from workers.context import PipelineContext
from workers.runstore import RunRecord
from workers.sectra_progress import publisher_for, remember_result
from workers.summary_record import run_summary


def run(ctx: PipelineContext, record: RunRecord) -> None:
    summary = run_summary(record, ctx.app(record))
    with ctx.sectra(record) as sectra:
        publisher = publisher_for(ctx, record, sectra)
        publisher.publish(build_final_result(summary))
        remember_result(ctx, record.run_id, publisher)
    ctx.store.append_event(record.run_id, "published", result_id=publisher.result_id or 0)
