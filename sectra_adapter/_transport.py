"""An httpx transport on urllib3, the adapter's default: same httpx API, a faster body path.

Measured on a 1 GiB slide (bench/download.py), httpx's own transport spends
two to three times curl's wall time just receiving the body: h11 parses every
64 KiB read in Python and copies it several times. urllib3 reads through
`http.client`'s C-buffered file in 1 MiB blocks and keeps pace with curl. So
the adapter keeps httpx for everything it offers (requests, timeouts, typed
errors, pluggable transports for tests) and only the wire underneath changes.
Callers that pass their own `transport` get exactly that one instead. Like httpx's own transport,
it goes through the proxy the environment names for a URL (`sectra_adapter._proxy`).

A body with no content coding can also be read into the caller's memory: the
response's `READINTO` extension (httpx passes a transport's extensions through
untouched) is a `readinto(buffer) -> int` straight from `http.client`'s
buffered socket file, which the slide download fills its reusable buffers
with (`sectra_adapter._buffers`) instead of taking a new object per read.
"""

from __future__ import annotations

import http.client
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import unquote, urlsplit

import httpx
import urllib3
from urllib3.exceptions import (
    ConnectTimeoutError,
    EmptyPoolError,
    HTTPError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
    SSLError,
)

from sectra_adapter._proxy import EnvironmentProxies

READ_BYTES = 1024 * 1024
READINTO = "sectra_adapter.readinto"  # response extension: fill a buffer from the raw body


class SharedTransport(httpx.BaseTransport):
    """A transport many clients share: closing one client leaves the pool open for the others."""

    def __init__(self, inner: httpx.BaseTransport) -> None:
        self.inner = inner

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        return self.inner.handle_request(request)

    def close(self) -> None:
        """Deliberately nothing: the owner closes `inner` when it is done with it."""


class Urllib3Transport(httpx.BaseTransport):
    """Sends each httpx request through a urllib3 pool: no retries, no redirects, no decoding.

    httpx stays in charge of all three (it decodes content, and the adapter
    decides retries and refuses redirects); urllib3 only moves bytes.
    """

    def __init__(self, pool_size: int = 10, proxies: EnvironmentProxies | None = None) -> None:
        self._pool_size = pool_size
        self._pool = urllib3.PoolManager(maxsize=pool_size, block=False)
        self._proxies = proxies if proxies is not None else EnvironmentProxies()
        self._via: dict[str, urllib3.ProxyManager] = {}
        self._lock = threading.Lock()

    def _pool_for(self, url: str) -> urllib3.PoolManager:
        """The direct pool, or the one through the proxy the environment names for `url`."""
        proxy = self._proxies.for_url(url) if self._proxies else None
        if proxy is None:
            return self._pool
        with self._lock:
            pool = self._via.get(proxy)
            if pool is None:
                pool = self._via[proxy] = _proxy_manager(proxy, self._pool_size)
            return pool

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        timeouts = request.extensions.get("timeout", {})
        headers = urllib3.HTTPHeaderDict()
        for name, value in request.headers.raw:
            headers.add(name.decode("latin-1"), value.decode("latin-1"))
        with _mapped_errors():
            response = self._pool_for(str(request.url)).urlopen(
                request.method,
                str(request.url),
                body=request.read() or None,
                headers=headers,
                redirect=False,
                retries=False,
                preload_content=False,
                decode_content=False,
                timeout=urllib3.Timeout(connect=timeouts.get("connect"), read=timeouts.get("read")),
            )
        stream = _BodyStream(response)
        extensions: dict[str, object] = {
            "http_version": b"HTTP/1.1",
            "reason_phrase": (response.reason or "").encode("latin-1"),
        }
        if stream.can_readinto():
            extensions[READINTO] = stream.readinto
        return httpx.Response(
            response.status, headers=list(response.headers.iteritems()), stream=stream, extensions=extensions
        )

    def close(self) -> None:
        self._pool.clear()
        with self._lock:
            via, self._via = list(self._via.values()), {}
        for pool in via:
            pool.clear()


def _proxy_manager(proxy: str, pool_size: int) -> urllib3.ProxyManager:
    """A urllib3 pool through `proxy`; its user and password (if the URL has them) as Basic auth,
    which urllib3 does not take from the URL itself (httpx does)."""
    where = urlsplit(proxy)
    headers = None
    if where.username is not None:
        credentials = f"{unquote(where.username)}:{unquote(where.password or '')}"
        headers = urllib3.make_headers(proxy_basic_auth=credentials)
        proxy = where._replace(netloc=where.netloc.rpartition("@")[2]).geturl()
    return urllib3.ProxyManager(proxy, proxy_headers=headers, maxsize=pool_size, block=False)


class _BodyStream(httpx.SyncByteStream):
    """The body as chunks (httpx's way) or, with no content coding, read into the caller's buffers."""

    def __init__(self, response: urllib3.BaseHTTPResponse) -> None:
        self._response = response
        self._complete = False
        self._received = 0
        # urllib3 keeps `http.client`'s response private; without it, only chunks are offered.
        raw = getattr(response, "_fp", None)
        self._raw = raw if isinstance(raw, http.client.HTTPResponse) else None
        length = response.headers.get("content-length")
        self._length = int(length) if length is not None and length.isdigit() else None

    def can_readinto(self) -> bool:
        coding = self._response.headers.get("content-encoding", "identity").strip().lower()
        return self._raw is not None and coding == "identity"

    def readinto(self, buffer: memoryview) -> int:
        """Fill `buffer` from the body (wholly, except at its end); 0 once the body is complete.

        As urllib3 does for its own reads, a body that ends before its
        Content-Length is an error, not a quiet end.
        """
        assert self._raw is not None
        with _mapped_errors():
            filled = self._raw.readinto(buffer)
        self._received += filled
        if not filled and len(buffer):
            if self._length is not None and self._received < self._length:
                raise httpx.RemoteProtocolError(
                    f"the body ended after {self._received} of {self._length} bytes"
                )
            self._complete = True
        return filled

    def __iter__(self) -> Iterator[bytes]:
        with _mapped_errors():
            while chunk := self._response.read(READ_BYTES):
                yield chunk
        self._complete = True

    def close(self) -> None:
        # A connection goes back to the pool only when its body was read to the end.
        if self._complete:
            self._response.release_conn()
        else:
            self._response.close()


@contextmanager
def _mapped_errors() -> Iterator[None]:
    """Re-raise urllib3's errors as the httpx ones the adapter's retry logic understands.

    A connect failure (`ConnectError`/`ConnectTimeout`) means the request never
    left; anything later (`ReadTimeout`, `RemoteProtocolError`) means it may have.
    """
    try:
        yield
    except (NewConnectionError, SSLError) as exc:  # before ConnectTimeoutError, its base class
        raise httpx.ConnectError(str(exc)) from exc
    except ConnectTimeoutError as exc:
        raise httpx.ConnectTimeout(str(exc)) from exc
    except (ReadTimeoutError, TimeoutError) as exc:  # TimeoutError: a read straight from the socket
        raise httpx.ReadTimeout(str(exc)) from exc
    except EmptyPoolError as exc:
        raise httpx.PoolTimeout(str(exc)) from exc
    except (ProtocolError, HTTPError, http.client.HTTPException, OSError) as exc:
        raise httpx.RemoteProtocolError(str(exc)) from exc
