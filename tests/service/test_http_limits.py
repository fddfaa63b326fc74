"""The HTTP layer's limits, against a real `sectra-bridge serve` over raw sockets.

What each test holds the server to: the request head is bounded in bytes and in time, the body in
time, connections in number, an early answer (413) ends the connection instead of reading on, and
protocol errors answer our JSON error shape. Oracles: RFC 9110 / 9112 status semantics, and h11
(an independent HTTP/1.1 parser) reading every answer.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import httpx
import pytest

from tests.service.live import (
    ServeProcess,
    assert_json_error,
    closed_by_server,
    parse_response,
    read_response,
)

MAX_HEADER_BYTES = 64 * 1024
STRICT_TIMEOUT = 2.0  # the head and body timeouts of the `strict` server
MAX_CONNECTIONS = 6
# How long a slow client of these tests keeps trickling before it concludes it is held forever.
CLIENT_PATIENCE = 20.0
POST_HEAD = b"POST /sectra/strand-default HTTP/1.1\r\nHost: bridge\r\nContent-Type: application/json\r\n"


def _env(redis_url: str, **limits: str) -> dict[str, str]:
    # Warnings and up: the teardown asserts the server logged no error (no unhandled exception).
    return {"REDIS_URL": redis_url, "BRIDGE_LOG_LEVEL": "WARNING", **limits}


@pytest.fixture(scope="module")
def strict(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    """Short head and body timeouts, so a slow client is cut within the test's patience."""
    env = _env(
        redis_url,
        BRIDGE_HTTP_HEADER_TIMEOUT_SECONDS=str(STRICT_TIMEOUT),
        BRIDGE_HTTP_BODY_TIMEOUT_SECONDS=str(STRICT_TIMEOUT),
    )
    server = ServeProcess(env, tmp_path_factory.mktemp("strict") / "serve.log")
    yield server
    server.stop()
    assert '"level": "error"' not in server.logs(), server.logs()[-3000:]


