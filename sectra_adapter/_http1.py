"""A keep-alive HTTP/1.1 client for the webhook's one request per `create` (`AsyncResultPoster`).

That request is a few hundred bytes each way, and through aiohttp its machinery
(request and response objects, multidicts, URL objects, stream readers, a timer
per phase) cost about three times the bytes' own round trip: the largest part of
a `create` after Redis (`bench/webhook.py`). This client sends the request as one
prebuilt write and lets httptools (llhttp, the parser uvicorn serves us with)
read the answer, on pooled connections per origin.

What it does, per RFC 9112: one request at a time per connection (no pipelining);
the answer's length from Content-Length, chunked transfer coding, or the close of
the connection; a connection is reused only after a complete answer that did not
ask to close (`Connection: close`, HTTP/1.0) and only while it has been idle for
less than `keepalive_seconds`; interim 1xx answers are skipped. It follows no
redirect (a 3xx is an answer like any other), keeps no cookies, and speaks no
proxy protocol. Its callers build the request head; values that reach it were
validated where they entered (`service.parsing`: ids, tokens, callback URLs).

Failures are two kinds, because a POST must not be repeated once it may have
reached the server: `ConnectFailed` (nothing was written: safe to send again) and
`RequestBrokeOff` (written, and no complete answer came: not safe).
"""

from __future__ import annotations

import asyncio
import collections
import ssl
from dataclasses import dataclass, field
from typing import cast

import httptools


class ConnectFailed(Exception):
    """No connection could be made (or none was free) in time: the request was never written."""


class RequestBrokeOff(Exception):
    """The request was written and no complete answer came (timeout, reset, not HTTP)."""


class AnswerTooLarge(Exception):
    """The answer's body is larger than the caller's limit (its status is on `status`)."""

    def __init__(self, status: int, limit: int) -> None:
        super().__init__(f"the answer is larger than {limit} bytes")
        self.status = status


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a connection goes: scheme, host and port (RFC 9110 §4.3.1), and its Host header."""

    scheme: str
    host: str
    port: int

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"


@dataclass(slots=True)
class Answer:
    status: int
    reason: str
    body: bytes


class _Connection(asyncio.Protocol):
    """One connection, one exchange at a time."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._answer: asyncio.Future[Answer] | None = None
        self._limit = 0
        self._reason = b""
        self._body: list[bytes] = []
        self._size = 0
        self._headers_done = False
        self._length_known = False
        self._timer: asyncio.TimerHandle | None = None
        self.reusable = False
        self.idle_since = loop.time()

    # -- the exchange ---------------------------------------------------------------------------

    @property
    def open(self) -> bool:
        return self._transport is not None and not self._transport.is_closing()

    def exchange(self, request: bytes, *, limit: int, timeout: float) -> asyncio.Future[Answer]:
        """Write `request`; the future gets the whole answer (or `RequestBrokeOff` / `AnswerTooLarge`)."""
        assert self._transport is not None and self._answer is None
        self._answer = self._loop.create_future()
        self._limit = limit
        self._start_message()
        self.reusable = False
        self._timer = self._loop.call_later(timeout, self._timed_out, timeout)
        self._transport.write(request)
        return self._answer

    def _start_message(self) -> None:
        self._reason, self._body, self._size = b"", [], 0
        self._headers_done = self._length_known = False

    def _finish(self, answer: Answer | None = None, error: Exception | None = None) -> None:
        future, self._answer = self._answer, None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if future is None or future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            assert answer is not None
            future.set_result(answer)

    def _fail(self, error: Exception) -> None:
        self.reusable = False
        self._finish(error=error)
        if self._transport is not None:
            self._transport.abort()

    def _timed_out(self, timeout: float) -> None:
        self._timer = None
        self._fail(RequestBrokeOff(f"no complete answer within {timeout:g} s"))

    # -- asyncio.Protocol ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's

    def data_received(self, data: bytes) -> None:
        if self._answer is None:
            self._fail(RequestBrokeOff("bytes arrived with no request outstanding"))
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(RequestBrokeOff(f"the answer is not HTTP/1.1 ({type(exc).__name__})"))

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self.reusable = False
        if self._answer is None:
            return
        if self._headers_done and not self._length_known:
            self._complete()  # RFC 9112 §6.3 (8): the body ends where the connection does
            return
        reason = f" ({type(exc).__name__})" if exc else ""
        self._finish(error=RequestBrokeOff(f"the connection closed before a complete answer{reason}"))

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    # -- httptools callbacks ---------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._start_message()

    def on_status(self, status: bytes) -> None:
        self._reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() in (b"content-length", b"transfer-encoding"):
            self._length_known = True

    def on_headers_complete(self) -> None:
        self._headers_done = True

    def on_body(self, body: bytes) -> None:
        self._size += len(body)
        if self._size > self._limit:
            self._fail(AnswerTooLarge(self._parser.get_status_code(), self._limit))
            return
        self._body.append(body)

    def on_message_complete(self) -> None:
        if 100 <= self._parser.get_status_code() < 200:
            return  # an interim answer (100 Continue, 103 Early Hints); the final one follows
        self.reusable = self._parser.should_keep_alive()
        self._complete()

    def _complete(self) -> None:
        answer = Answer(self._parser.get_status_code(), self._reason.decode("latin-1"), b"".join(self._body))
        self.idle_since = self._loop.time()
        self._finish(answer)


