"""`client.uploads`: initiate (with content dedup), send resumably, complete; and look an upload up."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from strand_client._errors import ConflictError, UploadError
from strand_client._http import HttpSession, Retry
from strand_client._models import Upload, UploadCheckpoint, UploadSession
from strand_client._resumable import CheckpointCallback, ProgressCallback, ResumableSender, SessionGone

log = logging.getLogger("strand_client")

MiB = 1024 * 1024
DEFAULT_CHUNK_SIZE = 8 * MiB
DEFAULT_CONTENT_TYPE = "application/octet-stream"
# A session that keeps vanishing is a platform problem, not something more retries fix.
MAX_NEW_SESSIONS = 3

_CONTENT_TYPES = {
    ".svs": "image/aperio-svs",
    ".tif": "image/tiff",
    ".tiff": "image/tiff",
    ".ndpi": "image/ndpi",
    ".scn": "image/scn",
    ".mrxs": "image/mrxs",
    ".zip": "application/zip",  # a multi-file slide (MRXS with its data directory) in one archive
    ".vsi": "image/vsi",
    ".bif": "image/bif",
    ".dcm": "application/dicom",
}


class Uploads:
    """Namespace exposed as `Client.uploads`."""

    def __init__(self, http: HttpSession) -> None:
        self._http = http

    def get(self, upload_id: str) -> Upload:
        """`GET /uploads/{id}`: status `uploading`, `preprocessing`, `ready` or `upload_failed`."""
        return Upload.from_wire(self._http.get_json(f"/uploads/{upload_id}"))

    def upload_file(
        self,
        path: str | os.PathLike[str],
        progress: ProgressCallback | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        *,
        filename: str | None = None,
        content_type: str | None = None,
        content_sha256: str | None = None,
        resume: UploadCheckpoint | None = None,
        on_checkpoint: CheckpointCallback | None = None,
    ) -> Upload:
        """Upload a local file, resuming `resume` when given, and return the completed upload.

        `filename` is what Strand records (pass a neutral name: the local one may
        carry patient data). `on_checkpoint` receives every session URL and
        confirmed offset; persist it and pass it back as `resume` after a crash.
        With `content_sha256`, an upload Strand already holds is returned at once
        (`existing=True`) and no byte is sent.
        """
        local = Path(path)
        total = local.stat().st_size
        name = filename or local.name
        ctype = content_type or _CONTENT_TYPES.get(Path(name).suffix.lower(), DEFAULT_CONTENT_TYPE)
        sender = ResumableSender(
            self._http.client, self._http.policy, chunk_size=chunk_size, content_type=ctype
        )

        if resume is not None and resume.total_size != total:
            raise UploadError(
                f"Checkpoint is for a {resume.total_size}-byte file, this one has {total} bytes",
                error_code="checkpoint_mismatch",
            )
        checkpoint, ask_first = resume, resume is not None
        for _ in range(MAX_NEW_SESSIONS + 1):
            if checkpoint is None:
                opened = self._initiate(name, total, ctype, content_sha256)
                if isinstance(opened, Upload):
                    return opened
                checkpoint, ask_first = opened, False
                if on_checkpoint is not None:
                    on_checkpoint(checkpoint)
            try:
                sender.send(
                    local, checkpoint, ask_first=ask_first, progress=progress, on_checkpoint=on_checkpoint
                )
            except SessionGone:
                log.warning("Upload session is gone; opening a new one")
                checkpoint = None
                continue
            return self._complete(checkpoint.upload_id)
        raise UploadError(
            f"Upload sessions kept disappearing ({MAX_NEW_SESSIONS + 1} in a row)", error_code="session_lost"
        )

    def _initiate(
        self, name: str, total: int, content_type: str, content_sha256: str | None
    ) -> Upload | UploadCheckpoint:
        """`POST /uploads`. Not repeated after an ambiguous failure: that would open a second session."""
        body: dict[str, Any] = {"filename": name, "fileSize": total, "contentType": content_type}
        if content_sha256 is not None:
            body["contentSha256"] = content_sha256
        raw = self._http.post_json("/uploads", body, retry=Retry.UNSENT_ONLY)
        if raw.get("existing"):
            return Upload.from_wire(raw, existing=True)
        session = UploadSession.from_wire(raw)
        return UploadCheckpoint(session.upload_id, session.upload_url, 0, total)

    def _complete(self, upload_id: str) -> Upload:
        """`POST /uploads/{id}/complete`: idempotent on the platform, so retried like a GET."""
        try:
            return Upload.from_wire(self._http.post_json(f"/uploads/{upload_id}/complete"))
        except ConflictError as exc:
            # `upload_failed` (stored size differs from the declared one) or bytes still missing.
            raise UploadError(exc.message, exc.status_code, exc.error_code, exc.body) from exc
