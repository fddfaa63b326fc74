"""The Google Cloud Storage resumable-upload protocol, as Strand's `uploadUrl` speaks it.

Rules followed exactly (https://cloud.google.com/storage/docs/performing-resumable-uploads):
every non-final chunk is a multiple of 256 KiB; after a 308 the next chunk starts
where the server's `Range: bytes=0-N` says (N+1 bytes kept; no `Range` = none kept),
which may be short of what was sent; after 408/429/5xx, a timeout or a reset we
back off (the client's retry layer) and *ask* (`Content-Range: bytes */TOTAL`) instead
of assuming; 404/410 means the session is gone and a new one is needed.

Memory: one reusable buffer of `chunk_size` bytes. Each PUT streams memoryview
slices of it, so no request object ever owns a copy of a chunk (httpx keeps a
request's `bytes` body alive until the cycle collector runs, which is how a
naive loop grows by hundreds of MiB over a large slide).
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import httpx

from strand_client._errors import UploadError
from strand_client._models import UploadCheckpoint
from strand_client._retry import RETRYABLE_STATUS, RetryPolicy, parse_retry_after

GCS_QUANTUM = 256 * 1024
_PIECE = 1024 * 1024  # bytes handed to the socket per write: bounds the transport's transient copies
_RANGE = re.compile(r"^bytes=0-(\d+)$")

ProgressCallback = Callable[[int, int], None]
CheckpointCallback = Callable[[UploadCheckpoint], None]


class SessionGone(Exception):
    """The upload session answered 404/410: it expired or was never there; open a new one."""


class _Transient(Exception):
    def __init__(self, reason: str, status: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.retry_after = retry_after


@dataclass
class _Outcome:
    complete: bool
    offset: int


@dataclass
class _Session:
    """Where one session stands, as this sender last learned it from the server."""

    checkpoint: UploadCheckpoint
    must_ask: bool
    progress: ProgressCallback | None
    on_checkpoint: CheckpointCallback | None

    @property
    def offset(self) -> int:
        return self.checkpoint.offset

    @property
    def total(self) -> int:
        return self.checkpoint.total_size

    def moved_to(self, offset: int) -> None:
        """Record the server's offset; every change is checkpointed and reported."""
        if offset == self.checkpoint.offset:
            return
        self.checkpoint = replace(self.checkpoint, offset=offset)
        if self.on_checkpoint is not None:
            self.on_checkpoint(self.checkpoint)
        if self.progress is not None:
            self.progress(offset, self.total)


def kept_bytes(response: httpx.Response) -> int:
    """Bytes the server holds, from a 308's `Range` header (absent = nothing kept)."""
    value = response.headers.get("Range")
    if value is None:
        return 0
    match = _RANGE.match(value.strip())
    if match is None:
        raise UploadError(f"Upload session sent an unreadable Range header: {value!r}", response.status_code)
    return int(match.group(1)) + 1


def _slices(view: memoryview) -> Iterator[memoryview]:
    for start in range(0, len(view), _PIECE):
        yield view[start : start + _PIECE]


class ResumableSender:
    """Sends one file to one session; raises `SessionGone` for the caller to open a new session."""

    def __init__(
        self,
        client: httpx.Client,
        policy: RetryPolicy,
        *,
        chunk_size: int,
        content_type: str,
    ) -> None:
        if chunk_size <= 0 or chunk_size % GCS_QUANTUM:
            raise ValueError("chunk_size must be a positive multiple of 256 KiB")
        self._client = client
        self._policy = policy
        self._chunk_size = chunk_size
        self._content_type = content_type
        self._buffer = bytearray(chunk_size)

    def send(
        self,
        path: Path,
        checkpoint: UploadCheckpoint,
        *,
        ask_first: bool,
        progress: ProgressCallback | None = None,
        on_checkpoint: CheckpointCallback | None = None,
    ) -> None:
        """Bring the session to "complete". `ask_first` when resuming: the server's offset wins.

        Each chunk is one retried unit of the client's retry layer: after a transient failure the
        next attempt asks the server where it stands, then sends from there. A chunk that moved the
        offset starts the next one with a fresh count, so only consecutive failures give up.
        """
        state = _Session(checkpoint, must_ask=ask_first, progress=progress, on_checkpoint=on_checkpoint)
        with path.open("rb", buffering=0) as source:
            while True:
                try:
                    complete = self._policy.call(
                        lambda: self._advance(source, state),
                        lambda exc: isinstance(exc, _Transient),
                        what="upload chunk",
                    )
                except _Transient as exc:
                    raise UploadError(
                        f"Upload gave up after {self._policy.max_retries + 1} consecutive failures "
                        f"(last: {exc})",
                        exc.status,
                        "upload_stalled",
                    ) from exc
                if complete:
                    if progress is not None:
                        progress(state.total, state.total)
                    return

    def _advance(self, source: io.FileIO, state: _Session) -> bool:
        """One protocol step: learn the server's offset if needed, then send the next chunk.

        True when the session is complete; raises `_Transient` when the step must be retried.
        """
        url, total = state.checkpoint.upload_url, state.total
        if state.must_ask or state.offset >= total:
            outcome = self._ask(url, total)
            state.must_ask = False
            if outcome.complete:
                return True
            state.moved_to(outcome.offset)
            if state.offset >= total:
                raise _Transient("no progress: the session holds every byte but is not finalised", 308)
        before = state.offset
        try:
            outcome = self._put_chunk(source, url, before, total)
        except _Transient:
            state.must_ask = True
            raise
        if outcome.complete:
            return True
        state.moved_to(outcome.offset)
        if state.offset <= before:
            raise _Transient("no progress: the chunk was not kept", 308)
        return False

    def _put_chunk(self, source: io.FileIO, url: str, offset: int, total: int) -> _Outcome:
        length = min(self._chunk_size, total - offset)
        view = memoryview(self._buffer)[:length]
        source.seek(offset)
        filled = 0
        while filled < length:
            got = source.readinto(view[filled:])
            if not got:
                raise UploadError(
                    f"File shrank during upload: expected {total} bytes, ended at {offset + filled}"
                )
            filled += got
        headers = {
            "Content-Length": str(length),
            "Content-Range": f"bytes {offset}-{offset + length - 1}/{total}",
            "Content-Type": self._content_type,
        }
        return self._exchange(url, headers, _slices(view))

    def _ask(self, url: str, total: int) -> _Outcome:
        headers = {"Content-Length": "0", "Content-Range": f"bytes */{total}"}
        return self._exchange(url, headers, b"")

    def _exchange(self, url: str, headers: dict[str, str], content: bytes | Iterator[memoryview]) -> _Outcome:
        try:
            response = self._client.put(url, content=content, headers=headers)  # type: ignore[arg-type]
        except httpx.TransportError as exc:
            raise _Transient(type(exc).__name__) from exc
        try:
            status = response.status_code
            if status in (200, 201):
                return _Outcome(True, 0)
            if status == 308:
                return _Outcome(False, kept_bytes(response))
            if status in (404, 410):
                raise SessionGone(f"upload session answered {status}")
            if status in RETRYABLE_STATUS:
                raise _Transient(
                    f"HTTP {status}", status, parse_retry_after(response.headers.get("Retry-After"))
                )
            raise UploadError(f"Upload session refused a chunk: HTTP {status}", status, "upload_rejected")
        finally:
            response.close()
