"""`AsyncResultPoster`: the webhook's one call to Sectra per `create`, on the event loop.

Every new run stores its pending result in Sectra (`POST /applications/{app}/results`)
before the webhook answers, so this call is most of what a `create` costs. Through
`SectraAdapter` it costs a worker-thread hop and httpx's request machinery, together
about three times the whole bare endpoint; here it is one aiohttp request on the
web process's event loop (C-parsed HTTP, pooled keep-alive connections per server).

It does only what the common case needs and hands everything else back:
`NotSent` means the request certainly did not store anything (it never left, or
Sectra refused the token: 401), so the caller may send it again through
`SectraAdapter`, which retries with backoff, renews the token when client credentials
are configured, and otherwise says what to configure. Every other outcome is final,
mapped to the adapter's own errors by the same function (`raise_for_status`): the POST
is not repeated once it may have reached Sectra (a repeat could store a second result).
Cookies are never kept (each invocation is its own caller); redirects are not followed.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable

import aiohttp
from sectra_client.schemas import Result, ResultResponse

from sectra_adapter._client import ERROR_BODY_BYTES, raise_for_status
from sectra_adapter._errors import SectraRequestFailed, SectraUnavailable
from sectra_adapter._retry import describe

# A stored result echoes what we sent (a pending result: a few hundred bytes); far more is not Sectra.
MAX_RESULT_BYTES = 1 << 20


class NotSent(Exception):
    """The POST stored nothing in Sectra; sending it again (through `SectraAdapter`) is safe."""


class AsyncResultPoster:
    """One aiohttp session per process (created lazily on its event loop); `close()` at shutdown.

    `observe(outcome)` is called once per request with its status code, or the error type's
    name, so the caller can count Sectra calls without this package knowing its metrics.
    """

    def __init__(
        self,
        *,
        ssl_context: ssl.SSLContext,
        timeout: float,
        connections_per_server: int,
        keepalive_seconds: float,
        observe: Callable[[str], None] | None = None,
    ) -> None:
        self._ssl = ssl_context
        self._timeout = aiohttp.ClientTimeout(total=None, connect=min(timeout, 10.0), sock_read=timeout)
        self._per_server = connections_per_server
        self._keepalive = keepalive_seconds
        self._observe = observe or (lambda _outcome: None)
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                limit=0, limit_per_host=self._per_server, keepalive_timeout=self._keepalive, ssl=self._ssl
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                cookie_jar=aiohttp.DummyCookieJar(),
                timeout=self._timeout,
                headers={"Accept": "application/json", "User-Agent": "sectra-strand-bridge"},
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def create_results(self, base_url: str, token: str, result: Result, *, path: str) -> ResultResponse:
        """POST `result` to `base_url + path` (`results_path(app_id)`) with the invocation's token."""
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        body = result.model_dump_json().encode()
        try:
            async with self._client().post(
                base_url + path, data=body, headers=headers, allow_redirects=False
            ) as response:
                self._observe(str(response.status))
                if response.status in (200, 201):
                    return ResultResponse.model_validate_json(await _read(response, MAX_RESULT_BYTES, path))
                if response.status == 401:
                    raise NotSent("Sectra refused the invocation's token")
                error_body = await _read(response, ERROR_BODY_BYTES, path, truncate=True)
                raise_for_status(response.status, response.reason or "", error_body, path)
                raise AssertionError("unreachable: raise_for_status raises")  # pragma: no cover
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            self._observe(type(exc).__name__)
            raise NotSent(f"could not connect ({type(exc).__name__})") from exc
        except (TimeoutError, aiohttp.ClientError) as exc:
            self._observe(type(exc).__name__)
            raise SectraUnavailable(
                f"POST {path} broke off after it may have reached Sectra ({describe(exc)}); not retried"
            ) from exc


async def _read(response: aiohttp.ClientResponse, limit: int, path: str, *, truncate: bool = False) -> bytes:
    """At most `limit` bytes of the body: more is refused, or with `truncate` cut off (error excerpts)."""
    body = bytearray()
    while chunk := await response.content.read(limit + 1 - len(body)):
        body += chunk
        if len(body) > limit:
            if truncate:
                return bytes(body[:limit])
            raise SectraRequestFailed(response.status, path, f"the answer is larger than {limit} bytes")
    return bytes(body)
