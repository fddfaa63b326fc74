"""A push parser for streamed multipart bodies (`multipart/related`, `multipart/form-data`).

Slides are gigabytes, so the body is never held in memory: each network chunk
is searched for the delimiter with the C library's `memmem` (`sectra_adapter._search`), everything before it
is handed to the sink as a memoryview slice, and only a tail shorter than the
delimiter is carried to the next chunk. Python never loops over single bytes.
"""

from __future__ import annotations

from enum import Enum, auto
from typing import Protocol

from sectra_adapter._errors import DownloadError
from sectra_adapter._search import find

MAX_HEADER_BYTES = 16 * 1024
_MAX_BOUNDARY_LINE = 1024


class PartSink(Protocol):
    """Receives one part at a time: headers, then body slices, then the end."""

    def start_part(self, headers: dict[str, str]) -> None: ...

    def write(self, data: memoryview) -> None: ...

    def end_part(self) -> None: ...


class _State(Enum):
    PREAMBLE = auto()
    AFTER_DELIMITER = auto()
    HEADERS = auto()
    BODY = auto()
    DONE = auto()


class MultipartParser:
    """Feed it the body chunk by chunk, then call `finish()`; parts go to the sink as they stream."""

    def __init__(self, boundary: str, sink: PartSink) -> None:
        if not 1 <= len(boundary) <= 200:
            raise DownloadError("the multipart boundary is empty or too long")
        # Every delimiter is preceded by CRLF; the first may start the body, so a CRLF is primed.
        self._delimiter = b"\r\n--" + boundary.encode("latin-1")
        self._sink = sink
        self._state = _State.PREAMBLE
        self._tail = b"\r\n"
        self._in_part = False
        self.parts = 0

    def feed(self, chunk: bytes | bytearray) -> None:
        """Parse the next piece of the body; the sink's slices of it are only valid until this returns,
        unless the sink holds them (the tail kept for the next piece is a copy)."""
        data = self._tail + chunk if self._tail else chunk
        self._tail = b""
        view = memoryview(data)
        pos, end = 0, len(data)
        while pos < end or self._state is _State.AFTER_DELIMITER:
            state = self._state
            if state is _State.BODY or state is _State.PREAMBLE:
                found = find(data, self._delimiter, pos)
                if found < 0:
                    # Carry over only a tail that could begin a delimiter split across chunks.
                    keep_from = self._partial_delimiter_start(data, pos)
                    if state is _State.BODY and keep_from > pos:
                        self._sink.write(view[pos:keep_from])
                    self._tail = bytes(data[keep_from:])
                    return
                if state is _State.BODY and found > pos:
                    self._sink.write(view[pos:found])
                pos = found + len(self._delimiter)
                self._state = _State.AFTER_DELIMITER
            elif state is _State.AFTER_DELIMITER:
                if end - pos < 2:
                    self._tail = bytes(data[pos:])
                    return
                if data.startswith(b"--", pos):
                    self._close_part()
                    self._state = _State.DONE
                    return
                line_end = data.find(b"\r\n", pos)
                if line_end < 0:
                    if end - pos > _MAX_BOUNDARY_LINE:
                        raise DownloadError("malformed multipart delimiter line")
                    self._tail = bytes(data[pos:])
                    return
                if data[pos:line_end].strip(b" \t"):
                    raise DownloadError("malformed multipart delimiter line")
                self._close_part()
                pos = line_end + 2
                self._state = _State.HEADERS
            elif state is _State.HEADERS:
                if data.startswith(b"\r\n", pos):
                    header_end, body_start = pos, pos + 2
                else:
                    header_end = data.find(b"\r\n\r\n", pos)
                    body_start = header_end + 4
                if header_end < 0:
                    if end - pos > MAX_HEADER_BYTES:
                        raise DownloadError(f"the headers of part {self.parts + 1} are too long")
                    self._tail = bytes(data[pos:])
                    return
                self.parts += 1
                self._sink.start_part(_parse_headers(data[pos:header_end]))
                self._in_part = True
                pos = body_start
                self._state = _State.BODY
            else:  # DONE: an epilogue after the final delimiter is ignored, as RFC 2046 says.
                return

    def finish(self) -> None:
        """Check the body ended cleanly; a body without its final delimiter is an error."""
        if self._state is _State.DONE:
            return
        if self.parts == 0:
            raise DownloadError("the multipart response contains no part (no boundary found)")
        raise DownloadError(
            f"missing final multipart boundary: the body ended inside part {self.parts}", transient=True
        )

    def _partial_delimiter_start(self, data: bytes | bytearray, pos: int) -> int:
        """Where a suffix of `data[pos:]` that is a proper prefix of the delimiter starts (else its end).

        Usually no such suffix exists and nothing is carried over, which spares
        copying the next chunk onto a tail.
        """
        end = len(data)
        start = data.rfind(b"\r", max(pos, end - len(self._delimiter) + 1))
        while start >= 0:
            if self._delimiter.startswith(data[start:]):
                return start
            start = data.rfind(b"\r", max(pos, end - len(self._delimiter) + 1), start)
        return end

    def _close_part(self) -> None:
        if self._in_part:
            self._in_part = False
            self._sink.end_part()


def _parse_headers(block: bytes | bytearray) -> dict[str, str]:
    """Part headers as lower-cased names; UTF-8 with replacement, since servers do send raw UTF-8 names."""
    headers: dict[str, str] = {}
    last = ""
    for line in block.decode("utf-8", "replace").split("\r\n"):
        if line[:1] in (" ", "\t") and last:
            headers[last] += " " + line.strip()
            continue
        name, sep, value = line.partition(":")
        if sep:
            last = name.strip().lower()
            headers[last] = value.strip()
    return headers
