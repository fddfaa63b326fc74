"""`Http1Pool` (the webhook's keep-alive HTTP/1.1 client) against servers that frame answers every way
RFC 9112 allows, written byte for byte here, and uvicorn (MockSectraServer) for the common case.

What is checked is what the server saw (connections, requests) and the body as the server meant it,
never the client's own account of itself.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from sectra_adapter._http1 import AnswerTooLarge, ConnectFailed, Http1Pool, Origin, RequestBrokeOff

Respond = Callable[[bytes], Awaitable[bytes | None]]


class FramingServer:
    """A keep-alive server: per request head, `respond` gives the bytes to write (None: close)."""

    def __init__(self, respond: Respond) -> None:
        self.respond = respond
        self.connections = 0
        self.requests: list[bytes] = []
        self.open_now = 0
        self.most_open = 0
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> FramingServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._server is not None
        self._server.close()

    @property
    def origin(self) -> Origin:
        assert self._server is not None
        return Origin("http", "127.0.0.1", self._server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.open_now += 1
        self.most_open = max(self.most_open, self.open_now)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                length = next(
                    (
                        int(line.split(b":")[1])
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length")
                    ),
                    0,
                )
                await reader.readexactly(length)
                self.requests.append(head)
                answer = await self.respond(head)
                if answer is None:
                    return
                writer.write(answer)
                await writer.drain()
        finally:
            self.open_now -= 1
            writer.close()


def _pool(**overrides: Any) -> Http1Pool:
    options: dict[str, Any] = {
        "ssl_context": ssl.create_default_context(),
        "connect_timeout": 2.0,
        "timeout": 2.0,
        "per_origin": 4,
        "keepalive_seconds": 30.0,
    }
    return Http1Pool(**{**options, **overrides})


def _request(origin: Origin) -> bytes:
    body = b'{"x": 1}'
    head = f"POST /results HTTP/1.1\r\nHost: {origin.host_header}\r\nContent-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


def _answer(respond: Respond, requests: int = 1, **pool_options: Any) -> tuple[list[Any], FramingServer]:
    async def main() -> tuple[list[Any], FramingServer]:
        async with FramingServer(respond) as server:
            pool = _pool(**pool_options)
            answers: list[Any] = []
            try:
                for _ in range(requests):
                    try:
                        answers.append(await pool.request(server.origin, _request(server.origin), limit=1024))
                    except Exception as exc:  # the test asserts which
                        answers.append(exc)
            finally:
                await pool.close()
            return answers, server

    return asyncio.run(main())


def _fixed(status: str, body: bytes, *headers: str) -> Respond:
    async def respond(_: bytes) -> bytes:
        lines = [f"HTTP/1.1 {status}", f"Content-Length: {len(body)}", *headers]
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + body

    return respond


def test_answers_on_one_kept_alive_connection() -> None:
    answers, server = _answer(_fixed("201 Created", b'{"id": 7}'), requests=3)
    assert [(a.status, a.reason, a.body) for a in answers] == [(201, "Created", b'{"id": 7}')] * 3
    assert server.connections == 1 and len(server.requests) == 3


def test_connection_close_is_honoured() -> None:
    answers, server = _answer(_fixed("200 OK", b"{}", "Connection: close"), requests=3)
    assert [a.body for a in answers] == [b"{}"] * 3
    assert server.connections == 3


def test_a_chunked_answer_is_joined() -> None:
    async def respond(_: bytes) -> bytes:
        return (
            b'HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{"id\r\n5\r\n": 7}\r\n0\r\n\r\n'
        )

    answers, server = _answer(respond, requests=2)
    assert [a.body for a in answers] == [b'{"id": 7}'] * 2
    assert server.connections == 1


def test_a_body_that_ends_with_the_connection_is_whole() -> None:
    """RFC 9112 §6.3 (8): no length and not chunked, the body is what comes before the close."""

    async def main() -> Any:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            await reader.readexactly(8)
            writer.write(b'HTTP/1.0 201 Created\r\nContent-Type: application/json\r\n\r\n{"id": 9}')
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        origin = Origin("http", "127.0.0.1", server.sockets[0].getsockname()[1])
        pool = _pool()
        try:
            return await pool.request(origin, _request(origin), limit=1024)
        finally:
            await pool.close()
            server.close()

    answer = asyncio.run(main())
    assert (answer.status, answer.body) == (201, b'{"id": 9}')


def test_an_interim_answer_is_skipped() -> None:
    async def respond(_: bytes) -> bytes:
        return b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\n{}"

    answers, _ = _answer(respond)
    assert (answers[0].status, answers[0].body) == (201, b"{}")


def test_an_answer_over_the_limit_is_refused_and_its_connection_dropped() -> None:
    answers, server = _answer(_fixed("201 Created", b"x" * 2000), requests=2)
    assert all(isinstance(a, AnswerTooLarge) and a.status == 201 for a in answers)
    assert server.connections == 2


def test_an_answer_that_is_not_http_breaks_off() -> None:
    async def respond(_: bytes) -> bytes:
        return b"SSH-2.0-OpenSSH_9.6\r\n\r\n"

    answers, _ = _answer(respond)
    assert isinstance(answers[0], RequestBrokeOff)


def test_a_close_without_an_answer_breaks_off_and_is_not_resent() -> None:
    async def respond(_: bytes) -> None:
        return None

    answers, server = _answer(respond)
    assert isinstance(answers[0], RequestBrokeOff)
    assert len(server.requests) == 1


def test_a_silent_server_breaks_off_after_the_timeout() -> None:
    async def respond(_: bytes) -> bytes:
        await asyncio.sleep(30)
        return b""

    async def main() -> tuple[Any, float]:
        async with FramingServer(respond) as server:
            pool = _pool(timeout=0.3)
            loop = asyncio.get_running_loop()
            started = loop.time()
            try:
                with pytest.raises(RequestBrokeOff, match=r"within 0\.3 s"):
                    await pool.request(server.origin, _request(server.origin), limit=1024)
                return None, loop.time() - started
            finally:
                await pool.close()

    _, waited = asyncio.run(main())
    assert 0.25 < waited < 3


def test_nothing_listening_is_connect_failed(free_port: int) -> None:
    async def main() -> None:
        pool = _pool()
        try:
            with pytest.raises(ConnectFailed):
                await pool.request(Origin("http", "127.0.0.1", free_port), b"", limit=1)
        finally:
            await pool.close()

    asyncio.run(main())


def test_at_most_per_origin_connections_are_open_and_every_request_is_answered() -> None:
    async def slow(_: bytes) -> bytes:
        await asyncio.sleep(0.05)
        return b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"

    async def main() -> tuple[list[Any], FramingServer]:
        async with FramingServer(slow) as server:
            pool = _pool(per_origin=2)
            try:
                answers = await asyncio.gather(
                    *(pool.request(server.origin, _request(server.origin), limit=64) for _ in range(10))
                )
            finally:
                await pool.close()
            return answers, server

    answers, server = asyncio.run(main())
    assert [a.body for a in answers] == [b"{}"] * 10
    assert server.most_open == 2 and server.connections == 2


def test_a_full_pool_that_stays_full_is_connect_failed() -> None:
    async def never(_: bytes) -> bytes:
        await asyncio.sleep(30)
        return b""

    async def main() -> Any:
        async with FramingServer(never) as server:
            pool = _pool(per_origin=1, connect_timeout=0.2, timeout=5.0)
            first = asyncio.ensure_future(pool.request(server.origin, _request(server.origin), limit=64))
            await asyncio.sleep(0.05)
            try:
                with pytest.raises(ConnectFailed, match="free in time"):
                    await pool.request(server.origin, _request(server.origin), limit=64)
            finally:
                first.cancel()
                await pool.close()
            return len(server.requests)

    assert asyncio.run(main()) == 1  # the second request was never written


def test_the_host_header_names_the_origin() -> None:
    assert Origin("https", "sectra.example", 443).host_header == "sectra.example"
    assert Origin("http", "sectra.example", 8080).host_header == "sectra.example:8080"
    assert Origin("https", "::1", 8443).host_header == "[::1]:8443"
