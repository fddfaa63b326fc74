"""One pooled `httpx.Client` for the Strand API, its error mapping, and which requests may be repeated.

Retrying is decided per request by a `Retry` mode, because the same failure
means different things: a timeout on `GET /jobs/{id}` is simply repeated, a
timeout on `POST /predict` may have created a job that costs credits. How
often and how patiently is the retry layer's business (`_retry.RetryPolicy`).
"""

from __future__ import annotations

import enum
from collections.abc import Generator, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import httpx

from strand_client._errors import (
    AuthError,
    BadRequestError,
    ConflictError,
    InsufficientCreditsError,
    MarkerNotAvailableError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    ServerError,
    StrandConnectionError,
    StrandError,
    UnknownMarkersError,
)
from strand_client._retry import RETRYABLE_STATUS, RetryableAnswer, RetryPolicy, parse_retry_after

# Failures raised before a single byte of the request left this process: always safe to repeat.
UNSENT_ERRORS: tuple[type[Exception], ...] = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


class Retry(enum.Enum):
    """How a request may be repeated after a transient failure."""

    IDEMPOTENT = "idempotent"  # repeating has no extra effect: retry timeouts, resets, 408/429/5xx
    UNSENT_ONLY = "unsent_only"  # has side effects: repeat only when it provably never left


class _BearerAuth(httpx.Auth):
    """Adds the API key only to requests for the Strand API itself.

    The same pool also PUTs slide bytes to upload session URLs on another host
    (GCS in production); those must never see the key.
    """

    def __init__(self, api_key: str, api_root: str) -> None:
        self._header = f"Bearer {api_key}"
        self._api_root = api_root

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        if str(request.url).startswith(self._api_root + "/"):
            request.headers["Authorization"] = self._header
        yield request

    def __repr__(self) -> str:
        return "_BearerAuth(<redacted>)"


class HttpSession:
    """The shared transport state of one `Client`: pool, key, timeouts, retry policy."""

    def __init__(
        self,
        *,
        api_key: str,
        base_url: str,
        timeout: float,
        policy: RetryPolicy,
        transport: httpx.BaseTransport | None = None,
        user_agent: str = "sectra-strand-bridge/strand_client",
    ) -> None:
        self.base_url = base_url
        self.api_root = f"{base_url}/api/v1"
        self.timeout = timeout
        self.policy = policy
        self._api_key = api_key
        self.client = httpx.Client(
            base_url=self.api_root,
            auth=_BearerAuth(api_key, self.api_root),
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            headers={"User-Agent": user_agent, "Accept": "application/json"},
            follow_redirects=False,
            transport=transport,
        )

    @property
    def api_key(self) -> str:
        """For the results reader, which keeps its own async pool; never log this."""
        return self._api_key

    def close(self) -> None:
        self.client.close()

    def __repr__(self) -> str:
        return f"HttpSession(api_root={self.api_root!r})"

    def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        retry: Retry = Retry.IDEMPOTENT,
        uncertain: type[StrandError] | None = None,
    ) -> httpx.Response:
        """Send one API request, repeating it only as `retry` allows (through the client's retry layer).

        `uncertain` is raised instead of a connection or server error when the
        request may have taken effect (only meaningful with `Retry.UNSENT_ONLY`).
        """

        def once() -> httpx.Response:
            response = self.client.request(method, path, json=json)
            if retry is Retry.IDEMPOTENT and response.status_code in RETRYABLE_STATUS:
                raise RetryableAnswer(response)
            return response

        def retry_if(exc: BaseException) -> bool:
            if isinstance(exc, httpx.TransportError):
                return retry is Retry.IDEMPOTENT or isinstance(exc, UNSENT_ERRORS)
            return isinstance(exc, RetryableAnswer)

        try:
            response = self.policy.call(once, retry_if, what=f"{method} {path}")
        except RetryableAnswer as busy:
            response = busy.response  # retries spent: the last answer is mapped like any other
        except httpx.TransportError as exc:
            if not isinstance(exc, UNSENT_ERRORS) and uncertain is not None:
                raise uncertain(f"{method} {path}: no answer from Strand ({type(exc).__name__})") from exc
            raise StrandConnectionError(
                f"{method} {path}: Strand unreachable ({type(exc).__name__})"
            ) from exc
        status = response.status_code
        if status >= 500 and uncertain is not None:
            error = error_from_response(response)
            raise uncertain(error.message, status, error.error_code, error.body)
        if status >= 400:
            raise error_from_response(response)
        return response

    def get_json(self, path: str) -> dict[str, Any]:
        return _json_object(self.request("GET", path))

    def post_json(
        self,
        path: str,
        body: Mapping[str, Any] | None = None,
        *,
        retry: Retry = Retry.IDEMPOTENT,
        uncertain: type[StrandError] | None = None,
    ) -> dict[str, Any]:
        return _json_object(self.request("POST", path, json=body, retry=retry, uncertain=uncertain))

    @contextmanager
    def stream(self, path: str, *, read_timeout: float) -> Iterator[httpx.Response]:
        """Open a long-lived GET (SSE); errors are mapped like any other answer."""
        timeout = httpx.Timeout(self.timeout, connect=min(self.timeout, 10.0), read=read_timeout)
        try:
            with self.client.stream("GET", path, timeout=timeout) as response:
                if response.status_code >= 400:
                    response.read()
                    raise error_from_response(response)
                yield response
        except httpx.TransportError as exc:
            raise StrandConnectionError(f"GET {path}: stream failed ({type(exc).__name__})") from exc


def _json_object(response: httpx.Response) -> dict[str, Any]:
    try:
        data = response.json()
    except ValueError as exc:
        raise StrandError("Strand answered with a body that is not JSON", response.status_code) from exc
    if not isinstance(data, dict):
        raise StrandError("Strand answered with JSON that is not an object", response.status_code)
    return data


def _error_body(response: httpx.Response) -> dict[str, Any]:
    try:
        data = response.json()
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _names(value: Any) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list) else []


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def error_from_response(response: httpx.Response) -> StrandError:
    """Map an error answer to its typed exception, keeping the server's `error` and `message`."""
    status = response.status_code
    body = _error_body(response)
    code = body.get("error") if isinstance(body.get("error"), str) else None
    message = str(body.get("message") or code or f"HTTP {status}")
    if status == 400:
        if code == "unknown_markers":
            return UnknownMarkersError(message, _names(body.get("unknownMarkers")), body)
        return BadRequestError(message, status, code, body)
    if status == 401:
        return AuthError(message, status, code, body)
    if status == 402:
        return InsufficientCreditsError(
            message, _int_or_none(body.get("required")), _int_or_none(body.get("balance")), body
        )
    if status == 403:
        if code == "marker_not_available":
            return MarkerNotAvailableError(message, _names(body.get("unavailableMarkers")), body)
        return PermissionDeniedError(message, status, code, body)
    if status == 404:
        return NotFoundError(message, status, code, body)
    if status == 409:
        return ConflictError(message, status, code, body)
    if status == 429:
        return RateLimitError(message, parse_retry_after(response.headers.get("Retry-After")), code, body)
    if status >= 500:
        return ServerError(message, status, code, body)
    return StrandError(message, status, code, body)
