"""Stage `publishing`: replace the pending Sectra result with the final one, then the extras.

Retried until Sectra answers (the summary is safe in the run record); the
update targets the run's one result, so a repeat cannot create a second. After
it come the hotspot gallery (posted once, `workers.review`) and the picture
the status page shows (`workers.render`, never a reason to fail the run). The
pipeline frees the run's disk once the run is completed, so the picture is
drawn while the staged slide is still here.
"""

from __future__ import annotations

from sectra_adapter import build_final_result
from workers.context import PipelineContext
from workers.render import store_thumbnail
from workers.review import publish_review
from workers.runstore import RunRecord
from workers.sectra_progress import publisher_for, remember_result
from workers.summary_record import run_summary


def run(ctx: PipelineContext, record: RunRecord) -> None:
    summary = run_summary(record, ctx.app(record), ctx.store)  # with the bands from the kept grids
    final = build_final_result(summary)
    with ctx.sectra(record) as sectra:
        publisher = publisher_for(ctx, record, sectra)
        publisher.publish(final)
        remember_result(ctx, record.run_id, publisher)
        publish_review(ctx, ctx.store.require(record.run_id), sectra, summary)
    ctx.store.append_event(record.run_id, "published", result_id=publisher.result_id or 0)
    store_thumbnail(ctx, ctx.store.require(record.run_id), [final])
