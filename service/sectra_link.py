"""The webhook's outbound side: which Sectra it may call, and calling it cheaply.

Every invocation names its own Sectra (callback URL and token). A `create`'s one
call, its pending result, goes out on the event loop (`service.loop_clients`);
the other calls (modify's review, a create's fallback after a refused token or
connection) build a short-lived `SectraAdapter` per request. Building an httpx
client (and its TLS context) per request would cost more than the rest of the
request, so each adapter borrows the pooled client of its Sectra server
(`sectra_adapter._pool`, one bounded connection pool per server), and the app
closes the pool once, at shutdown.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sectra_adapter import (
    DEFAULT_VERSIONS,
    VERSION_CACHE,
    CallbackUrlRefused,
    SectraAdapter,
    check_callback_url,
    normalise_base_url,
    sectra_response_headers,
    version_headers,
)
from service.errors import ApiError
from service.state import ServiceState

# Sectra waits for our answer, so the webhook's own calls to Sectra are short and barely retried.
WEBHOOK_SECTRA_TIMEOUT = 10.0
WEBHOOK_SECTRA_RETRIES = 2
DEFAULT_HEADERS = version_headers(DEFAULT_VERSIONS)


def check_callback(state: ServiceState, url: str) -> None:
    """403 before any outbound request when the callback URL is not on the allow-list."""
    try:
        check_callback_url(url, state.settings.allowed_callback_urls, state.settings.allow_http)
    except CallbackUrlRefused as exc:
        raise ApiError(403, "callback_url_refused", f"callback URL refused: {exc.reason}") from None


def cached_callback_headers(state: ServiceState, url: str) -> dict[str, str] | None:
    """The headers when this Sectra's versions are cached (no I/O, safe on the event loop), else None."""
    info = VERSION_CACHE.fresh(normalise_base_url(url, state.settings.allow_http))
    return None if info is None else version_headers(info)


def callback_headers(state: ServiceState, url: str, token: str) -> dict[str, str]:
    """Sectra's version headers for a checked callback URL (cached per server; never fails)."""
    return sectra_response_headers(
        url, token, allow_http=state.settings.allow_http, transport=state.sectra_transport
    )


@contextmanager
def adapter_for(state: ServiceState, url: str, token: str, app_id: str) -> Iterator[SectraAdapter]:
    """An adapter for this invocation's token on the pooled client of its Sectra server."""
    secret = state.settings.sectra_client_secret
    with state.sectra_clients.client(normalise_base_url(url, state.settings.allow_http)) as client:
        yield SectraAdapter(
            url,
            token,
            allow_http=state.settings.allow_http,
            client_id=state.settings.sectra_client_id,
            client_secret=secret.get_secret_value() if secret else None,
            application_id=app_id,
            timeout=WEBHOOK_SECTRA_TIMEOUT,
            max_retries=WEBHOOK_SECTRA_RETRIES,
            client=client,
        )
