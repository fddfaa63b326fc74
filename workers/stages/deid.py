"""Stage `deidentifying`: make the outgoing copy anonymous, then prove it, failing closed.

Identifying strings come from Sectra's PHI metadata and the original file
names; they live only in this function's memory and are never logged or
stored — the audit trail records field *names* only. A region run whose drawn
area is bare glass on the verified copy ends here, before anything is sent.
"""

from __future__ import annotations

from pathlib import Path

from workers import messages
from workers.context import PipelineContext
from workers.deidentify import deidentify_slide, identifiers_from_metadata, verify_deidentified
from workers.deidentify.detect import MRXS
from workers.errors import RunRefused
from workers.runstore import RunRecord
from workers.staging import bundle, describe, largest
from workers.summary_record import regions_of
from workers.tissue import slide_regions_hold_tissue


def inputs(ctx: PipelineContext, record: RunRecord) -> list[Path] | None:
    """The files to de-identify on this pod: the staged download, or what an interrupted attempt left.

    De-identification moves the staged files into `outgoing` and edits them in place, in an order
    that is safe to repeat, so a crash mid-edit is finished by running it again on its own output.
    None when neither is here (the run resumed on another pod): the slide must be fetched first.
    """
    staging = ctx.staging
    return (
        staging.originals(record.run_id, record.staged_files)
        or staging.interrupted_outgoing(record.run_id)
        or None
    )


def run(ctx: PipelineContext, record: RunRecord) -> None:
    app = ctx.app(record)
    original_names = [entry["name"] for entry in record.staged_files]
    files_in = inputs(ctx, record)
    if files_in is None:
        raise RuntimeError("de-identification started without the slide on this pod")
    out = ctx.staging.outgoing_dir(record.run_id)
    files, report = deidentify_slide(files_in, run_id=record.run_id, out_dir=out, enabled=app.deidentify)
    if app.deidentify:
        with ctx.sectra(record) as sectra:
            metadata = sectra.get_image_metadata(record.slide_id, extended=True, phi=True)
        verify_deidentified(files, identifiers=identifiers_from_metadata(metadata, original_names))
        del metadata
    _refuse_a_region_on_glass(ctx, record, files)
    if report.format == MRXS:  # one upload per slide: the verified set goes as one archive
        files = [bundle(files, out, record.run_id)]
    outgoing = describe(files, out)
    checkpoint: dict[str, object] = {}
    if record.outgoing_files and largest(record.outgoing_files)["sha256"] != largest(outgoing)["sha256"]:
        # Prepared again on another pod and not byte-identical: a half-sent session cannot continue.
        checkpoint = {"upload_url": None, "upload_offset": 0}
    ctx.store.update(
        record.run_id,
        outgoing_files=outgoing,
        deidentify_report={
            "format": report.format,
            "removed_images": report.removed_images,
            "blanked_fields": report.blanked_fields,
            "skipped": report.skipped,
        },
        **checkpoint,
    )
    ctx.store.append_event(
        record.run_id,
        "deidentified" if not report.skipped else "deidentification_skipped_by_app_config",
        format=report.format,
        removed_images=",".join(report.removed_images),
        blanked_fields=",".join(report.blanked_fields),
        files=len(files),
    )


def _refuse_a_region_on_glass(ctx: PipelineContext, record: RunRecord, files: list[Path]) -> None:
    """A region run whose drawn area holds no tissue ends here, in plain words, before any upload
    or Strand job (`workers.tissue`; a region it cannot judge goes on, and the summary decides)."""
    regions = regions_of(record, ctx.app(record))
    if not regions:
        return
    holds = slide_regions_hold_tissue(
        files, regions, slide_width=record.slide_width or 0, slide_height=record.slide_height or 0
    )
    ctx.store.append_event(record.run_id, "region_tissue_checked", holds_tissue=str(holds).lower())
    if holds is False:
        raise RunRefused(messages.region_no_tissue())
