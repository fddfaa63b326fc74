"""`RedisLane`: the webhook's Redis on one pipelined connection per event loop.

A `create` makes two Redis round trips. Through `redis.asyncio` each costs about twice
the bare round trip in Python alone (a pooled connection checked out and back behind
a lock, a retry wrapper, a timeout context per read, each argument encoded by a
Python loop), and that was most of what a create cost beyond the bare endpoint
(`bench/webhook.py`). A lane is the round trip and little else: every command of the
loop goes out on one connection as soon as it is called, replies come back in order
(RESP is strictly FIFO per connection) and are parsed by hiredis in C, so concurrent
creates pipeline themselves instead of queueing for a pooled connection.

What the lane keeps of a client's duties:
- the connection is made like the blocking client's (`RedisLane.like`: same server,
  database, credentials, TLS settings, client name), on first use and again after a
  failure or a long idle spell (`idle_reconnect_seconds`: a connection a NAT or a
  restart dropped silently is never written into);
- every command has a deadline (`timeout`); a reply that is late fails every command
  behind it on that connection (they would answer after it) and drops the connection;
- a command that failed because the connection broke is sent once more on a new one,
  as redis-py's default retry does; the create path's scripts are written for it (a
  repeated claim with the same token answers as the first did, and a repeated record with
  its first step neither logs the run's creation twice nor queues it twice);
- Redis's own errors arrive as redis-py's exception classes (`NoScriptError`,
  `ReadOnlyError`, ...), and connection trouble as `redis.ConnectionError` /
  `redis.TimeoutError`, so the service maps them as it maps the blocking client's.

Nothing else goes through a lane: no pub/sub, no blocking commands, no RESP3.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import inspect
import itertools
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import hiredis
import redis
import redis.asyncio.connection
from redis._parsers.base import BaseParser

Arg = bytes | str | int | float

# The TLS settings a blocking client's connection may carry (`ssl_<name>`), as redis-py's own asyncio
# connections take them.
_TLS_OPTIONS = frozenset(inspect.signature(redis.asyncio.connection.RedisSSLContext).parameters)


def encode_command(args: Sequence[Arg]) -> bytes:
    """One command in RESP (an array of bulk strings), packed in C by hiredis as redis-py packs it when
    hiredis is installed (strings UTF-8, numbers by `repr`); anything else, booleans included, is a
    `redis.DataError`, as there."""
    try:
        # hiredis's stub types the argument as a 1-tuple; it takes any length.
        return hiredis.pack_command(tuple(args))  # type: ignore[arg-type]
    except TypeError as exc:
        raise redis.DataError(f"not a Redis value: {exc}") from None


@dataclass(frozen=True, slots=True)
class LaneScript:
    """A Lua script sent by its SHA1 (`EVALSHA`), and by its text only when Redis does not know it."""

    text: str
    sha: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "sha", hashlib.sha1(self.text.encode(), usedforsecurity=False).hexdigest())


class CommandBatch:
    """Commands written as on a redis-py pipeline (`hset`, `expire`, `lpush`), so code that queues writes
    serves both clients; sent as one MULTI/EXEC (`RedisLane.transaction`)."""

    def __init__(self) -> None:
        self.commands: list[tuple[Arg, ...]] = []

    def hset(self, name: str, *, mapping: dict[str, Arg]) -> CommandBatch:
        self.commands.append(("HSET", name, *itertools.chain.from_iterable(mapping.items())))
        return self

    def expire(self, name: str, time: int) -> CommandBatch:
        self.commands.append(("EXPIRE", name, time))
        return self

    def lpush(self, name: str, *values: Arg) -> CommandBatch:
        self.commands.append(("LPUSH", name, *values))
        return self


class _Waiter:
    __slots__ = ("deadline", "expected", "future", "replies")

    def __init__(self, future: asyncio.Future[list[Any]], expected: int, deadline: float) -> None:
        self.future = future
        self.expected = expected
        self.replies: list[Any] = []
        self.deadline = deadline


class _LaneProtocol(asyncio.Protocol):
    """One connection: writes go out at once, replies resolve the waiters in the order they were sent."""

    def __init__(self, timeout: float) -> None:
        self._timeout = timeout
        self._reader = hiredis.Reader(protocolError=redis.InvalidResponse, replyError=BaseParser.parse_error)
        self._waiters: collections.deque[_Waiter] = collections.deque()
        self._transport: asyncio.Transport | None = None
        self._watchdog: asyncio.TimerHandle | None = None
        self._loop = asyncio.get_running_loop()
        self.closed: asyncio.Future[None] = self._loop.create_future()
        self.last_used = self._loop.time()

    @property
    def usable(self) -> bool:
        return self._transport is not None and not self._transport.is_closing()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's

    def send(self, payload: bytes, expected: int) -> asyncio.Future[list[Any]]:
        """Write `payload` (holding `expected` commands); the future gets their replies, in order."""
        future: asyncio.Future[list[Any]] = self._loop.create_future()
        if not self.usable:
            future.set_exception(redis.ConnectionError("the Redis connection is closed"))
            return future
        assert self._transport is not None
        now = self._loop.time()
        self.last_used = now
        self._waiters.append(_Waiter(future, expected, now + self._timeout))
        self._transport.write(payload)
        if self._watchdog is None:
            self._watchdog = self._loop.call_at(now + self._timeout, self._check_deadline)
        return future

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        waiters = self._waiters
        while waiters:
            try:
                reply = self._reader.gets()
            except redis.InvalidResponse as exc:
                self._fail(exc)
                return
            if reply is False:
                return
            waiter = waiters[0]
            waiter.replies.append(reply)
            if len(waiter.replies) == waiter.expected:
                waiters.popleft()
                if not waiter.future.done():  # its caller may have been cancelled meanwhile
                    waiter.future.set_result(waiter.replies)
        try:
            unasked = self._reader.gets() is not False
        except redis.InvalidResponse:
            unasked = True
        if unasked:
            self._fail(redis.InvalidResponse("Redis sent a reply nobody asked for"))

    def _check_deadline(self) -> None:
        self._watchdog = None
        if not self._waiters:
            return
        oldest = self._waiters[0].deadline
        if oldest <= self._loop.time():
            self._fail(redis.TimeoutError(f"Redis did not answer within {self._timeout:g} s"))
        else:
            self._watchdog = self._loop.call_at(oldest, self._check_deadline)

    def _fail(self, error: redis.RedisError) -> None:
        """Every waiting command fails with `error`; the connection is of no further use."""
        waiters, self._waiters = self._waiters, collections.deque()
        for waiter in waiters:
            if not waiter.future.done():
                waiter.future.set_exception(error)
        if self._transport is not None:
            self._transport.abort()

    def eof_received(self) -> bool:
        return False  # close our side too; connection_lost fails what is left

    def connection_lost(self, exc: Exception | None) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
        reason = f" ({type(exc).__name__})" if exc else ""
        self._fail(redis.ConnectionError(f"the Redis connection was lost{reason}"))
        self._transport = None
        if not self.closed.done():
            self.closed.set_result(None)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


class RedisLane:
    """One pipelined connection to one Redis database, made on first use on the loop that awaits it.

    Not shared between event loops (each `serve --workers` process, each test server thread
    makes its own); `close()` at shutdown.
    """

    def __init__(
        self,
        *,
        host: str = "localhost",
        port: int = 6379,
        path: str | None = None,
        db: int = 0,
        username: str | None = None,
        password: str | None = None,
        client_name: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
        timeout: float = 5.0,
        connect_timeout: float = 2.0,
        idle_reconnect_seconds: float = 30.0,
    ) -> None:
        self._address = (host, port, path)
        self._handshake = _handshake(db, username, password, client_name)
        self._ssl = ssl_context
        self._server_hostname = server_hostname
        self._timeout = timeout
        self._connect_timeout = connect_timeout
        self._idle_reconnect = idle_reconnect_seconds
        self._protocol: _LaneProtocol | None = None
        self._connecting: asyncio.Future[_LaneProtocol] | None = None

    @classmethod
    def like(cls, client: redis.Redis, *, idle_reconnect_seconds: float = 30.0) -> RedisLane:
        """A lane to the server and database of `client`, with its credentials, TLS settings and timeouts.

        Raises `TypeError` for a connection kind a lane cannot make (Sentinel, a custom class).
        """
        pool = client.connection_pool
        kind = pool.connection_class
        settings = pool.connection_kwargs
        if kind not in (redis.Connection, redis.SSLConnection, redis.UnixDomainSocketConnection):
            raise TypeError(f"a Redis lane cannot connect like {kind.__name__}")
        context = None
        if kind is redis.SSLConnection:
            tls = {
                name.removeprefix("ssl_"): value
                for name, value in settings.items()
                if name.startswith("ssl_") and name.removeprefix("ssl_") in _TLS_OPTIONS
            }
            tls.setdefault("cert_reqs", "required")  # redis-py's SSLConnection defaults
            tls.setdefault("check_hostname", True)
            context = redis.asyncio.connection.RedisSSLContext(**tls).get()
        host = settings.get("host", "localhost")
        return cls(
            host=host,
            port=int(settings.get("port", 6379)),
            path=settings.get("path") if kind is redis.UnixDomainSocketConnection else None,
            db=int(settings.get("db", 0)),
            username=settings.get("username"),
            password=settings.get("password"),
            client_name=settings.get("client_name"),
            ssl_context=context,
            server_hostname=host if context is not None else None,
            timeout=settings.get("socket_timeout") or 5.0,
            connect_timeout=settings.get("socket_connect_timeout") or 2.0,
            idle_reconnect_seconds=idle_reconnect_seconds,
        )

    async def execute(self, *args: Arg) -> Any:
        """One command's reply; a Redis error reply raises as redis-py's exception class."""
        (reply,) = await self._send(encode_command(args), 1)
        if isinstance(reply, redis.RedisError):
            raise reply
        return reply

    async def evalsha(self, script: LaneScript, keys: Sequence[Arg], args: Sequence[Arg]) -> Any:
        """`script` run on `keys` and `args`: by its SHA1, and by its text if Redis has not seen it."""
        try:
            return await self.execute("EVALSHA", script.sha, len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:
            return await self.execute("EVAL", script.text, len(keys), *keys, *args)

    async def transaction(self, batch: CommandBatch) -> list[Any]:
        """The replies of `batch`'s commands, run as one MULTI/EXEC; the first error reply raises."""
        payload = b"".join(encode_command(command) for command in (("MULTI",), *batch.commands, ("EXEC",)))
        replies = await self._send(payload, len(batch.commands) + 2)
        for reply in replies[:-1]:  # MULTI's OK and each QUEUED; a refused command aborts the EXEC
            if isinstance(reply, redis.RedisError):
                raise reply
        executed = replies[-1]
        if isinstance(executed, redis.RedisError):
            raise executed
        if executed is None:
            raise redis.WatchError("the transaction was discarded")
        for reply in executed:
            if isinstance(reply, redis.RedisError):
                raise reply
        return list(executed)

    async def close(self) -> None:
        if self._connecting is not None and not self._connecting.done():
            self._connecting.cancel()
        protocol, self._protocol = self._protocol, None
        if protocol is not None:
            protocol.close()
            await protocol.closed

    async def _send(self, payload: bytes, expected: int) -> list[Any]:
        """Send on the current connection; once more on a new one if that connection broke."""
        protocol = await self._connection()
        try:
            return await protocol.send(payload, expected)
        except redis.ConnectionError:
            if protocol is self._protocol:
                self._protocol = None
            return await (await self._connection()).send(payload, expected)

    async def _connection(self) -> _LaneProtocol:
        protocol = self._protocol
        if protocol is not None and protocol.usable:
            if asyncio.get_running_loop().time() - protocol.last_used < self._idle_reconnect:
                return protocol
            protocol.close()  # idle long enough for a NAT or a restart to have dropped it silently
        self._protocol = None
        # One connect for every caller that finds the lane closed; shielded, so a caller that gives
        # up (cancelled) leaves it running for the others.
        if self._connecting is None or self._connecting.done():
            self._connecting = asyncio.ensure_future(self._connect())
            self._connecting.add_done_callback(_retrieve)
        return await asyncio.shield(self._connecting)

    async def _connect(self) -> _LaneProtocol:
        loop = asyncio.get_running_loop()
        host, port, path = self._address
        try:
            async with asyncio.timeout(self._connect_timeout):
                if path is not None:
                    _, protocol = await loop.create_unix_connection(
                        lambda: _LaneProtocol(self._timeout), path
                    )
                else:
                    _, protocol = await loop.create_connection(
                        lambda: _LaneProtocol(self._timeout),
                        host,
                        port,
                        ssl=self._ssl,
                        server_hostname=self._server_hostname,
                    )
        except TimeoutError:
            raise redis.TimeoutError(
                f"could not connect to Redis within {self._connect_timeout:g} s"
            ) from None
        except OSError as exc:
            raise redis.ConnectionError(f"could not connect to Redis ({type(exc).__name__})") from None
        if self._handshake:
            payload = b"".join(encode_command(command) for command in self._handshake)
            for reply in await protocol.send(payload, len(self._handshake)):
                if isinstance(reply, redis.RedisError):
                    protocol.close()
                    raise reply
        self._protocol = protocol
        return protocol


def _retrieve(future: asyncio.Future[Any]) -> None:
    """Mark a connect's failure as seen: every caller that awaited it got it already."""
    if not future.cancelled():
        future.exception()


def _handshake(
    db: int, username: str | None, password: str | None, name: str | None
) -> list[tuple[Arg, ...]]:
    """What a new connection says first (redis-py's `on_connect` for RESP2): AUTH, SETNAME, SELECT."""
    commands: list[tuple[Arg, ...]] = []
    if password is not None:
        commands.append(("AUTH", username, password) if username else ("AUTH", password))
    if name:
        commands.append(("CLIENT", "SETNAME", name))
    if db:
        commands.append(("SELECT", db))
    return commands
