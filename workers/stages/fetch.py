"""Stage `downloading`: stream the slide from Sectra into the run's staging directory.

Skips the download when an earlier attempt already staged and verified every
file (a worker crash after the download must not fetch gigabytes again).
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

from sectra_adapter.gate import check_slide
from workers.context import PipelineContext
from workers.observability import BYTES_DOWNLOADED
from workers.runstore import RunRecord
from workers.stages.progress import TransferProgress, publisher_for, remember_result


class RunRefused(Exception):
    """The run cannot go on for a reason the pathologist should read; never retried."""


def staged_dir(ctx: PipelineContext, run_id: str) -> Path:
    return ctx.run_dir(run_id) / "staged"


def _already_staged(ctx: PipelineContext, record: RunRecord) -> bool:
    if not record.staged_files:
        return False
    folder = staged_dir(ctx, record.run_id)
    return all(
        (folder / entry["name"]).is_file() and (folder / entry["name"]).stat().st_size == entry["size"]
        for entry in record.staged_files
    )


def run(ctx: PipelineContext, record: RunRecord) -> None:
    if _already_staged(ctx, record):
        ctx.store.append_event(record.run_id, "download_skipped", reason="already staged")
        return
    app = ctx.app(record)
    folder = staged_dir(ctx, record.run_id)
    shutil.rmtree(folder, ignore_errors=True)
    with ctx.sectra(record) as sectra:
        publisher = publisher_for(ctx, record, sectra)
        metadata = sectra.get_image_metadata(record.slide_id)
        reason = check_slide(metadata, **app.slide_gate.model_dump())
        if reason:
            raise RunRefused(reason)
        ctx.store.update(
            record.run_id,
            slide_width=metadata.imageSize.width,
            slide_height=metadata.imageSize.height,
            microns_per_pixel=metadata.micronsPerPixel,
        )
        publisher.progress("Fetching the slide from Sectra", force=True)
        remember_result(ctx, record.run_id, publisher)
        files = sectra.download_slide(
            record.slide_id, folder, progress=TransferProgress(ctx, record, publisher, "Fetching the slide")
        )
    staged = [{"name": f.path.name, "size": f.size, "sha256": f.sha256} for f in files]
    BYTES_DOWNLOADED.inc(sum(f.size for f in files))
    digest = hashlib.sha256("".join(sorted(f.sha256 for f in files)).encode()).hexdigest()
    ctx.store.update(record.run_id, staged_files=staged, source_sha256=digest)
    ctx.store.append_event(record.run_id, "downloaded", files=len(files), bytes=sum(f.size for f in files))