@dataclass(slots=True)
class _OriginPool:
    idle: list[_Connection] = field(default_factory=list)
    open: int = 0
    waiting: collections.deque[asyncio.Future[None]] = field(default_factory=collections.deque)


class Http1Pool:
    """Connections per origin, at most `per_origin` open; made on the loop that awaits them.

    `connect_timeout` bounds the wait for a connection (a free one or a new one), `timeout`
    the exchange after the request is written.
    """

    def __init__(
        self,
        *,
        ssl_context: ssl.SSLContext,
        connect_timeout: float,
        timeout: float,
        per_origin: int,
        keepalive_seconds: float,
    ) -> None:
        self._ssl = ssl_context
        self._connect_timeout = connect_timeout
        self._timeout = timeout
        self._per_origin = per_origin
        self._keepalive = keepalive_seconds
        self._pools: dict[Origin, _OriginPool] = {}
        self._closed = False

    async def request(self, origin: Origin, request: bytes, *, limit: int) -> Answer:
        """Send `request` (a whole HTTP/1.1 message) to `origin` and read its answer.

        Raises `ConnectFailed` before anything was written, `RequestBrokeOff` or `AnswerTooLarge` after.
        """
        pool = self._pools.setdefault(origin, _OriginPool())
        connection = await self._checkout(origin, pool)
        try:
            answer = await connection.exchange(request, limit=limit, timeout=self._timeout)
        except BaseException:
            connection.close()
            self._checkin(pool, connection)
            raise
        self._checkin(pool, connection)
        return answer

    async def close(self) -> None:
        self._closed = True
        for pool in self._pools.values():
            for connection in pool.idle:
                connection.close()
            pool.idle.clear()
            for waiter in pool.waiting:
                if not waiter.done():
                    waiter.set_exception(ConnectFailed("the client is closed"))

    async def _checkout(self, origin: Origin, pool: _OriginPool) -> _Connection:
        """An idle connection that is still good, else a new one, waiting for a free slot if need be."""
        if self._closed:
            raise ConnectFailed("the client is closed")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._connect_timeout
        while True:
            while pool.idle:
                connection = pool.idle.pop()
                if connection.open and loop.time() - connection.idle_since < self._keepalive:
                    return connection
                connection.close()  # closed by the server, or idle so long that it may be any moment
                pool.open -= 1
            if pool.open < self._per_origin:
                break
            waiter: asyncio.Future[None] = loop.create_future()
            pool.waiting.append(waiter)
            try:
                async with asyncio.timeout_at(deadline):
                    await waiter
            except BaseException as exc:
                if waiter in pool.waiting:
                    pool.waiting.remove(waiter)
                elif waiter.done() and not waiter.cancelled():
                    self._wake(pool)  # woken as we gave up: pass the free slot on
                if isinstance(exc, TimeoutError):
                    raise ConnectFailed(f"no connection to {origin.host_header} was free in time") from None
                raise
        pool.open += 1
        try:
            return await self._connect(origin, deadline)
        except BaseException:
            pool.open -= 1
            self._wake(pool)
            raise

    def _checkin(self, pool: _OriginPool, connection: _Connection) -> None:
        if connection.reusable and connection.open and not self._closed:
            pool.idle.append(connection)
        else:
            connection.close()
            pool.open -= 1
        self._wake(pool)

    @staticmethod
    def _wake(pool: _OriginPool) -> None:
        while pool.waiting:
            waiter = pool.waiting.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def _connect(self, origin: Origin, deadline: float) -> _Connection:
        loop = asyncio.get_running_loop()
        tls = origin.scheme == "https"
        try:
            async with asyncio.timeout_at(deadline):
                _, connection = await loop.create_connection(
                    lambda: _Connection(loop),
                    origin.host,
                    origin.port,
                    ssl=self._ssl if tls else None,
                    server_hostname=origin.host if tls else None,
                )
        except TimeoutError:
            raise ConnectFailed(f"could not connect to {origin.host_header} in time") from None
        except (OSError, ssl.SSLError) as exc:
            raise ConnectFailed(f"could not connect to {origin.host_header} ({type(exc).__name__})") from exc
        return connection
