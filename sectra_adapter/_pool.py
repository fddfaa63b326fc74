"""One pooled httpx client per Sectra server, shared by the short-lived adapters of many invocations.

Every invocation brings its own callback token, so a process that answers Sectra builds an adapter
per request; what need not be built per request is the client under it (headers, connection pool).
`SectraClientPool` keeps one `http_client()` per callback base URL, each over its own transport
(so its own bounded set of keep-alive connections), for at most `max_servers` servers: the
least recently used one is evicted beyond that and closed once no request still uses it.
`close()` (at shutdown) closes them all. A pooled client keeps no cookies (each invocation is
its own caller), and closes none of its connections between invocations.
"""

from __future__ import annotations

import http.cookiejar
import threading
import urllib.request
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import httpx

from sectra_adapter._client import http_client

# A bridge talks to one Sectra, a few at most (one per site on a shared deployment).
DEFAULT_MAX_SERVERS = 16


class _RefuseAll(http.cookiejar.DefaultCookiePolicy):
    def set_ok(self, cookie: http.cookiejar.Cookie, request: urllib.request.Request) -> bool:
        return False


def _cookieless(client: httpx.Client) -> httpx.Client:
    """A shared client must not keep cookies: one invocation's would go out with the next one's token."""
    client.cookies = http.cookiejar.CookieJar(policy=_RefuseAll())  # kept as is: not copied
    return client


@dataclass(slots=True)
class _Entry:
    client: httpx.Client
    users: int = 0
    evicted: bool = False


class SectraClientPool:
    """Thread-safe; `transport_factory` builds the transport (and so the connection pool) of each server."""

    def __init__(
        self, transport_factory: Callable[[], httpx.BaseTransport], *, max_servers: int = DEFAULT_MAX_SERVERS
    ) -> None:
        if max_servers < 1:
            raise ValueError("max_servers must be at least 1")
        self._factory = transport_factory
        self._max_servers = max_servers
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._lock = threading.Lock()
        self._closed = False

    @contextmanager
    def client(self, base_url: str) -> Iterator[httpx.Client]:
        """The client for this (already normalised) base URL, held for the duration of the block."""
        entry = self._acquire(base_url)
        try:
            yield entry.client
        finally:
            self._release(entry)

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def close(self) -> None:
        """Close every client; a later `client()` raises `RuntimeError`."""
        with self._lock:
            self._closed = True
            entries = list(self._entries.values())
            self._entries.clear()
        for entry in entries:
            entry.client.close()

    def _acquire(self, base_url: str) -> _Entry:
        retired: list[_Entry] = []
        with self._lock:
            if self._closed:
                raise RuntimeError("the Sectra client pool is closed")
            entry = self._entries.get(base_url)
            if entry is None:
                entry = _Entry(_cookieless(http_client(self._factory())))
                self._entries[base_url] = entry
                while len(self._entries) > self._max_servers:
                    _, old = self._entries.popitem(last=False)
                    old.evicted = True
                    if old.users == 0:
                        retired.append(old)
            else:
                self._entries.move_to_end(base_url)
            entry.users += 1
        for old in retired:
            old.client.close()
        return entry

    def _release(self, entry: _Entry) -> None:
        with self._lock:
            entry.users -= 1
            retire = entry.evicted and entry.users == 0
        if retire:
            entry.client.close()