@pytest.fixture(scope="module")
def patient(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    """Long timeouts (nothing here is cut by time) and a small connection cap."""
    env = _env(
        redis_url,
        BRIDGE_HTTP_HEADER_TIMEOUT_SECONDS="60",
        BRIDGE_HTTP_BODY_TIMEOUT_SECONDS="60",
        BRIDGE_HTTP_MAX_CONNECTIONS=str(MAX_CONNECTIONS),
        BRIDGE_HTTP_MAX_HEADER_BYTES=str(MAX_HEADER_BYTES),
    )
    server = ServeProcess(env, tmp_path_factory.mktemp("patient") / "serve.log")
    yield server
    server.stop()
    assert '"level": "error"' not in server.logs(), server.logs()[-3000:]


def _still_serves(server: ServeProcess) -> None:
    assert httpx.get(f"{server.url}/healthz", timeout=10).status_code == 200


def _trickle_until_cut(sock: socket.socket, pieces: Iterator[bytes]) -> bytes:
    """Send one small piece every quarter second; return what the server said once it cut us off.

    The quarter-second `recv` is the client's pace, not a synchronisation: the test ends when the
    server closes the connection, or fails when the client runs out of patience first.
    """
    received = bytearray()
    sock.settimeout(0.25)
    for piece in pieces:
        try:
            sock.sendall(piece)
        except (BrokenPipeError, ConnectionResetError):
            return bytes(received)
        try:
            data = sock.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            return bytes(received)
        if not data:
            return bytes(received)
        received += data
    raise AssertionError(f"the server still held a slow client after {CLIENT_PATIENCE:g} s")


def _pieces(piece: bytes) -> Iterator[bytes]:
    for _ in range(int(CLIENT_PATIENCE / 0.25)):
        yield piece


def test_an_oversized_head_is_refused_without_being_read(patient: ServeProcess) -> None:
    """RFC 9110 §15.5.20 (431): a 32 MiB header is refused after the limit, not read to its end."""
    total = 32 << 20
    chunk = b"a" * (256 << 10)
    sent = 0
    with patient.connect(timeout=10) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: bridge\r\nX-Big: ")
        try:
            while sent < total:
                sock.sendall(chunk)
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        assert sent < total, "the server read a 32 MiB request head"
        answer = read_response(sock)
    if answer is not None:  # the 431 may be lost to the reset that ends a client still sending
        assert_json_error(answer, 431, "headers_too_large")
    _still_serves(patient)


def test_a_head_just_under_the_limit_is_served(patient: ServeProcess) -> None:
    padding = "a" * (MAX_HEADER_BYTES - 200)
    response = httpx.get(f"{patient.url}/healthz", headers={"X-Padding": padding}, timeout=10)
    assert response.status_code == 200


def test_a_slow_head_is_cut_with_408(strict: ServeProcess) -> None:
    """RFC 9110 §15.5.9: a client trickling header lines is answered 408 and the connection closed."""
    with strict.connect() as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: bridge\r\n")
        said = _trickle_until_cut(sock, _pieces(b"X-Slow: 1\r\n"))
    assert_json_error(parse_response(said), 408, "request_timeout")


def test_a_slow_body_is_cut_with_408(strict: ServeProcess) -> None:
    with strict.connect() as sock:
        sock.sendall(POST_HEAD + b"Content-Length: 100000\r\n\r\n")
        said = _trickle_until_cut(sock, _pieces(b" "))
    assert_json_error(parse_response(said), 408, "request_timeout")
    _still_serves(strict)


def test_an_idle_connection_is_closed(strict: ServeProcess) -> None:
    with strict.connect() as sock:
        assert closed_by_server(sock, CLIENT_PATIENCE), "an idle connection was held"


def test_keep_alive_still_serves_several_requests(strict: ServeProcess) -> None:
    with strict.connect() as sock:
        for _ in range(3):
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: bridge\r\n\r\n")
            answer = read_response(sock)
            assert answer is not None and answer.status == 200
            assert answer.headers.get("connection") != "close"


def test_connections_beyond_the_limit_are_refused_with_503(patient: ServeProcess) -> None:
    """Held connections (slow heads) fill the cap; the next one is refused at once, not held."""
    held = [patient.connect() for _ in range(MAX_CONNECTIONS)]
    try:
        for sock in held:
            sock.sendall(b"GET /healthz HTTP/1.1\r\n")
        with patient.connect() as extra:
            extra.sendall(b"GET /healthz HTTP/1.1\r\nHost: bridge\r\n\r\n")
            answer = read_response(extra)
            assert_json_error(answer, 503, "too_many_connections")
            assert answer is not None and answer.headers.get("retry-after") == "1"
            assert closed_by_server(extra, 10)
    finally:
        for sock in held:
            sock.close()
    _still_serves(patient)  # the cap frees up as connections end


def test_a_413_ends_the_connection_instead_of_reading_the_body(patient: ServeProcess) -> None:
    """A 1 GiB body is refused by its Content-Length; the server then closes instead of reading it."""
    declared = 1 << 30
    sent = 0
    stop = threading.Event()

    def keep_sending(sock: socket.socket) -> None:
        nonlocal sent
        chunk = b" " * (64 << 10)
        try:
            while sent < declared and not stop.is_set():
                sock.sendall(chunk)
                sent += len(chunk)
        except OSError:
            pass  # reset or timed out: the server stopped reading, as it should

    with patient.connect() as sock:
        sock.sendall(POST_HEAD + f"Content-Length: {declared}\r\n\r\n".encode())
        sender = threading.Thread(target=keep_sending, args=(sock,), daemon=True)
        sender.start()
        try:
            answer = read_response(sock, method="POST")
            assert_json_error(answer, 413, "body_too_large")
            assert closed_by_server(sock, 10), "the connection stayed open after the 413"
        finally:
            stop.set()
            sender.join(timeout=30)
    assert sent < declared // 8, f"the server read {sent} bytes of a refused body"
    _still_serves(patient)


@pytest.mark.parametrize(
    "request_bytes",
    [
        pytest.param(b"NOT AN HTTP REQUEST\r\n\r\n", id="request-line"),
        pytest.param(b"GET /healthz HTTP/1.1\r\nHost: bridge\r\nBad Header: 1\r\n\r\n", id="header-name"),
        pytest.param(POST_HEAD + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n", id="chunk-size"),
    ],
)
def test_protocol_errors_answer_json(patient: ServeProcess, request_bytes: bytes) -> None:
    """RFC 9112 §2.2/§7.1: a message that does not parse gets 400, in our error shape, and a close."""
    with patient.connect() as sock:
        sock.sendall(request_bytes)
        assert_json_error(read_response(sock), 400, "malformed_http")
        assert closed_by_server(sock, 10)
    _still_serves(patient)
