"""Streaming slide download over real HTTP: every response shape, hostile names, broken bodies."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import Response, StreamingResponse
from sectra_client.mock_server import MockSectraServer

from sectra_adapter import _download
from sectra_adapter._buffers import BufferPool
from sectra_adapter._client import SectraAdapter
from sectra_adapter._errors import DownloadError, SectraAuthError, SectraRequestFailed

REPO = Path(__file__).resolve().parents[2]
BOUNDARY = "3c5e-boundary-for-tests"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def multipart(parts: list[tuple[bytes, bytes]], *, close: bool = True) -> bytes:
    """A multipart body from (Content-Disposition value, content) pairs; header bytes sent raw."""
    out = bytearray()
    for disposition, content in parts:
        out += f"--{BOUNDARY}\r\n".encode() + b"Content-Disposition: " + disposition + b"\r\n"
        out += b"Content-Type: application/dicom\r\n\r\n" + content + b"\r\n"
    if close:
        out += f"--{BOUNDARY}--\r\n".encode()
    return bytes(out)


def files_app(make: Callable[[], Response]) -> FastAPI:
    """A Sectra stand-in whose `/slides/{id}/files` answers with `make()` (token not checked)."""
    app = FastAPI()
    app.state.calls = 0

    @app.get("/slides/{slide_id}/files")
    def files(slide_id: str, request: Request) -> Response:
        app.state.calls += 1
        return make()

    return app


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_mock_sectra_multipart_form_data_several_files(
    mock_sectra: MockSectraServer, token: str, tmp_path: Path
) -> None:
    contents = {"slide.svs": os.urandom(3_000_000), "slide-extra.svs": b"tiny", "empty.bin": b""}
    sources = []
    for name, content in contents.items():
        (tmp_path / name).write_bytes(content)
        sources.append(tmp_path / name)
    mock_sectra.add_slide_files("s-1", sources)
    seen: list[tuple[int, int | None]] = []
    out = tmp_path / "out"
    with SectraAdapter(mock_sectra.url, token, allow_http=True) as sectra:
        files = sectra.download_slide("s-1", out, progress=lambda done, total: seen.append((done, total)))
    assert [(f.path.name, f.size, f.sha256) for f in files] == [
        (name, len(content), sha(content)) for name, content in contents.items()
    ]
    assert all(f.path.read_bytes() == contents[f.path.name] for f in files)
    assert listing(out) == sorted(contents)  # no `.part` left behind
    assert seen and seen[-1][0] >= sum(len(c) for c in contents.values())
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_upstream_compatible_wrapper_returns_paths(
    mock_sectra: MockSectraServer, token: str, tmp_path: Path
) -> None:
    with SectraAdapter(mock_sectra.url, token, allow_http=True) as sectra:
        paths = sectra.download_slide_files("unregistered", tmp_path / "o")
    # The mock serves a dummy 8-byte TIFF named after the slide when no file is registered.
    assert paths == [tmp_path / "o" / "unregistered.tiff"]
    assert paths[0].read_bytes() == b"II\x2a\x00\x08\x00\x00\x00"


def test_octet_stream_single_file(serve_asgi: Callable[..., str], tmp_path: Path) -> None:
    content = os.urandom(1_500_000)
    url = serve_asgi(
        files_app(
            lambda: Response(
                content,
                media_type="application/octet-stream",
                headers={"Content-Disposition": "attachment; filename*=UTF-8''Sl%C3%AFde%201.svs"},
            )
        )
    )
    with SectraAdapter(url, "t", allow_http=True) as sectra:
        [downloaded] = sectra.download_slide("s", tmp_path)
    assert downloaded.path == tmp_path / "Slïde 1.svs"
    assert (downloaded.size, downloaded.sha256) == (len(content), sha(content))
    assert downloaded.path.read_bytes() == content
    assert downloaded.path.stat().st_mode & 0o077 == 0  # staged slides are private to the service


def test_octet_stream_streamed_without_length(serve_asgi: Callable[..., str], tmp_path: Path) -> None:
    blocks = [os.urandom(100_000) for _ in range(20)]
    url = serve_asgi(
        files_app(
            lambda: StreamingResponse(
                iter(blocks),
                media_type="application/octet-stream",
                headers={"Content-Disposition": 'attachment; filename="chunked.ndpi"'},
            )
        )
    )
    with SectraAdapter(url, "t", allow_http=True) as sectra:
        [downloaded] = sectra.download_slide("s", tmp_path)
    assert downloaded.sha256 == sha(b"".join(blocks))


def test_multipart_related_several_dicom_files(serve_asgi: Callable[..., str], tmp_path: Path) -> None:
    instances = [
        (f'attachment; filename="instance-{i}.dcm"'.encode(), os.urandom(50_000 * i)) for i in range(5)
    ]
    body = multipart(instances)
    url = serve_asgi(
        files_app(
            lambda: Response(
                body, media_type=f'multipart/related; type="application/dicom"; boundary="{BOUNDARY}"'
            )
        )
    )
    with SectraAdapter(url, "t", allow_http=True) as sectra:
        files = sectra.download_slide("s", tmp_path)
    assert [f.path.name for f in files] == [f"instance-{i}.dcm" for i in range(5)]
    assert [f.sha256 for f in files] == [sha(c) for _, c in instances]
    assert all(f.content_type == "application/dicom" for f in files)


class CountingPool(BufferPool):
    """The download's buffer pool, counting how often a buffer was handed out."""

    made: list[CountingPool] = []

    def __init__(self, count: int, size: int) -> None:
        super().__init__(count, size)
        self.takes = 0
        CountingPool.made.append(self)

    def take(self) -> bytearray:
        self.takes += 1
        return super().take()


