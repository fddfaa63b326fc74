"""`SectraAdapter`: the bridge's client of one Sectra IA-API server, on httpx.

It replaces `sectra_client.SectraClient` (whose schemas it keeps) because that
client's retry never fires, it has no timeouts, it reads whole slides into
memory and trusts server-sent filenames. Here every request has a timeout;
idempotent calls (GET, PUT) are retried by the adapter's one retry layer
(`retry.Backoff`) on connection errors, timeouts, 5xx and 429, with backoff,
jitter and `Retry-After` as a floor; a POST is retried only when it provably
never reached the server; redirects are never followed; and the token is an
`httpx.Auth` flow (`tokens.SectraTokenAuth`) that renews it through `/token`
before it expires and once after a 401, when client credentials are configured.
Underneath httpx's API the bytes move over urllib3 by default (`transport`),
which is what lets a slide download keep pace with curl.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
from sectra_client.schemas import (
    AdaptedResult,
    ApplicationInfo,
    CaseImageInfo,
    ImageMetadata,
    QualityControl,
    Result,
    ResultResponse,
)

from sectra_adapter._download import DownloadedFile, ProgressCallback, write_response
from sectra_adapter._errors import (
    DownloadError,
    SectraRequestFailed,
    SectraUnavailable,
    SectraVersionConflict,
    safe_excerpt,
)
from sectra_adapter._retry import RETRYABLE_STATUS, Backoff, describe, parse_retry_after
from sectra_adapter._tokens import ClientCredentials, SectraTokenAuth, TokenEndpointBusy
from sectra_adapter._transport import READINTO, Urllib3Transport
from sectra_adapter._urls import normalise_base_url
from sectra_adapter._versions import VERSION_CACHE, version_headers

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

# Errors after which the request certainly never reached the server: safe to resend anything.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
_BODY_BROKE = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)
_CONFLICT = frozenset({409, 412})
ERROR_BODY_BYTES = 4096


class _Busy(Exception):
    """Sectra answered 408/429/5xx to an idempotent call: worth repeating. Carries the answer."""

    def __init__(self, response: httpx.Response) -> None:
        super().__init__(f"status {response.status_code}")
        self.response = response
        self.retry_after = parse_retry_after(response.headers.get("retry-after"))


def _release(error: BaseException) -> None:
    """Before a retry: give back the connection of an answer that will not be read."""
    if isinstance(error, _Busy):
        error.response.close()


def http_client(transport: httpx.BaseTransport | None = None) -> httpx.Client:
    """The httpx client under an adapter: no redirects, JSON by default, urllib3 unless told otherwise.

    Timeouts and the token's auth flow are the adapter's, sent with each request.
    """
    return httpx.Client(
        follow_redirects=False,
        transport=transport if transport is not None else Urllib3Transport(),
        headers={"Accept": "application/json", "User-Agent": "sectra-strand-bridge"},
    )


class SectraAdapter:
    """One Sectra server, one token. Thread-safe; use as a context manager or call `close()`.

    The token (and any refreshed one) is held in memory only and never exposed:
    a worker that outlives it asks Sectra for a new one rather than storing it.
    """

    def __init__(
        self,
        url: str,
        token: str,
        *,
        allow_http: bool = False,
        client_id: str | None = None,
        client_secret: str | None = None,
        application_id: str | None = None,
        timeout: float = 30.0,
        max_retries: int = 5,
        transport: httpx.BaseTransport | None = None,
        backoff: Backoff | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        client: httpx.Client | None = None,
    ) -> None:
        """`client`: an `http_client()` shared with other adapters (`sectra_adapter._pool`); it is
        not closed by `close()`, and `transport` is then unused."""
        self.base_url = normalise_base_url(url, allow_http)
        credentials = (
            ClientCredentials(client_id, client_secret, application_id or "")
            if client_id and client_secret
            else None
        )
        self._backoff = backoff or Backoff(max_retries=max_retries)
        self._sleep = sleep
        # The read timeout bounds each wait for bytes, not the whole transfer: a slide may take minutes.
        self._timeout = httpx.Timeout(timeout, connect=min(timeout, 10.0))
        # Per request rather than per client, so adapters (one per token) can share a client.
        self._auth = SectraTokenAuth(
            token,
            token_url=self.base_url + "/token",
            credentials=credentials,
            timeout=self._timeout,
            clock=clock,
        )
        self._owns_client = client is None
        self._client = client if client is not None else http_client(transport)

    def __repr__(self) -> str:
        return f"SectraAdapter({self.base_url!r})"

    def __enter__(self) -> SectraAdapter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        if self._owns_client:
            self._client.close()

    # ---- versions -------------------------------------------------------------------------

    @property
    def version_info(self) -> ApplicationInfo:
        """Sectra's versions, from the per-server cache (one `/info` call per server per hour)."""
        return VERSION_CACHE.get(self.base_url, self.fetch_version_info)

    @property
    def response_headers(self) -> dict[str, str]:
        """`X-Sectra-ApiVersion` / `X-Sectra-SoftwareVersion` for answers to this Sectra."""
        return version_headers(self.version_info)

    def fetch_version_info(self) -> ApplicationInfo:
        """`GET /info`, bypassing the cache."""
        return ApplicationInfo.model_validate(self._get_json("/info"))

    # ---- slides ---------------------------------------------------------------------------

    def get_image_metadata(self, slide_id: str, extended: bool = False, phi: bool = False) -> ImageMetadata:
        params: dict[str, str] = {}
        if extended:
            params["scope"] = "extended"
        if phi:
            params["includePHI"] = "true"
        return ImageMetadata.model_validate(self._get_json(f"/slides/{_seg(slide_id)}/info", params))

    def get_case_image_infos(self, slide_id: str) -> list[CaseImageInfo]:
        """Every slide of the case `slide_id` belongs to, itself included.

        IA-API 1.9+ `GET /slides/{id}/request/images/info`, as `sectra_client`'s
        `get_image_infos_in_case_by_slide_id`.
        """
        path = f"/slides/{_seg(slide_id)}/request/images/info"
        payload = self._get_json(path)
        if not isinstance(payload, list):
            raise SectraRequestFailed(200, path, "expected a JSON list")
        return [CaseImageInfo.model_validate(item) for item in payload]

    def download_slide(
        self, slide_id: str, output_dir: Path | str, progress: ProgressCallback | None = None
    ) -> list[DownloadedFile]:
        """Stream every file of a slide into `output_dir`, with size and SHA-256 of each.

        Memory stays flat whatever the slide size. A download that breaks off is
        retried from the start (it is idempotent) after removing what it wrote;
        `progress(bytes_received, total_or_None)` is called every few MiB.
        """
        path = f"/slides/{_seg(slide_id)}/files"

        def once() -> list[DownloadedFile]:
            response = self._send_once("GET", path, idempotent=True, stream=True, accept="*/*")
            try:
                self._check(response, path, ok=(200,))
                try:
                    # Straight into reusable buffers where the transport offers it (ours does).
                    readinto = response.extensions.get(READINTO)
                    body = readinto if callable(readinto) else response.iter_bytes()
                    return write_response(response.headers, body, Path(output_dir), progress)
                except _BODY_BROKE as exc:
                    raise DownloadError(
                        f"truncated body: the connection broke during the download ({type(exc).__name__})",
                        transient=True,
                    ) from exc
            finally:
                response.close()

        def retry_if(exc: BaseException) -> bool:
            if isinstance(exc, DownloadError):
                return exc.transient
            return _retryable(exc, idempotent=True)

        try:
            return self._retried(once, retry_if, "GET", path)
        except _Busy as busy:  # retries spent on a busy Sectra: its last answer names the status
            try:
                self._check(busy.response, path, ok=(200,))
            finally:
                busy.response.close()
            raise

    def download_slide_files(
        self, slide_id: str, output_dir: Path | str, progress: ProgressCallback | None = None
    ) -> list[Path]:
        """`sectra_client`-compatible: the paths of the downloaded files."""
        return [f.path for f in self.download_slide(slide_id, output_dir, progress)]

    def set_quality_control(self, slide_id: str, quality_control: QualityControl) -> None:
        path = f"/slides/{_seg(slide_id)}/qualityControl"
        response = self._send("PUT", path, json_body=quality_control.model_dump(mode="json"), idempotent=True)
        self._check(response, path, ok=(200, 204))

    # ---- results --------------------------------------------------------------------------

    def create_results(self, app_id: str, result: Result) -> ResultResponse:
        """POST a new result. Not retried once it may have reached Sectra (a retry could store a
        second result); the caller reconciles with `get_all_results` instead."""
        path = results_path(app_id)
        response = self._send("POST", path, json_body=result.model_dump(mode="json"), idempotent=False)
        self._check(response, path, ok=(200, 201))
        return ResultResponse.model_validate(_json(response, path))

    def update_results(self, app_id: str, result_id: int, result: AdaptedResult) -> ResultResponse:
        """PUT a new version. Raises `SectraVersionConflict` when `result.versionId` is not current
        (which includes a retried PUT whose first attempt did land)."""
        path = f"/applications/{_seg(app_id)}/results/{int(result_id)}"
        response = self._send("PUT", path, json_body=result.model_dump(mode="json"), idempotent=True)
        self._check(response, path, ok=(200,))
        return ResultResponse.model_validate(_json(response, path))

    def get_result(self, app_id: str, result_id: int) -> ResultResponse:
        return ResultResponse.model_validate(
            self._get_json(f"/applications/{_seg(app_id)}/results/{int(result_id)}")
        )

    def get_all_results(self, slide_id: str, app_id: str) -> list[ResultResponse]:
        path = f"/applications/{_seg(app_id)}/results/slide/{_seg(slide_id)}"
        payload = self._get_json(path)
        if not isinstance(payload, list):
            raise SectraRequestFailed(200, path, "expected a JSON list")
        return [ResultResponse.model_validate(item) for item in payload]

    # ---- transport ------------------------------------------------------------------------

    def _get_json(self, path: str, params: Mapping[str, str] | None = None) -> Any:
        response = self._send("GET", path, params=params, idempotent=True)
        self._check(response, path, ok=(200,))
        return _json(response, path)

    def _send(
        self,
        method: str,
        path: str,
        *,
        idempotent: bool,
        params: Mapping[str, str] | None = None,
        json_body: Any = None,
    ) -> httpx.Response:
        """Send through the retry layer; returns the first answer that is not retried (any status)."""
        try:
            return self._retried(
                lambda: self._send_once(
                    method, path, idempotent=idempotent, params=params, json_body=json_body
                ),
                lambda exc: _retryable(exc, idempotent=idempotent),
                method,
                path,
            )
        except _Busy as busy:
            return busy.response  # retries spent: the last answer, mapped by the caller like any other

    def _retried(
        self, once: Callable[[], _T], retry_if: Callable[[BaseException], bool], method: str, path: str
    ) -> _T:
        """`once` through the adapter's retry layer; spent retries end as the adapter's errors."""
        try:
            return self._backoff.call(
                once, retry_if, what=f"{method} {path}", sleep=self._sleep, before_retry=_release
            )
        except TokenEndpointBusy:
            raise
        except httpx.TransportError as exc:
            raise SectraUnavailable(
                f"Sectra did not answer {method} {path} after {self._backoff.max_retries + 1} attempts "
                f"({describe(exc)})"
            ) from exc

    def _send_once(
        self,
        method: str,
        path: str,
        *,
        idempotent: bool,
        params: Mapping[str, str] | None = None,
        json_body: Any = None,
        stream: bool = False,
        accept: str | None = None,
    ) -> httpx.Response:
        """One exchange (the auth flow may add a `/token` request and one resend after a 401)."""
        headers = {"Accept": accept, "Accept-Encoding": "identity"} if accept is not None else {}
        request = self._client.build_request(
            method,
            self.base_url + path,
            params=params,
            json=json_body,
            headers=headers,
            timeout=self._timeout,
        )
        try:
            response = self._client.send(request, stream=stream, auth=self._auth, follow_redirects=False)
        except _NOT_SENT:
            raise
        except httpx.TransportError as exc:
            if not idempotent:
                raise SectraUnavailable(
                    f"{method} {path} broke off after it may have reached Sectra ({describe(exc)}); "
                    "not retried"
                ) from exc
            raise
        if idempotent and response.status_code in RETRYABLE_STATUS:
            if not stream:
                response.close()
            raise _Busy(response)
        return response

    def _check(self, response: httpx.Response, path: str, ok: Collection[int]) -> None:
        """Raise the matching error unless the status is one the call expects."""
        if response.status_code not in ok:
            raise_for_status(response.status_code, response.reason_phrase, _error_body(response), path)


