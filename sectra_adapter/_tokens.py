"""Sectra's callback token as an `httpx.Auth` flow: renewed before it expires, and once on a 401.

An invocation's token may expire before a long Strand job ends. Sectra issues a
new one from `POST {url}/token?applicationId=...` (HTTP Basic with the client
credentials, `client_credentials` grant; RFC 6749 section 4.4). The flow asks
for one when the current grant is within a margin of its `expiresIn`, and when
Sectra answers 401 (a request refused as unauthenticated was not acted upon,
so it is sent again once, whatever its method). Tokens live in memory only:
they are never logged, persisted or put in an exception message.

Like httpx's own `DigestAuth`, the flow yields the extra request and reads its
answer itself; it is synchronous, as the adapter is.
"""

from __future__ import annotations

import base64
import logging
import threading
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass

import httpx
from pydantic import BaseModel, ValidationError

from sectra_adapter._errors import SectraAuthError, SectraRequestFailed, SectraUnavailable, safe_excerpt
from sectra_adapter._retry import RETRYABLE_STATUS, parse_retry_after

logger = logging.getLogger("sectra_adapter")

CONFIGURE_HINT = "set SECTRA_CLIENT_ID and SECTRA_CLIENT_SECRET"
# Renew this long before `expiresIn` runs out (a tenth of the grant's life, at most a minute), so a
# request never leaves with a token that expires on the way.
_MARGIN_FRACTION = 0.1
_MARGIN_MAX_SECONDS = 60.0


@dataclass(frozen=True, slots=True)
class ClientCredentials:
    client_id: str
    client_secret: str
    application_id: str

    def __repr__(self) -> str:
        return f"ClientCredentials(client_id={self.client_id!r}, application_id={self.application_id!r})"


class TokenGrant(BaseModel):
    """Sectra's answer to `/token`."""

    accessToken: str
    tokenType: str = "Bearer"
    expiresIn: int | None = None


class TokenEndpointBusy(SectraUnavailable):
    """`/token` answered 408/429/5xx; the request that needed the token is retried by the retry layer."""

    def __init__(self, status: int, retry_after: float | None) -> None:
        super().__init__(f"Sectra's /token answered {status}; no new token")
        self.retry_after = retry_after


def parse_grant(payload: object) -> TokenGrant | None:
    """The grant in a `/token` answer, or None when the answer is not one (never echoes it)."""
    try:
        return TokenGrant.model_validate(payload)
    except ValidationError:
        return None


class SectraTokenAuth(httpx.Auth):
    """Bearer auth with the invocation's token, renewed through `/token` when client credentials exist."""

    def __init__(
        self,
        token: str,
        *,
        token_url: str,
        credentials: ClientCredentials | None,
        timeout: httpx.Timeout,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._token = token
        self._token_url = token_url
        self._credentials = credentials
        self._timeout = timeout
        self._clock = clock
        self._renew_at: float | None = None  # unknown for the invocation's own token: only a 401 tells
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return "SectraTokenAuth(<redacted>)"

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        if self._renew_at is not None and self._clock() >= self._renew_at:
            yield from self._renew(stale=self._token)
        token = self._token
        request.headers["Authorization"] = f"Bearer {token}"
        response = yield request
        if response.status_code != 401:
            return
        yield from self._renew(stale=token)
        request.headers["Authorization"] = f"Bearer {self._token}"
        response = yield request
        if response.status_code == 401:
            raise SectraAuthError(
                f"Sectra refused a freshly issued token for {request.method} {request.url.path}; check that "
                "SECTRA_CLIENT_ID / SECTRA_CLIENT_SECRET belong to this application"
            )

    def _renew(self, stale: str) -> Generator[httpx.Request, httpx.Response, None]:
        """Replace `stale` with a new token, unless another thread already did."""
        with self._lock:
            if self._token != stale:
                return
            credentials = self._credentials
            if credentials is None:
                raise SectraAuthError(
                    f"Sectra rejected the callback token (401) and cannot issue a new one: {CONFIGURE_HINT}"
                )
            if not credentials.application_id:
                raise SectraAuthError(
                    "Sectra rejected the callback token (401); a new one needs the application id, "
                    "which this adapter was not given"
                )
            basic = base64.b64encode(f"{credentials.client_id}:{credentials.client_secret}".encode()).decode()
            response = yield httpx.Request(
                "POST",
                self._token_url,
                params={"applicationId": credentials.application_id},
                data={"grant_type": "client_credentials"},
                headers={"Authorization": f"Basic {basic}", "Accept": "application/json"},
                extensions={"timeout": self._timeout.as_dict()},
            )
            response.read()
            status = response.status_code
            if status in (400, 401, 403):
                raise SectraAuthError(
                    f"Sectra refused the client credentials ({status} on /token): "
                    "check SECTRA_CLIENT_ID and SECTRA_CLIENT_SECRET"
                )
            if status in RETRYABLE_STATUS:
                raise TokenEndpointBusy(status, parse_retry_after(response.headers.get("retry-after")))
            if status not in (200, 201):
                detail = safe_excerpt(response.text) or response.reason_phrase
                raise SectraRequestFailed(status, "/token", detail)
            try:
                payload: object = response.json()
            except ValueError:
                payload = None
            grant = parse_grant(payload)
            if grant is None:
                raise SectraAuthError("Sectra's answer to /token carries no accessToken")
            self._token = grant.accessToken
            self._renew_at = None
            if grant.expiresIn is not None:
                margin = min(_MARGIN_MAX_SECONDS, grant.expiresIn * _MARGIN_FRACTION)
                self._renew_at = self._clock() + grant.expiresIn - margin
            logger.info("obtained a new Sectra token", extra={"expires_in_s": grant.expiresIn})
