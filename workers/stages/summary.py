"""Stage `summarising`: read Strand's marker maps and reduce each to the figures the pathologist sees.

The summary is stored in the run record, so a Sectra outage at publish time
never costs a second read of the maps (let alone a second Strand job). Each
marker's density grid is kept beside the run (`GRIDS_BLOB`): the bands are
drawn from it and a hotspot review recomputes the figures from it.

A region run summarises the tissue inside its drawn regions only; the job it
reads (its own, or an earlier one of the slide: `workers.reuse`) analysed the
whole slide. A run whose own job was summarised offers that job to later runs.
"""

from __future__ import annotations

import logging

from workers import messages, reuse
from workers.context import PipelineContext
from workers.errors import RunRefused
from workers.grid import grids_to_bytes
from workers.runstore import GRIDS_BLOB, RunRecord
from workers.summarise import RegionWithoutTissue, summarise_job
from workers.summary_record import StoredSummary, regions_of

log = logging.getLogger(__name__)


def run(ctx: PipelineContext, record: RunRecord) -> None:
    if record.summary is not None:
        return
    assert record.job_id is not None
    app = ctx.app(record)
    regions = regions_of(record, app)
    strand = ctx.strand()
    job = strand.jobs.get(record.job_id)  # reads the job's status: one GET per pass
    status = job.last_status
    assert status is not None
    try:
        with job.results() as results:
            summaries, missing, grids = summarise_job(
                results,
                app.markers,
                threshold=app.positivity_threshold,
                slide_width=record.slide_width or 0,
                slide_height=record.slide_height or 0,
                microns_per_pixel=record.microns_per_pixel or 0.0,
                regions=regions,
            )
    except RegionWithoutTissue as exc:
        raise RunRefused(exc.message) from None  # the drawn region, not the results, is the problem
    if status.status == "partial_failed":
        # Strand's own reason beats "not in the results": it says why the marker failed.
        delivered = {s.marker for s in summaries}
        detail = f" ({status.error_message})" if status.error_message else ""
        for marker in app.markers:
            if marker not in delivered:
                missing[marker] = messages.partially_delivered([marker]) + detail
    # Grids first: a crash between the two writes re-summarises (the summary is the checkpoint).
    try:
        blob = grids_to_bytes(grids)
        ctx.store.put_blob(record.run_id, GRIDS_BLOB, blob)
    except ValueError as exc:
        # Only grids far finer than any slide needs exceed the blob bound: the figures stand, the
        # result goes without bands and the review is unavailable; the audit trail says so.
        log.warning("density grids not kept", extra={"error_type": type(exc).__name__})
        ctx.store.append_event(record.run_id, "grids_not_kept", reason=str(exc)[:200])
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
    if status.status in reuse.READABLE and reuse.remember(
        ctx, record, app, status, [s.marker for s in summaries]
    ):
        ctx.store.append_event(record.run_id, "results_offered_for_reuse", job_id=record.job_id)
