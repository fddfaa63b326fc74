"""Stage `summarising`: read Strand's marker maps and reduce each to the figures the pathologist sees.

The summary is stored in the run record, so a Sectra outage at publish time
never costs a second read of the maps (let alone a second Strand job).
"""

from __future__ import annotations

from workers import messages
from workers.context import PipelineContext
from workers.runstore import RunRecord
from workers.summarise import summarise_job
from workers.summary_record import StoredSummary


def run(ctx: PipelineContext, record: RunRecord) -> None:
    if record.summary is not None:
        return
    assert record.job_id is not None
    app = ctx.app(record)
    strand = ctx.strand()
    job = strand.jobs.get(record.job_id)  # reads the job's status: one GET per pass
    status = job.last_status
    assert status is not None
    with job.results() as results:
        summaries, missing = summarise_job(
            results,
            app.markers,
            threshold=app.positivity_threshold,
            slide_width=record.slide_width or 0,
            slide_height=record.slide_height or 0,
            microns_per_pixel=record.microns_per_pixel or 0.0,
        )
    if status.status == "partial_failed":
        # Strand's own reason beats "not in the results": it says why the marker failed.
        delivered = {s.marker for s in summaries}
        detail = f" ({status.error_message})" if status.error_message else ""
        for marker in app.markers:
            if marker not in delivered:
                missing[marker] = messages.partially_delivered([marker]) + detail
    ctx.store.update(
        record.run_id,
        model=status.model or record.model,
        summary=StoredSummary(markers=summaries, missing=missing, job_error=status.error_message).to_record(),
    )
    for figures in summaries:
        if figures.geometry_mismatch:  # the metadata is never silently overridden: the audit trail says so
            ctx.store.append_event(
                record.run_id, "geometry_mismatch", marker=figures.marker, detail=figures.geometry_mismatch
            )
    ctx.store.append_event(
        record.run_id, "summarised", markers=len(summaries), missing=",".join(sorted(missing))
    )
