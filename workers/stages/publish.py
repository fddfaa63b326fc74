"""Stage `publishing`: replace the pending Sectra result with the final one, then free the disk.

Retried until Sectra answers (the summary is safe in the run record); the
update targets the run's one result, so a repeat cannot create a second.
"""

from __future__ import annotations

import shutil

from sectra_adapter.results import build_final_result
from sectra_adapter.summary import RunSummary
from workers.context import PipelineContext
from workers.runstore import RunRecord
from workers.stages.progress import publisher_for, remember_result
from workers.stages.summary import markers_from


def run(ctx: PipelineContext, record: RunRecord) -> None:
    assert record.summary is not None and record.job_id is not None
    app = ctx.app(record)
    summary = RunSummary(
        slide_id=record.slide_id,
        slide_width=record.slide_width or 1,
        slide_height=record.slide_height or 1,
        markers=markers_from(record.summary),
        job_id=record.job_id,
        app_version=app.version,
        threshold=app.positivity_threshold,
        credits=record.reserved_credits,
        model=record.model,
        missing_markers=dict(record.summary.get("missing") or {}),
    )
    with ctx.sectra(record) as sectra:
        publisher = publisher_for(ctx, record, sectra)
        publisher.publish(build_final_result(summary))
        remember_result(ctx, record.run_id, publisher)
    ctx.store.append_event(record.run_id, "published", result_id=publisher.result_id or 0)
    shutil.rmtree(ctx.run_dir(record.run_id), ignore_errors=True)