def raise_for_status(status: int, reason: str, body: bytes, path: str) -> None:
    """The adapter's error for an answer the call cannot use (`body`: up to 4 KiB of it).

    One mapping for every client of Sectra here, the blocking adapter and the webhook's
    asynchronous poster (`sectra_adapter._async_results`) alike.
    """
    if 300 <= status < 400:
        raise SectraRequestFailed(status, path, "redirects are not followed")
    text = error_text(body)
    if status in _CONFLICT:
        raise SectraVersionConflict(status, path, text or "the result was changed by someone else")
    raise SectraRequestFailed(status, path, text or reason)


def _error_body(response: httpx.Response) -> bytes:
    """Up to `ERROR_BODY_BYTES` of an error body; a streamed one is read only as far as needed."""
    if response.is_stream_consumed:
        return response.content[:ERROR_BODY_BYTES]
    body = b""
    for chunk in response.iter_raw():
        body += chunk
        if len(body) >= ERROR_BODY_BYTES:
            break
    return body[:ERROR_BODY_BYTES]


def error_text(body: bytes) -> str:
    """A short, redacted excerpt of an error body: its JSON `message`/`detail`/`error`, else the text."""
    text = body[:ERROR_BODY_BYTES].decode("utf-8", "replace")
    try:
        detail = json.loads(text)
    except ValueError:
        return safe_excerpt(text)
    if isinstance(detail, dict):
        text = str(detail.get("message") or detail.get("detail") or detail.get("error") or text)
    return safe_excerpt(text)


def _json(response: httpx.Response, path: str) -> Any:
    try:
        return response.json()
    except ValueError as exc:
        raise SectraRequestFailed(response.status_code, path, "the answer is not JSON") from exc


def _retryable(exc: BaseException, *, idempotent: bool) -> bool:
    """Worth another attempt: never sent, a busy `/token`, or any transient failure of an idempotent call."""
    if isinstance(exc, (*_NOT_SENT, TokenEndpointBusy)):
        return True
    return idempotent and isinstance(exc, httpx.TransportError | _Busy)


@functools.lru_cache(maxsize=256)
def results_path(app_id: str) -> str:
    """Where a new result of `app_id` is posted (`create_results`)."""
    return f"/applications/{_seg(app_id)}/results"


def _seg(value: str) -> str:
    """One URL path segment: ids come from invocations, so `/`, `..` or `?` must not reshape the path."""
    segment = quote(value, safe="")
    return segment.replace(".", "%2E") if segment in {".", ".."} else segment
