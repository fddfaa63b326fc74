"""The HTTP server behind `sectra-bridge serve`: uvicorn (httptools, uvloop) with limits at the socket.

Left to itself uvicorn bounds neither the request head nor the time a client may
take to send it, holds every connection it is offered, answers protocol errors
in plain text, and after answering early (a 413) keeps reading the rest of the
body, however large. `LimitedHttpProtocol` adds those limits where the bytes
arrive, before any ASGI code runs, so a slow or hostile client costs a bounded
amount of memory, time and connections, and the webhook stays on uvicorn's
fast path (httptools parses, uvloop drives the sockets).

Every refusal made here is our JSON error shape `{"error", "message"}` with
`Connection: close`, and every close is graceful (RFC 9112 §9.6): the write
side is shut first and what the client still sends is read and discarded for
a short while, so the client reads our answer instead of a TCP reset.

`serve --workers N` runs N such servers behind one listening socket (`serve_workers`), each
process enforcing the same limits.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import tempfile
from asyncio import TimerHandle
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any, ClassVar, cast

import uvicorn
import uvicorn.supervisors
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from service.sectra_link import DEFAULT_HEADERS
from workers.settings import Settings

# RFC 9112 §9.6: after shutting our write side, how long and how much of the client's data we read
# and drop before the full close. Long enough for a client mid-send to read the answer; short and
# small enough that a client cannot make us swallow its 1 GiB body, or hold the connection by not
# reading our answer (the connection is aborted when the time is up).
LINGER_SECONDS = 2.0
LINGER_MAX_BYTES = 1 << 20
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


@dataclass(frozen=True, slots=True)
class HttpLimits:
    """The limits one `serve` process enforces; README "HTTP limits" explains each default."""

    max_header_bytes: int = 64 * 1024
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    keepalive_timeout: int = 5
    max_connections: int = 256

    @classmethod
    def from_settings(cls, settings: Settings) -> HttpLimits:
        return cls(
            max_header_bytes=settings.http_max_header_bytes,
            header_timeout=settings.http_header_timeout_seconds,
            body_timeout=settings.http_body_timeout_seconds,
            keepalive_timeout=settings.http_keepalive_seconds,
            max_connections=settings.http_max_connections,
        )


def error_bytes(status: int, code: str, message: str, headers: Iterable[tuple[str, str]] = ()) -> bytes:
    """A complete HTTP/1.1 response carrying our JSON error body, ending the connection."""
    body = json.dumps({"error": code, "message": message}).encode()
    lines = [
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}",
        "content-type: application/json",
        f"content-length: {len(body)}",
        "connection: close",
        *(f"{name}: {value}" for name, value in (*DEFAULT_HEADERS.items(), *headers)),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class _GracefulTransport(asyncio.Transport):
    """The connection's transport as uvicorn sees it: `close()` becomes the protocol's graceful close.

    uvicorn closes the transport itself after a `Connection: close` answer, at the keep-alive
    timeout and at shutdown; routing all of them through one place makes every close graceful.
    """

    def __init__(self, raw: asyncio.Transport, protocol: LimitedHttpProtocol) -> None:
        super().__init__()
        self.raw = raw
        self._protocol = protocol

    def close(self) -> None:
        self._protocol.close_gracefully()

    def is_closing(self) -> bool:
        return self._protocol.lingering or self.raw.is_closing()

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.raw.write(data)

    def writelines(self, list_of_data: Iterable[bytes | bytearray | memoryview]) -> None:
        self.raw.writelines(list_of_data)

    def write_eof(self) -> None:
        self.raw.write_eof()

    def can_write_eof(self) -> bool:
        return self.raw.can_write_eof()

    def abort(self) -> None:
        self.raw.abort()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.raw.get_extra_info(name, default)

    def pause_reading(self) -> None:
        self.raw.pause_reading()

    def resume_reading(self) -> None:
        self.raw.resume_reading()

    def is_reading(self) -> bool:
        return self.raw.is_reading()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self.raw.set_write_buffer_limits(high, low)

    def get_write_buffer_size(self) -> int:
        return self.raw.get_write_buffer_size()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.raw.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self.raw.get_protocol()


class LimitedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a bounded head, read timeouts, a connection cap, graceful closes.

    Phases of a request on one connection: the head (request line and headers; bounded in bytes
    and in time from its first byte, or from the connection's start), then the body (bounded in
    time from the end of the head; its size is the route's business: `parsing.MAX_BODY_BYTES`).
    An answer sent before the body has fully arrived ends the connection instead of reading on.
    """

    limits: ClassVar[HttpLimits] = HttpLimits()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lingering = False
        self._raw: asyncio.Transport | None = None
        self._lost = False
        self._head_bytes = 0
        self._in_head = True
        self._in_body = False
        self._head_timer: TimerHandle | None = None
        self._body_timer: TimerHandle | None = None
        self._linger_timer: TimerHandle | None = None
        self._lingered_bytes = 0

    # -- connection ---------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._raw = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's
        super().connection_made(_GracefulTransport(self._raw, self))
        cap = self.limits.max_connections
        if len(self.connections) > cap or len(self.tasks) >= cap:
            self.logger.warning("connection refused: the connection limit is reached", extra={"limit": cap})
            self._refuse(
                503,
                "too_many_connections",
                f"this server holds at most {cap} connections; retry shortly",
                [("retry-after", "1")],
            )
            return
        self._head_timer = self.loop.call_later(self.limits.header_timeout, self._on_head_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._cancel_timers()
        if self._linger_timer is not None:
            self._linger_timer.cancel()
        super().connection_lost(exc)

    def eof_received(self) -> None:
        # Returning None closes the transport, as uvicorn's does; when lingering, the client has read
        # our answer and closed its side: the graceful close is complete.
        if self.lingering:
            self._close_now()

    def data_received(self, data: bytes) -> None:
        if self.lingering:
            self._lingered_bytes += len(data)
            if self._lingered_bytes > LINGER_MAX_BYTES:
                self._close_now()
            return
        if self._in_head:
            self._head_bytes += len(data)
        super().data_received(data)
        # Bytes past the limit with the head still incomplete: the head itself is too large. (A read
        # that also carried the end of the head and some body completed the head, so is not counted.)
        if self._in_head and not self.lingering and self._head_bytes > self.limits.max_header_bytes:
            self.logger.warning("request refused: its head is too large")
            self._refuse(
                431,
                "headers_too_large",
                f"the request line and headers exceed {self.limits.max_header_bytes} bytes",
            )

    def send_400_response(self, msg: str) -> None:
        """httptools refused the bytes (RFC 9112 grammar): a bad request line, header or chunk."""
        self._refuse(
            400,
            "malformed_http",
            "the request is not valid HTTP/1.1 (RFC 9112): its request line, a header "
            "or the chunked body is malformed",
        )

    def _unsupported_upgrade_warning(self) -> None:
        """RFC 9110 §7.8: the Upgrade is ignored and the request served; httptools parses nothing more
        on this connection after an upgrade request, so it ends with this answer."""
        self.logger.info("upgrade request ignored: this server speaks HTTP/1.1 only")
        if self.cycle is not None:
            self.cycle.keep_alive = False

    # -- parser callbacks ---------------------------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._head_timer is None:  # a later request on a kept-alive connection: its first byte
            self._head_timer = self.loop.call_later(self.limits.header_timeout, self._on_head_timeout)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._cancel(self._head_timer)
        self._head_timer = None
        self._in_body = True
        self._body_timer = self.loop.call_later(self.limits.body_timeout, self._on_body_timeout)
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_body = False
        self._cancel(self._body_timer)
        self._body_timer = None
        self._in_head = True
        self._head_bytes = 0

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self._in_body:
            # Answered before the body arrived (a 413, a 401): reading the rest would let a client make
            # us swallow any amount, so the connection ends here (RFC 9110 §15.5.14 allows it).
            self.close_gracefully()

    # -- timeouts and refusals ----------------------------------------------------------------------

    def _on_head_timeout(self) -> None:
        self._head_timer = None
        if self._head_bytes == 0:
            self.close_gracefully()  # an idle connection: nothing to answer
            return
        self._refuse(
            408,
            "request_timeout",
            f"the request line and headers did not arrive within {self.limits.header_timeout:g} s",
        )

    def _on_body_timeout(self) -> None:
        self._body_timer = None
        self._refuse(
            408, "request_timeout", f"the request body did not arrive within {self.limits.body_timeout:g} s"
        )

    def _refuse(self, status: int, code: str, message: str, headers: Iterable[tuple[str, str]] = ()) -> None:
        """Answer with our JSON error (unless an answer is already under way) and end the connection."""
        if self.lingering or self._raw is None or self._raw.is_closing():
            return
        if self.cycle is None or self.cycle.response_complete or not self.cycle.response_started:
            self._raw.write(error_bytes(status, code, message, headers))
        self.close_gracefully()

    def close_gracefully(self) -> None:
        """RFC 9112 §9.6: shut our write side, drop what the client still sends, then close."""
        raw = self._raw
        if raw is None or self._lost or raw.is_closing():
            return
        if self.lingering:
            return
        self.lingering = True
        self._cancel_timers()
        self._unset_keepalive_if_required()
        if self.cycle is not None and not self.cycle.response_complete:
            # The app waiting for the body now sees `http.disconnect`; its answer goes nowhere.
            self.cycle.disconnected = True
            self.cycle.message_event.set()
        raw.resume_reading()
        if raw.can_write_eof():
            raw.write_eof()
        self._linger_timer = self.loop.call_later(LINGER_SECONDS, self._abort)

    def _close_now(self) -> None:
        """Close once our answer is written; the linger timer still aborts a client that never reads it."""
        if self._raw is not None and not self._raw.is_closing():
            self._raw.close()

    def _abort(self) -> None:
        """The linger time is up: drop the connection, unsent bytes and all, so no client can hold it."""
        if self._raw is not None and not self._lost:
            self._raw.abort()

    def _cancel_timers(self) -> None:
        for timer in (self._head_timer, self._body_timer):
            self._cancel(timer)
        self._head_timer = self._body_timer = None

    @staticmethod
    def _cancel(timer: TimerHandle | None) -> None:
        if timer is not None:
            timer.cancel()


def protocol_with(limits: HttpLimits) -> type[LimitedHttpProtocol]:
    """The protocol class uvicorn instantiates per connection, carrying these limits."""
    return type("BridgeHttpProtocol", (LimitedHttpProtocol,), {"limits": limits})


@functools.cache
def _protocol_for(limits: HttpLimits) -> type[LimitedHttpProtocol]:
    return protocol_with(limits)


@dataclass(frozen=True, slots=True)
class LimitedProtocolFactory:
    """uvicorn's `http=` for worker processes: the configuration reaches a spawned worker pickled, and
    a class made by `protocol_with` cannot be pickled, so this (its limits as data) stands for it."""

    limits: HttpLimits

    def __call__(self, *args: Any, **kwargs: Any) -> LimitedHttpProtocol:
        return _protocol_for(self.limits)(*args, **kwargs)


WORKER_HEALTHCHECK_SECONDS = 30


def server_config(app: Any, *, host: str, port: int, limits: HttpLimits, **options: Any) -> uvicorn.Config:
    """uvicorn's configuration for the bridge; `options` pass through (tests set `log_level`)."""
    defaults: Mapping[str, Any] = {"log_config": None, "access_log": False}
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        # uvicorn only ever calls `http` to build a connection's protocol, as this factory allows.
        http=cast("type[asyncio.Protocol]", LimitedProtocolFactory(limits)),
        loop="uvloop",
        ws="none",  # no WebSocket routes: an Upgrade request is an ordinary request
        timeout_keep_alive=limits.keepalive_timeout,
        # The connection cap lives in the protocol (a JSON 503 at accept time, before any byte is read).
        limit_concurrency=None,
        # `serve --workers`: the supervisor kills and replaces a worker that misses its health ping.
        # uvicorn waits 5 s; a worker on a saturated node (or still importing the app) can take
        # longer, and killing it drops its in-flight webhooks, so only a worker silent this long is
        # taken for hung (found by the loaded soak: workers were replaced mid-test under load).
        timeout_worker_healthcheck=WORKER_HEALTHCHECK_SECONDS,
        **{**defaults, **options},
    )


