"""The fake's Google-Cloud-Storage-compatible resumable upload endpoint (what `uploadUrl` points at).

Bytes go straight to a file as they arrive (never a whole chunk in memory);
all-zero stretches are left as holes, so a sparse multi-GiB test file costs no
disk. Persisted offsets follow GCS: multiples of 256 KiB until the last byte,
a chunk may start before the persisted offset (the overlap is skipped) but not
after it (400), and a finalised session answers 200 to anything.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from pathlib import Path

import tifffile
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from strand_client.testing.faults import Faults, drain, error_body
from strand_client.testing.state import FakeState, Session

log = logging.getLogger("strand_client.testing")

QUANTUM = 256 * 1024
_CONTENT_RANGE = re.compile(r"^bytes (?:(\d+)-(\d+)|\*)/(\d+|\*)$")
_ZEROS = bytes(1024 * 1024)


def read_dimensions(path: Path) -> tuple[int, int, str] | None:
    """Width and height of a TIFF's first (full-resolution) page, as the platform's `sharp` probe does."""
    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages.first
            return int(page.imagewidth), int(page.imagelength), "sharp"
    except Exception:  # any unreadable file gets stub dimensions, like the platform
        return None


class ResumableEndpoint:
    """`PUT /gcs/upload/{token}`: data chunks (`bytes a-b/T`) and status queries (`bytes */T`)."""

    def __init__(self, state: FakeState, faults: Faults) -> None:
        self._state = state
        self._faults = faults
        self._locks: dict[str, asyncio.Lock] = {}

    async def handle(self, request: Request) -> Response:
        token = request.path_params["token"]
        with self._state.lock:
            self._state.stats.put_requests += 1
            session = self._state.sessions.get(token)
        if session is None:
            await self._count(request)
            return JSONResponse(error_body("not_found", "No such upload session"), 404)
        match = _CONTENT_RANGE.match(request.headers.get("content-range", "").strip())
        if match is None:
            await self._count(request)
            return JSONResponse(error_body("bad_request", "Missing or invalid Content-Range"), 400)
        failure = self._faults.take_put_failure()
        if failure is not None and failure.status is not None:
            await self._count(request)
            return _failure(failure.status, failure.retry_after)
        first, last, total_text = match.groups()
        total = None if total_text == "*" else int(total_text)
        lock = self._locks.setdefault(token, asyncio.Lock())
        async with lock:
            if first is None or session.finalized:
                await self._count(request)
                if not session.finalized and total is not None and session.persisted == total:
                    self._finalize(session)
                return self._answer(session)
            return await self._receive(request, session, int(first), int(last), total)

    async def _receive(
        self, request: Request, session: Session, first: int, last: int, total: int | None
    ) -> Response:
        if first > session.persisted:
            await self._count(request)
            message = f"Upload offset {first} exceeds the {session.persisted} bytes already persisted"
            return JSONResponse(error_body("invalid_offset", message), 400)
        fault = self._faults.take_data_put_fault()
        if fault is not None and fault.status is not None:
            await self._count(request)
            return _failure(fault.status, fault.retry_after)
        end = last + 1
        final = total is not None and end == total
        if fault is not None and fault.fraction is not None:
            end = (first + int((end - first) * fault.fraction)) // QUANTUM * QUANTUM
        elif not final:
            end = end // QUANTUM * QUANTUM
        await self._store(request, session, first, max(end, session.persisted))
        if total is not None and session.persisted == total:
            self._finalize(session)
        return self._answer(session)

    async def _store(self, request: Request, session: Session, first: int, keep_end: int) -> None:
        """Append the body's bytes in [persisted, keep_end) to the file; count everything received."""
        upload = self._state.uploads[session.upload_id]
        position, received = first, 0
        fd = os.open(upload.path, os.O_WRONLY)
        try:
            async for piece in request.stream():
                received += len(piece)
                start, position = position, position + len(piece)
                lo, hi = max(start, session.persisted), min(position, keep_end)
                if hi <= lo:
                    continue
                data = piece[lo - start : hi - start]
                if session.hasher is not None:
                    session.hasher.update(data)
                if not (len(data) <= len(_ZEROS) and _ZEROS.startswith(data)):
                    os.pwrite(fd, data, lo)
                session.persisted = hi
        except ClientDisconnect:
            pass  # a client that went away mid-chunk: what arrived stays persisted
        finally:
            os.ftruncate(fd, session.persisted)
            os.close(fd)
            with self._state.lock:
                self._state.stats.bytes_received += received

    def _finalize(self, session: Session) -> None:
        upload = self._state.uploads[session.upload_id]
        self._state.finalize(session, read_dimensions(upload.path))

    def _answer(self, session: Session) -> Response:
        if session.finalized:
            upload = self._state.uploads[session.upload_id]
            return JSONResponse(
                {"kind": "storage#object", "name": upload.gcs_path, "size": str(session.persisted)}
            )
        headers = {"Range": f"bytes=0-{session.persisted - 1}"} if session.persisted else {}
        return Response(status_code=308, headers=headers)

    async def _count(self, request: Request) -> None:
        received = await drain(request.receive)
        with self._state.lock:
            self._state.stats.bytes_received += received


def _failure(status: int, retry_after: float | None) -> Response:
    headers = {"Retry-After": f"{retry_after:g}"} if retry_after is not None else None
    return JSONResponse(error_body("backend_error", "Injected upload failure"), status, headers=headers)
