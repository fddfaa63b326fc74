"""`AsyncResultPoster`: the webhook's one call to Sectra per `create`, on the event loop.

Every new run stores its pending result in Sectra (`POST /applications/{app}/results`)
before the webhook answers, so this call is much of what a `create` costs. Through
`SectraAdapter` it costs a worker-thread hop and httpx's request machinery; here it is
one prebuilt write on a pooled keep-alive connection and an answer parsed in C
(`sectra_adapter._http1`), on the web process's event loop.

It does only what the common case needs and hands everything else back:
`NotSent` means the request certainly did not store anything (it never left, it is to go
through the environment's proxy, which this client does not speak, or Sectra refused the token:
401), so the caller may send it again through
`SectraAdapter`, which retries with backoff, renews the token when client credentials
are configured, and otherwise says what to configure. Every other outcome is final,
mapped to the adapter's own errors by the same function (`raise_for_status`): the POST
is not repeated once it may have reached Sectra (a repeat could store a second result).
Cookies are never kept (each invocation is its own caller); redirects are not followed.
"""

from __future__ import annotations

import functools
import ssl
from collections.abc import Callable
from dataclasses import dataclass

from pydantic import ValidationError
from sectra_client.schemas import Result, ResultResponse

from sectra_adapter._client import ERROR_BODY_BYTES, raise_for_status
from sectra_adapter._errors import SectraRequestFailed, SectraUnavailable
from sectra_adapter._http1 import AnswerTooLarge, ConnectFailed, Http1Pool, Origin, RequestBrokeOff
from sectra_adapter._proxy import EnvironmentProxies
from sectra_adapter._urls import parse_origin

# A stored result echoes what we sent (a pending result: a few hundred bytes); far more is not Sectra.
MAX_RESULT_BYTES = 1 << 20


class NotSent(Exception):
    """The POST stored nothing in Sectra; sending it again (through `SectraAdapter`) is safe."""


@dataclass(frozen=True, slots=True)
class StoredResult:
    """The result Sectra stored: parsed (`result`), and its JSON text as Sectra answered it (`json`),
    which the webhook answers with and keeps, instead of dumping the parsed model again."""

    result: ResultResponse
    json: str


class AsyncResultPoster:
    """One connection pool per process (its connections made on the loop that uses them); `close()`
    at shutdown.

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
        proxies: EnvironmentProxies | None = None,
    ) -> None:
        # This client speaks no proxy protocol: a request the environment sends through a proxy is
        # left to the adapter's (`NotSent`), whose transport takes it there.
        found = proxies if proxies is not None else EnvironmentProxies()
        self._proxies = found if found else None
        self._pool = Http1Pool(
            ssl_context=ssl_context,
            connect_timeout=min(timeout, 10.0),
            timeout=timeout,
            per_origin=connections_per_server,
            keepalive_seconds=keepalive_seconds,
        )
        self._observe = observe or (lambda _outcome: None)

    async def close(self) -> None:
        await self._pool.close()

    async def create_results(
        self, base_url: str, token: str, result: Result | bytes, *, path: str
    ) -> StoredResult:
        """POST `result` to `base_url + path` (`results_path(app_id)`) with the invocation's token.

        `base_url` is one `normalise_base_url` made; `token` one `service.parsing` checked (token68);
        `result` a `Result`, or one's JSON already made (`pending_result_json`).
        """
        if self._proxies is not None and self._proxies.for_url(base_url) is not None:
            raise NotSent("Sectra is reached through a proxy: the adapter's client sends this")
        origin, prefix = _target(base_url)
        body = result if isinstance(result, bytes) else result.model_dump_json().encode()
        head = (
            f"POST {prefix}{path} HTTP/1.1\r\nHost: {origin.host_header}\r\n"
            f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
            f"Accept: application/json\r\nUser-Agent: sectra-strand-bridge\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        try:
            answer = await self._pool.request(origin, head.encode() + body, limit=MAX_RESULT_BYTES)
        except ConnectFailed as exc:
            self._observe(type(exc).__name__)
            raise NotSent(str(exc)) from exc
        except AnswerTooLarge as exc:
            self._observe(str(exc.status))
            raise SectraRequestFailed(exc.status, path, str(exc)) from None
        except RequestBrokeOff as exc:
            self._observe(type(exc).__name__)
            raise SectraUnavailable(
                f"POST {path} broke off after it may have reached Sectra ({exc}); not retried"
            ) from exc
        self._observe(str(answer.status))
        if answer.status in (200, 201):
            try:
                return StoredResult(ResultResponse.model_validate_json(answer.body), answer.body.decode())
            except (ValidationError, UnicodeDecodeError):
                raise SectraRequestFailed(answer.status, path, "the answer is not a stored result") from None
        if answer.status == 401:
            raise NotSent("Sectra refused the invocation's token")
        raise_for_status(answer.status, answer.reason, answer.body[:ERROR_BODY_BYTES], path)
        raise AssertionError("unreachable: raise_for_status raises")  # pragma: no cover


@functools.lru_cache(maxsize=64)
def _target(base_url: str) -> tuple[Origin, str]:
    """The origin and path prefix of a base URL, parsed once by the allow-list's own parser (it refuses
    whitespace, percent-encoding and anything else that could reshape the request line)."""
    where = parse_origin(base_url)
    return Origin(where.scheme, where.host, where.port), "".join(f"/{segment}" for segment in where.segments)
