"""Stage `downloading`: stream the slide from Sectra into the run's staging directory.

Sectra's image info is read first: a slide its QC rejected (`workers.quality`) or the app's gate
refuses is never downloaded, and the slide's priority (`workers.priority`) orders the run's later
steps. Skips the download when an earlier attempt already staged and verified every
file on this pod (a worker crash after the download must not fetch gigabytes again).

A region run checks its drawn regions against the slide's size before anything else is spent
(a bad region ends the run in plain words, with no download and no Strand job). A region run, or
a whole-slide run of an app with `reuse_results`, then looks for an earlier job of the slide whose
results it can read (`workers.reuse`); with one, nothing is downloaded and the run goes straight
to `summarising` (the stage returns that status to the pipeline).
"""

from __future__ import annotations

import hashlib

from sectra_adapter import check_slide
from workers import messages, reuse
from workers.context import PipelineContext
from workers.errors import RunRefused
from workers.observability import BYTES_DOWNLOADED
from workers.priority import RunPriorities, celery_priority
from workers.quality import qc_refusal
from workers.runstore import RunRecord, RunStatus, StagedFile
from workers.sectra_progress import TransferProgress, publisher_for, remember_result
from workers.summary_record import regions_of


def run(ctx: PipelineContext, record: RunRecord) -> RunStatus | None:
    """Fetch the slide; returns `summarising` when the run reads an earlier job's results instead."""
    staging = ctx.staging
    if staging.originals(record.run_id, record.staged_files) is not None:
        ctx.store.append_event(record.run_id, "download_skipped", reason="already staged")
        return None
    app = ctx.app(record)
    if app.input != "wholeSlide" and record.region_input is None:
        # A region app's run without its region (a create whose webhook died before storing it):
        # never analyse the whole slide in its place.
        raise RunRefused(messages.region_missing())
    folder = staging.staged_dir(record.run_id)
    with ctx.sectra(record) as sectra:
        metadata = sectra.get_image_metadata(record.slide_id)
        reason = qc_refusal(metadata, source=record.source, ignore_qc=app.ignore_qc) or check_slide(
            metadata, **app.slide_gate.model_dump()
        )
        if reason:
            raise RunRefused(reason)
        # Every later step of the run (retries and recovery too) is queued at the slide's priority.
        priorities = RunPriorities(
            ctx.store.client, prefix=ctx.store.prefix, ttl_seconds=ctx.store.retention_seconds
        )
        priorities.remember(record.run_id, celery_priority(metadata.priority))
        record = ctx.store.update(
            record.run_id,
            slide_width=metadata.imageSize.width,
            slide_height=metadata.imageSize.height,
            microns_per_pixel=metadata.micronsPerPixel,
        )
        regions = regions_of(record, app)  # a bad region is refused here: nothing downloaded or spent
        if regions:
            points = sum(len(r.points) for r in regions)
            ctx.store.append_event(record.run_id, "regions_checked", regions=len(regions), points=points)
        # Only a run at its first stage may skip ahead (`_ensure_originals` re-fetches for later ones).
        if record.status == RunStatus.downloading and reuse.wants_reuse(app, record):
            entry = reuse.find_reusable(ctx, record, app)
            if entry is not None:
                reuse.adopt(ctx, record, entry)
                return RunStatus.summarising
        publisher = publisher_for(ctx, record, sectra)
        staging.clear_staged(record.run_id)
        publisher.progress(messages.STAGE_MESSAGES[RunStatus.downloading], force=True)
        remember_result(ctx, record.run_id, publisher)
        files = sectra.download_slide(
            record.slide_id,
            folder,
            progress=TransferProgress(ctx, record, publisher, messages.FETCH_PROGRESS),
        )
    staged = [StagedFile(name=f.path.name, size=f.size, sha256=f.sha256) for f in files]
    BYTES_DOWNLOADED.inc(sum(f.size for f in files))
    digest = hashlib.sha256("".join(sorted(f.sha256 for f in files)).encode()).hexdigest()
    ctx.store.update(record.run_id, staged_files=staged, source_sha256=digest)
    ctx.store.append_event(record.run_id, "downloaded", files=len(files), bytes=sum(f.size for f in files))
    return None