def test_reused_receive_buffers_never_change_bytes_still_being_written(
    serve_asgi: Callable[..., str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three 64 KiB buffers for 9 MiB of parts that start and end anywhere in them: each buffer is
    refilled ~50 times while the writer and the hasher may still hold it, so a buffer handed out
    again too early would show up in a file's bytes or its hash (checked against hashlib on the source)."""
    monkeypatch.setattr(_download, "RECEIVE_BYTES", 64 * 1024)
    monkeypatch.setattr(_download, "RECEIVE_BUFFERS", 3)
    monkeypatch.setattr(_download, "BufferPool", CountingPool)
    CountingPool.made.clear()
    sizes = [3 * 1024 * 1024 + 7, 1, 0, 65_536, 2 * 1024 * 1024 - 3, 777_777, 3 * 1024 * 1024]
    instances = [
        (f'attachment; filename="i{n}.dcm"'.encode(), os.urandom(size)) for n, size in enumerate(sizes)
    ]
    body = multipart(instances)
    url = serve_asgi(files_app(lambda: Response(body, media_type=f"multipart/related; boundary={BOUNDARY}")))
    with SectraAdapter(url, "t", allow_http=True) as sectra:
        files = sectra.download_slide("s", tmp_path)
    for downloaded, (_, content) in zip(files, instances, strict=True):
        assert downloaded.path.read_bytes() == content, downloaded.path.name
    assert [f.sha256 for f in files] == [sha(c) for _, c in instances]
    [pool] = CountingPool.made  # the default transport's body went through the pool
    assert pool.takes > len(body) // (64 * 1024)


def test_a_compressed_body_is_decoded_and_written_whole(
    serve_asgi: Callable[..., str], tmp_path: Path
) -> None:
    """A content coding leaves the pool aside: the transport offers raw reads only for identity bodies."""
    content = os.urandom(300_000) + b"\x00" * 3_000_000
    url = serve_asgi(
        files_app(
            lambda: Response(
                gzip.compress(content),
                media_type="application/octet-stream",
                headers={"Content-Encoding": "gzip", "Content-Disposition": 'attachment; filename="z.svs"'},
            )
        )
    )
    with SectraAdapter(url, "t", allow_http=True) as sectra:
        [downloaded] = sectra.download_slide("s", tmp_path)
    assert (downloaded.size, downloaded.sha256) == (len(content), sha(content))


def test_hostile_filenames_stay_inside_the_output_directory(
    serve_asgi: Callable[..., str], tmp_path: Path
) -> None:
    hostile = [
        b'attachment; filename="../../escaped.svs"',
        b'attachment; filename="/etc/cron.d/evil"',
        b'attachment; filename="..\\\\..\\\\win.svs"',
        b'attachment; filename="ctrl\x01\x1bname.svs"',
        b'attachment; filename="dup.svs"',
        b'attachment; filename="dup.svs"',
        b'attachment; filename="DUP.svs"',
        b'attachment; filename="dup.svs.part"',
    ]
    body = multipart([(d, f"content {i}".encode()) for i, d in enumerate(hostile)])
    url = serve_asgi(files_app(lambda: Response(body, media_type=f"multipart/related; boundary={BOUNDARY}")))
    out = tmp_path / "deep" / "out"
    with SectraAdapter(url, "t", allow_http=True) as sectra:
        files = sectra.download_slide("s", out)
    names = [f.path.name for f in files]
    assert names == [
        "escaped.svs",
        "evil",
        "win.svs",
        "ctrlname.svs",
        "dup.svs",
        "dup-2.svs",
        "DUP-3.svs",
        "dup-4.svs.part",
    ]
    assert all(f.path.parent == out for f in files)
    assert [f.path.read_bytes() for f in files] == [f"content {i}".encode() for i in range(len(hostile))]
    assert listing(tmp_path) == ["deep"] and listing(tmp_path / "deep") == ["out"]


@pytest.mark.parametrize(
    "disposition",
    [b"attachment", b'attachment; filename=""', b'attachment; filename=".."', b"inline; name=x"],
)
def test_a_part_without_a_filename_fails_and_removes_earlier_parts(
    serve_asgi: Callable[..., str], tmp_path: Path, disposition: bytes
) -> None:
    body = multipart([(b'attachment; filename="first.dcm"', b"x" * 1000), (disposition, b"y" * 1000)])
    url = serve_asgi(files_app(lambda: Response(body, media_type=f"multipart/related; boundary={BOUNDARY}")))
    with SectraAdapter(url, "t", allow_http=True) as sectra, pytest.raises(DownloadError) as failed:
        sectra.download_slide("s", tmp_path)
    assert "part 2 of the slide response has no" in str(failed.value)
    assert listing(tmp_path) == []


def test_octet_stream_without_a_filename_is_an_error(serve_asgi: Callable[..., str], tmp_path: Path) -> None:
    url = serve_asgi(files_app(lambda: Response(b"data", media_type="application/octet-stream")))
    with (
        SectraAdapter(url, "t", allow_http=True) as sectra,
        pytest.raises(DownloadError, match="no filename"),
    ):
        sectra.download_slide("s", tmp_path)
    assert listing(tmp_path) == []


def test_missing_final_boundary_is_named_and_nothing_is_left(
    serve_asgi: Callable[..., str], tmp_path: Path, sleeps: list[float]
) -> None:
    body = multipart(
        [(b'attachment; filename="a.dcm"', b"a" * 5000), (b'attachment; filename="b.dcm"', b"b")], close=False
    )
    app = files_app(lambda: Response(body, media_type=f"multipart/related; boundary={BOUNDARY}"))
    url = serve_asgi(app)
    sectra = SectraAdapter(url, "t", allow_http=True, max_retries=1, sleep=sleeps)
    with sectra, pytest.raises(DownloadError, match="missing final multipart boundary"):
        sectra.download_slide("s", tmp_path)
    assert listing(tmp_path) == []
    assert app.state.calls == 2 and len(sleeps) == 1  # retried once, as a body that broke off may be


def test_multipart_without_boundary_parameter(serve_asgi: Callable[..., str], tmp_path: Path) -> None:
    url = serve_asgi(files_app(lambda: Response(b"--x\r\n", media_type="multipart/related")))
    with (
        SectraAdapter(url, "t", allow_http=True) as sectra,
        pytest.raises(DownloadError, match="no boundary"),
    ):
        sectra.download_slide("s", tmp_path)


def _head(length: int, extra: str = "") -> bytes:
    return (
        f"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {length}\r\n"
        f'Content-Disposition: attachment; filename="cut.svs"\r\n{extra}Connection: close\r\n\r\n'
    ).encode()


def test_truncated_body_is_retried_then_reported(
    raw_server: Callable[..., Any], tmp_path: Path, sleeps: list[float]
) -> None:
    server = raw_server(lambda head, index: _head(100_000) + b"z" * 40_000)
    sectra = SectraAdapter(server.url, "t", allow_http=True, max_retries=2, sleep=sleeps)
    with sectra, pytest.raises(DownloadError) as failed:
        sectra.download_slide("s", tmp_path)
    assert "truncated body" in str(failed.value)
    assert len(server.requests) == 3 and len(sleeps) == 2
    assert listing(tmp_path) == []


def test_a_download_that_broke_off_succeeds_on_retry(
    raw_server: Callable[..., Any], tmp_path: Path, sleeps: list[float]
) -> None:
    content = os.urandom(200_000)
    server = raw_server(
        lambda head, index: _head(len(content)) + (content[:50_000] if index == 0 else content)
    )
    with SectraAdapter(server.url, "t", allow_http=True, sleep=sleeps) as sectra:
        [downloaded] = sectra.download_slide("s", tmp_path)
    assert downloaded.sha256 == sha(content) and len(sleeps) == 1
    assert listing(tmp_path) == ["cut.svs"]


def test_a_body_that_stalls_is_a_read_timeout_and_retried(tmp_path: Path, sleeps: list[float]) -> None:
    """Bytes stop arriving mid-body, the connection stays open: each wait is bounded by the timeout."""
    release = threading.Event()
    connections: list[socket.socket] = []
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while not release.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            connections.append(conn)
            conn.recv(65536)
            conn.sendall(_head(5_000_000) + b"s" * 100_000)  # and then nothing, until the test ends

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}"
    try:
        sectra = SectraAdapter(url, "t", allow_http=True, timeout=0.5, max_retries=1, sleep=sleeps)
        with sectra, pytest.raises(DownloadError, match=r"truncated body.*ReadTimeout") as failed:
            sectra.download_slide("s", tmp_path)
    finally:
        release.set()
        with contextlib.suppress(OSError):
            listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() (close alone does not, on Linux)
        listener.close()
        for conn in connections:
            conn.close()
        server.join(timeout=10)
    assert failed.value.transient and len(connections) == 2 and len(sleeps) == 1
    assert listing(tmp_path) == []


def test_server_errors_before_the_body_are_retried(
    raw_server: Callable[..., Any], tmp_path: Path, sleeps: list[float]
) -> None:
    busy = b"HTTP/1.1 503 Busy\r\nRetry-After: 3\r\nContent-Length: 4\r\nConnection: close\r\n\r\nbusy"
    server = raw_server(lambda head, index: busy if index < 2 else _head(5) + b"hello")
    with SectraAdapter(server.url, "t", allow_http=True, sleep=sleeps) as sectra:
        [downloaded] = sectra.download_slide("s", tmp_path)
    assert downloaded.path.read_bytes() == b"hello"
    assert len(sleeps) == 2 and min(sleeps) >= 3


def test_a_missing_slide_is_a_request_failure(
    mock_sectra: MockSectraServer, token: str, tmp_path: Path
) -> None:
    sectra = SectraAdapter(mock_sectra.url, "wrong-token", allow_http=True)
    with sectra, pytest.raises(SectraAuthError, match="SECTRA_CLIENT_ID") as failed:
        sectra.download_slide("s", tmp_path)
    assert "wrong-token" not in str(failed.value)
    url = f"{mock_sectra.url}/nothing-here"
    with SectraAdapter(url, token, allow_http=True) as sectra, pytest.raises(SectraRequestFailed) as missing:
        sectra.download_slide("s", tmp_path)
    assert missing.value.status_code == 404


_RSS_CHILD = """
import json, sys
from pathlib import Path
from sectra_adapter._client import SectraAdapter

def hwm():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024

adapter = SectraAdapter(sys.argv[1], sys.argv[2], allow_http=True)
before = hwm()
[f] = adapter.download_slide("big", sys.argv[3])
print(json.dumps({"growth": hwm() - before, "size": f.size, "sha256": f.sha256}))
"""


@pytest.mark.slow
def test_memory_stays_flat_for_a_large_slide(
    mock_sectra: MockSectraServer, token: str, tmp_path: Path
) -> None:
    """256 MiB through the mock in a fresh process: peak RSS grows by far less than the slide."""
    block = os.urandom(4 * 1024 * 1024)
    digest = hashlib.sha256()
    source = tmp_path / "big.svs"
    with source.open("wb") as handle:
        for _ in range(64):
            handle.write(block)
            digest.update(block)
    mock_sectra.add_slide_files("big", source)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-c", _RSS_CHILD, mock_sectra.url, token, str(tmp_path / "out")],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=240,
    )
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["size"] == 256 * 1024 * 1024
    assert report["sha256"] == digest.hexdigest()
    assert report["growth"] < 64 * 1024 * 1024


_FULL_DISK_CHILD = """
import json, resource, signal, sys
from pathlib import Path
from sectra_adapter._client import SectraAdapter

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit now fail with EFBIG, like a full disk
resource.setrlimit(resource.RLIMIT_FSIZE, (1024 * 1024, 1024 * 1024))
out = Path(sys.argv[3])
try:
    SectraAdapter(sys.argv[1], sys.argv[2], allow_http=True).download_slide("s-full", out)
except OSError as exc:
    print(json.dumps({"error": exc.errno, "left": sorted(p.name for p in out.iterdir())}))
"""


def test_a_failing_disk_write_surfaces_and_leaves_nothing(
    mock_sectra: MockSectraServer, token: str, tmp_path: Path
) -> None:
    (tmp_path / "small.svs").write_bytes(b"s" * 1000)
    (tmp_path / "large.svs").write_bytes(os.urandom(3 * 1024 * 1024))
    mock_sectra.add_slide_files("s-full", [tmp_path / "small.svs", tmp_path / "large.svs"])
    proc = subprocess.run(
        [sys.executable, "-c", _FULL_DISK_CHILD, mock_sectra.url, token, str(tmp_path / "out")],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report == {"error": 27, "left": []}  # EFBIG, and neither file (nor a `.part`) remains
