"""The streaming multipart parser: same parts whatever the chunking, clear errors on bad framing."""

from __future__ import annotations

import os
import random

import pytest

from sectra_adapter._errors import DownloadError
from sectra_adapter._multipart import MultipartParser

BOUNDARY = "b0undary-7d1f"


class Collect:
    def __init__(self) -> None:
        self.parts: list[tuple[dict[str, str], bytearray]] = []
        self.open = False

    def start_part(self, headers: dict[str, str]) -> None:
        assert not self.open
        self.parts.append((headers, bytearray()))
        self.open = True

    def write(self, data: memoryview) -> None:
        assert self.open
        self.parts[-1][1].extend(data)

    def end_part(self) -> None:
        assert self.open
        self.open = False


def body(
    parts: list[tuple[str, bytes]], *, preamble: bytes = b"", epilogue: bytes = b"", close: bool = True
) -> bytes:
    out = bytearray(preamble)
    for index, (name, content) in enumerate(parts):
        out += (b"\r\n" if index or preamble else b"") + f"--{BOUNDARY}\r\n".encode()
        out += f'Content-Disposition: attachment; filename="{name}"\r\n'.encode()
        out += b"Content-Type: application/dicom\r\n\r\n"
        out += content
    if close:
        out += f"\r\n--{BOUNDARY}--\r\n".encode() + epilogue
    return bytes(out)


# Content that tries hard to look like a delimiter without being one.
TRICKY = [
    ("a.dcm", b"\r\n--b0undary-7d1"),
    ("b.dcm", b"\r\r\n\r\n--" + b"\r" * 50 + b"\r\n--b0undary-7d1X"),
    ("c.dcm", b""),
    ("d.dcm", os.urandom(200_000) + b"\r"),
]


def parse(data: bytes, sizes: list[int]) -> Collect:
    sink = Collect()
    parser = MultipartParser(BOUNDARY, sink)
    pos, turn = 0, 0
    while pos < len(data):
        size = sizes[turn % len(sizes)]
        parser.feed(data[pos : pos + size])
        pos += size
        turn += 1
    parser.finish()
    return sink


@pytest.mark.parametrize("sizes", [[1], [2], [3, 5, 7], [17], [64 * 1024], [10**9]])
def test_parts_are_identical_whatever_the_chunk_sizes(sizes: list[int]) -> None:
    data = body(TRICKY, preamble=b"ignored preamble", epilogue=b"ignored epilogue")
    sink = parse(data, sizes)
    assert [(h["content-disposition"], bytes(c)) for h, c in sink.parts] == [
        (f'attachment; filename="{name}"', content) for name, content in TRICKY
    ]
    assert all(h["content-type"] == "application/dicom" for h, _ in sink.parts)


def test_random_chunking_of_a_large_body() -> None:
    rng = random.Random(7)
    parts = [(f"f{i}.dcm", os.urandom(rng.randrange(0, 300_000))) for i in range(6)]
    sizes = [rng.randrange(1, 100_000) for _ in range(50)]
    sink = parse(body(parts), sizes)
    assert [bytes(c) for _, c in sink.parts] == [content for _, content in parts]


def test_a_reused_buffer_may_be_overwritten_as_soon_as_feed_returns() -> None:
    """The download refills one buffer after another: the parser keeps no view of a fed chunk.

    Every chunk ends inside a delimiter, so the parser must carry a tail over
    each time, and the buffer is scribbled on right after each `feed`.
    """
    rng = random.Random(11)
    parts = [(f"f{i}.dcm", os.urandom(rng.randrange(70_000, 200_000))) for i in range(5)]
    data = body(parts)
    delimiter = f"\r\n--{BOUNDARY}".encode()
    cuts = [at + 7 for at in range(len(data)) if data.startswith(delimiter, at)] + [len(data)]
    sink = Collect()
    parser = MultipartParser(BOUNDARY, sink)
    start = 0
    for cut in cuts:
        buffer = bytearray(data[start:cut])  # above the size where the C library's search takes over
        parser.feed(buffer)
        buffer[:] = b"\r" * len(buffer)  # what the next read may leave there
        start = cut
    parser.finish()
    assert len(cuts) == len(parts) + 1
    assert [bytes(c) for _, c in sink.parts] == [content for _, content in parts]


def test_transport_padding_and_empty_header_block_are_accepted() -> None:
    data = f"--{BOUNDARY}  \t\r\n\r\nplain\r\n--{BOUNDARY}--".encode()
    sink = parse(data, [3])
    assert sink.parts == [({}, bytearray(b"plain"))]


def test_a_body_without_the_final_boundary_is_an_error() -> None:
    with pytest.raises(DownloadError, match="missing final multipart boundary: the body ended inside part 2"):
        parse(body(TRICKY[:2], close=False), [1000])


def test_a_body_without_any_boundary_is_an_error() -> None:
    with pytest.raises(DownloadError, match="no part"):
        parse(b"just some bytes, no multipart at all", [5])


def test_garbage_after_a_delimiter_is_an_error() -> None:
    with pytest.raises(DownloadError, match="malformed multipart delimiter line"):
        parse(f"--{BOUNDARY}garbage\r\n\r\nx\r\n--{BOUNDARY}--".encode(), [4])


def test_endless_part_headers_are_refused() -> None:
    data = f"--{BOUNDARY}\r\nX-Long: ".encode() + b"a" * 20_000
    sink = Collect()
    parser = MultipartParser(BOUNDARY, sink)
    with pytest.raises(DownloadError, match="headers of part 1 are too long"):
        for start in range(0, len(data), 1000):
            parser.feed(data[start : start + 1000])
