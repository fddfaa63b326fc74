"""`Client`: the entry point, holding one connection pool for everything it does."""

from __future__ import annotations

import os
from types import TracebackType

import httpx

from strand_client._errors import AuthError
from strand_client._http import HttpSession
from strand_client._jobs import Jobs
from strand_client._markers import Markers
from strand_client._predict import Predict
from strand_client._retry import RetryPolicy
from strand_client._uploads import Uploads

DEFAULT_BASE_URL = "https://app.strandai.com"


class Client:
    """Strand platform client.

    `api_key` and `base_url` default to `STRAND_API_KEY` and `STRAND_BASE_URL`.
    `timeout` bounds every network operation (connect, each read, each write);
    `max_retries` bounds the repeats of idempotent requests. `transport` (for
    tests and unusual networks) carries API calls and upload chunks; result
    stores are read through their own async pool. The key never appears in a
    repr or a log line, and is only sent to `{base_url}/api/v1/...`.
    """

    def __init__(
        self,
        api_key: str | None = None,
        base_url: str | None = None,
        timeout: float = 30.0,
        max_retries: int = 5,
        *,
        transport: httpx.BaseTransport | None = None,
        retry_policy: RetryPolicy | None = None,
    ) -> None:
        key = api_key or os.environ.get("STRAND_API_KEY")
        if not key:
            raise AuthError(
                "No Strand API key: pass api_key=... or set STRAND_API_KEY (keys start with sk-strand-)",
                401,
                "missing_api_key",
            )
        base = (base_url or os.environ.get("STRAND_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
        self._http = HttpSession(
            api_key=key,
            base_url=base,
            timeout=timeout,
            policy=retry_policy or RetryPolicy(max_retries=max_retries),
            transport=transport,
        )
        self.uploads = Uploads(self._http)
        self.predict = Predict(self._http)
        self.jobs = Jobs(self._http)
        self.markers = Markers(self._http)

    @property
    def base_url(self) -> str:
        return self._http.base_url

    @property
    def api_root(self) -> str:
        return self._http.api_root

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client(base_url={self.base_url!r})"
