"""Writing a streamed slide response to disk: one file per part, hashed on the way, atomically named.

Each file is written as `name.part` and renamed only once complete, so a
reader never mistakes a half-written slide for a whole one; on any error every
file of the download (finished or not) is removed, because a partial set of
DICOM instances is as useless as a partial file. A body that can be read into
caller-supplied memory (`ReadInto`, what the adapter's urllib3 transport
offers) is received into a small `BufferPool`, with no new object per read.

The digest is SHA-256 on purpose: it is the run's record of what Sectra sent
(each staged file's `sha256`, and the run's `source_sha256` over them), which an
auditor checks with `sha256sum` or a FIPS-mode OpenSSL. It costs ~0.6 CPU-s per
GiB on its own thread, beside a transfer that is network-bound in a pod; only on
a machine whose cores the server shares does it cost time (`bench/download.py
--digest-rows` shows both). BLAKE3, ~4x faster on the benches' machines, would
need renamed fields and is not FIPS-approved.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from email.message import Message
from pathlib import Path

from sectra_adapter._background import BackgroundConsumer, Lender
from sectra_adapter._buffers import BufferPool
from sectra_adapter._errors import DownloadError
from sectra_adapter._filenames import PART_SUFFIX, NameAllocator, filename_from_disposition
from sectra_adapter._multipart import MultipartParser

ProgressCallback = Callable[[int, int | None], None]
# Fills the buffer from the body; the bytes written, 0 at its end. A short fill is read as it is.
ReadInto = Callable[[memoryview], int]
RECEIVE_BYTES = 1024 * 1024
# Receive buffers: one being filled, and one more than each consumer's queue holds, so the network
# waits for the disk or the hash only when one of them really is behind.
RECEIVE_BUFFERS = 10
PROGRESS_STEP = 8 * 1024 * 1024  # report at most every 8 MiB: callers post progress to Sectra
# O_NOFOLLOW: a symlink planted in the staging directory cannot redirect the write.
_OPEN_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True, slots=True)
class DownloadedFile:
    """One file of a slide, as written: its final path, byte size and SHA-256 (hex)."""

    path: Path
    size: int
    sha256: str
    content_type: str | None


class _OpenFile:
    """The part being written: a `.part` file fed by a writer thread and a hashing thread."""

    def __init__(self, final: Path, content_type: str | None, lender: Lender | None) -> None:
        self.final = final
        self.temp = final.with_name(final.name + PART_SUFFIX)
        self.content_type = content_type
        self.hasher = hashlib.sha256()
        self.size = 0
        # 0o600: staged slides may carry patient data until de-identified.
        self._fd = os.open(self.temp, _OPEN_FLAGS, 0o600)
        self._writer = BackgroundConsumer(self._write_all, name="slide-writer", lender=lender)
        self._hashing = BackgroundConsumer(self.hasher.update, name="slide-hasher", lender=lender)

    def write(self, data: memoryview) -> None:
        self._writer.submit(data)
        self._hashing.submit(data)
        self.size += len(data)

    def finish(self) -> None:
        """Flush everything to the `.part` file and move it to its final name."""
        error = self._stop_workers()
        if error is not None:
            raise error
        os.replace(self.temp, self.final)

    def abort(self) -> None:
        self._stop_workers()
        self.temp.unlink(missing_ok=True)

    def _stop_workers(self) -> BaseException | None:
        """Wait for both threads (never leave one blocked) and close the file; the first error, if any."""
        errors: list[BaseException] = []
        for worker in (self._writer, self._hashing):
            try:
                worker.close()
            except BaseException as exc:  # returned to the caller, who raises or discards it
                errors.append(exc)
        os.close(self._fd)
        return errors[0] if errors else None

    def _write_all(self, data: memoryview) -> None:
        while data:
            written = os.write(self._fd, data)
            data = data[written:]


class SlideFileWriter:
    """A multipart sink (and single-file writer) that turns parts into `DownloadedFile`s."""

    def __init__(self, output_dir: Path, lender: Lender | None = None) -> None:
        self._dir = output_dir
        self._lender = lender
        self._names = NameAllocator()
        self._current: _OpenFile | None = None
        self.files: list[DownloadedFile] = []

    def start_part(self, headers: dict[str, str]) -> None:
        name = self._names.allocate(
            filename_from_disposition(headers.get("content-disposition")), len(self.files) + 1
        )
        final = self._dir / name
        # Defence in depth: sanitising already guarantees a single component.
        if final.parent != self._dir:
            raise DownloadError(f"part {len(self.files) + 1} would be written outside the output directory")
        self._current = _OpenFile(final, headers.get("content-type"), self._lender)

    def write(self, data: memoryview) -> None:
        current = self._current
        if current is None:
            raise DownloadError("slide data arrived outside any part")
        current.write(data)

    def end_part(self) -> None:
        current = self._current
        if current is None:
            return
        self._current = None
        try:
            current.finish()
        except BaseException:
            current.temp.unlink(missing_ok=True)
            raise
        self.files.append(
            DownloadedFile(current.final, current.size, current.hasher.hexdigest(), current.content_type)
        )

    def discard(self) -> None:
        """Remove everything this download wrote: the open `.part` file and finished files."""
        if self._current is not None:
            self._current.abort()
            self._current = None
        for done in self.files:
            done.path.unlink(missing_ok=True)
        self.files.clear()


def write_response(
    headers: Mapping[str, str],
    body: Iterable[bytes] | ReadInto,
    output_dir: Path,
    progress: ProgressCallback | None = None,
) -> list[DownloadedFile]:
    """Stream one `/slides/{id}/files` body to `output_dir`; removes what it wrote if anything fails.

    A multipart body (`multipart/related` from real Sectra for several files,
    `multipart/form-data` from the mock) yields one file per part; any other
    type (`application/octet-stream`) is one file named by the response's
    `Content-Disposition`. `headers` are the response's; `body` its decoded
    bytes, as chunks or as a `ReadInto` (no content coding then).
    """
    output_dir.mkdir(parents=True, exist_ok=True)
    if callable(body):
        pool = BufferPool(RECEIVE_BUFFERS, RECEIVE_BYTES)
        writer = SlideFileWriter(output_dir, lender=pool)
        chunks: Iterable[bytes | bytearray] = _pooled_reads(body, pool)
    else:
        writer = SlideFileWriter(output_dir)
        chunks = body
    total = _declared_length(headers)
    try:
        received = _stream(headers, chunks, writer, total, progress)
        if total is not None and received != total:
            raise DownloadError(f"truncated body: received {received} of {total} bytes", transient=True)
    except BaseException:
        writer.discard()
        raise
    return writer.files


def _pooled_reads(readinto: ReadInto, pool: BufferPool) -> Iterator[bytes | bytearray]:
    """The body as the pool's buffers, each filled by `readinto` and released once the caller moves on.

    A short fill (the body's last read, as a rule) is copied out, so every
    buffer handed on is whole and no slice of one outlives its hold.
    """
    while True:
        buffer = pool.take()
        try:
            filled = readinto(memoryview(buffer))
            if not filled:
                return
            yield buffer if filled == len(buffer) else bytes(memoryview(buffer)[:filled])
        finally:
            pool.release(buffer)


def _stream(
    headers: Mapping[str, str],
    chunks: Iterable[bytes | bytearray],
    writer: SlideFileWriter,
    total: int | None,
    progress: ProgressCallback | None,
) -> int:
    media_type, boundary = _media_type(headers.get("content-type"))
    parser: MultipartParser | None = None
    if media_type.startswith("multipart/"):
        if not boundary:
            raise DownloadError(f"the {media_type} response has no boundary parameter")
        parser = MultipartParser(boundary, writer)
        feed: Callable[[bytes | bytearray], None] = parser.feed
    else:
        writer.start_part(
            {"content-disposition": headers.get("content-disposition", ""), "content-type": media_type}
        )

        def feed(chunk: bytes | bytearray) -> None:
            writer.write(memoryview(chunk))

    received = reported = 0
    for chunk in chunks:
        feed(chunk)
        received += len(chunk)
        if progress is not None and received - reported >= PROGRESS_STEP:
            reported = received
            progress(received, total)
    if parser is not None:
        parser.finish()
    else:
        writer.end_part()
    if progress is not None and received != reported:
        progress(received, total)
    return received


def _declared_length(headers: Mapping[str, str]) -> int | None:
    """Content-Length, when it describes the bytes we will see (no content coding applied)."""
    if headers.get("content-encoding", "identity").lower() != "identity":
        return None
    try:
        return int(headers["content-length"])
    except (KeyError, ValueError):
        return None


def _media_type(content_type: str | None) -> tuple[str, str | None]:
    """Media type (lower case) and boundary parameter, parsed by the standard library."""
    if not content_type:
        return "application/octet-stream", None
    message = Message()
    message["content-type"] = content_type
    boundary = message.get_param("boundary")
    return message.get_content_type(), boundary if isinstance(boundary, str) else None