def serve(app: Any, *, host: str, port: int, limits: HttpLimits) -> None:
    uvicorn.Server(server_config(app, host=host, port=port, limits=limits)).run()


def serve_workers(
    factory: str, *, host: str, port: int, limits: HttpLimits, workers: int, metrics_dir: str | None = None
) -> None:
    """`workers` processes behind one listening socket, each enforcing `limits`.

    uvicorn's supervisor binds the socket once, spawns the workers (each imports the app through
    `factory`, "module:function"), replaces one that dies or hangs, and stops them all on SIGTERM.
    Their Prometheus metrics meet in one directory (prometheus_client's multiprocess mode), so
    `/metrics`, whichever worker answers it, reports all of them (`service.health.metrics`):
    `metrics_dir`, or a private one. The supervisor serves nothing and keeps its own in memory, so
    this process must not have `PROMETHEUS_MULTIPROC_DIR` set when it imports the metrics.
    """
    with multiprocess_metrics_dir(metrics_dir):
        config = server_config(factory, host=host, port=port, limits=limits, factory=True, workers=workers)
        uvicorn.supervisors.Multiprocess(config, sockets=[config.bind_socket()]).run()


@contextmanager
def multiprocess_metrics_dir(configured: str | None) -> Iterator[Path]:
    """`PROMETHEUS_MULTIPROC_DIR` for the workers about to start: the operator's, emptied (files of an
    earlier run would be counted again), or a private one removed at the end."""
    if configured:
        path = Path(configured)
        path.mkdir(parents=True, exist_ok=True)
        for stale in path.glob("*.db"):
            stale.unlink()
        os.environ[MULTIPROC_ENV] = configured
        try:
            yield path
        finally:
            del os.environ[MULTIPROC_ENV]
        return
    with tempfile.TemporaryDirectory(prefix="bridge-metrics-") as created:
        os.environ[MULTIPROC_ENV] = created
        try:
            yield Path(created)
        finally:
            del os.environ[MULTIPROC_ENV]
