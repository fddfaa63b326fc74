"""Stage `uploading`: send the de-identified slide to Strand, once.

Three ways to avoid sending bytes again, cheapest first: this bridge's own
record of outgoing checksum -> Strand upload (a second app on the same slide),
the platform's `contentSha256` dedup, and the persisted resumable session
(a worker that crashed mid-upload continues from Strand's persisted offset).
"""

from __future__ import annotations

import logging

from strand_client import NotFoundError, UploadCheckpoint
from workers import messages
from workers.context import PipelineContext
from workers.errors import RunRefused
from workers.observability import BYTES_UPLOADED
from workers.runstore import RunRecord
from workers.sectra_progress import TransferProgress, publisher_for
from workers.staging import largest, upload_name

log = logging.getLogger(__name__)

_REUSABLE = {"ready", "preprocessing", "uploaded", "deid_running"}


def _reuse_known_upload(ctx: PipelineContext, record: RunRecord, sha256: str) -> str | None:
    upload_id = ctx.uploads.get(sha256)
    if upload_id is None:
        return None
    try:
        upload = ctx.strand().uploads.get(upload_id)
    except NotFoundError:
        ctx.uploads.forget(sha256)
        return None
    if upload.status not in _REUSABLE:
        log.info("known Strand upload is not reusable", extra={"upload_status": upload.status})
        ctx.uploads.forget(sha256)
        return None
    return upload_id


def needs_outgoing_copy(ctx: PipelineContext, record: RunRecord) -> bool:
    """True when the upload still has bytes to send and the de-identified copy is not on this pod."""
    if record.upload_id and record.upload_complete:
        return False
    outgoing = record.outgoing_files
    return bool(outgoing) and ctx.staging.outgoing_file(record.run_id, outgoing) is None


def run(ctx: PipelineContext, record: RunRecord) -> None:
    if record.upload_id and record.upload_complete:
        return
    if not record.outgoing_files:
        raise RunRefused(messages.not_prepared())
    entry = largest(record.outgoing_files)
    path = ctx.staging.outgoing_file(record.run_id, record.outgoing_files)
    if path is None:
        raise RuntimeError("upload started without the de-identified copy on this pod")
    sha256 = entry["sha256"]

    reused = _reuse_known_upload(ctx, record, sha256)
    if reused is not None:
        ctx.store.update(record.run_id, upload_id=reused, upload_complete=True, slide_sha256=sha256)
        ctx.store.append_event(record.run_id, "upload_reused", upload_id=reused, source="bridge")
        return

    resume = None
    if record.upload_url and record.upload_id:
        resume = UploadCheckpoint(
            upload_id=record.upload_id,
            upload_url=record.upload_url,
            offset=record.upload_offset or 0,
            total_size=record.upload_total or entry["size"],
        )

    def checkpoint(cp: UploadCheckpoint) -> None:
        ctx.store.update(
            record.run_id,
            upload_id=cp.upload_id,
            upload_url=cp.upload_url,
            upload_offset=cp.offset,
            upload_total=cp.total_size,
        )

    with ctx.sectra(record) as sectra:
        upload = ctx.strand().uploads.upload_file(
            path,
            progress=TransferProgress(
                ctx, record, publisher_for(ctx, record, sectra), messages.UPLOAD_PROGRESS
            ),
            filename=upload_name(record.run_id, entry),
            content_sha256=sha256,
            resume=resume,
            on_checkpoint=checkpoint,
        )
    sent = 0 if upload.existing else entry["size"] - (resume.offset if resume else 0)
    BYTES_UPLOADED.inc(max(sent, 0))
    ctx.store.update(
        record.run_id,
        upload_id=upload.id,
        upload_complete=True,
        slide_sha256=sha256,
        upload_url=None,
    )
    ctx.uploads.remember(sha256, upload.id)
    ctx.store.append_event(
        record.run_id,
        "upload_reused" if upload.existing else "uploaded",
        upload_id=upload.id,
        source="strand" if upload.existing else "bridge",
        width_px=upload.width_px or 0,
        height_px=upload.height_px or 0,
    )
