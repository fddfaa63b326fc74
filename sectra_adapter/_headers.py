"""Response headers for the webhook: Sectra's versions, without a `/info` call per request.

The webhook must answer Sectra quickly and must not fail because `/info` is
slow or down, so this reads the per-server cache, asks `/info` (once, with a
short timeout and no retries) only when the cache is stale, and otherwise
falls back to the last known versions or the configured defaults, saying so in
a log line.
"""

from __future__ import annotations

import httpx
from sectra_client.schemas import ApplicationInfo

from sectra_adapter._client import SectraAdapter
from sectra_adapter._urls import normalise_base_url
from sectra_adapter._versions import VERSION_CACHE, version_headers

# What the bridge implements and was tested against, used until a Sectra server has told us its own.
DEFAULT_VERSIONS = ApplicationInfo(apiVersion="1.10", softwareVersion="unknown")


def sectra_response_headers(
    url: str,
    token: str,
    *,
    allow_http: bool = False,
    fallback: ApplicationInfo = DEFAULT_VERSIONS,
    timeout: float = 3.0,
    transport: httpx.BaseTransport | None = None,
) -> dict[str, str]:
    """`X-Sectra-ApiVersion` / `X-Sectra-SoftwareVersion` for an answer to the Sectra at `url`.

    Call only with a callback URL that passed `check_callback_url`. Never raises
    a `SectraError`: an unreachable `/info` yields the last known or `fallback` versions.
    """
    base = normalise_base_url(url, allow_http)
    cached = VERSION_CACHE.fresh(base)
    if cached is not None:
        return version_headers(cached)

    def fetch() -> ApplicationInfo:
        with SectraAdapter(
            base, token, allow_http=allow_http, timeout=timeout, max_retries=0, transport=transport
        ) as adapter:
            return adapter.fetch_version_info()

    return version_headers(VERSION_CACHE.get(base, fetch, fallback=fallback))
