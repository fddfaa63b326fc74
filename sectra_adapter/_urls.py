"""Which Sectra callback URLs the service may call, decided before any request is made.

An invocation's `callbackInfo.url` comes from the network; calling it blindly
would let anyone who can reach the webhook make the service send a Sectra token
(or fetch internal URLs) wherever they like. So a callback URL must match a
configured prefix exactly: same scheme, host and port, and a path under the
prefix on a segment boundary, with nothing that could make two parsers disagree
(userinfo, fragments, percent-encoding, dot segments, backslashes, whitespace).
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from sectra_adapter._errors import CallbackUrlRefused

logger = logging.getLogger(__name__)

_DEFAULT_PORTS = {"http": 80, "https": 443}
# Characters that different URL parsers treat differently, or that smuggle a second URL.
_AMBIGUOUS = re.compile(r"[\x00-\x20\x7f\\%@#?]")
_SETTING = "SECTRA_ALLOWED_CALLBACK_URLS"


@dataclass(frozen=True, slots=True)
class Origin:
    """A URL reduced to what the allow-list compares: scheme, host, port and path segments."""

    scheme: str
    host: str
    port: int
    segments: tuple[str, ...]

    def is_under(self, prefix: Origin) -> bool:
        """Same origin, and the path starts with the prefix's path on a segment boundary."""
        same_origin = (self.scheme, self.host, self.port) == (prefix.scheme, prefix.host, prefix.port)
        return same_origin and self.segments[: len(prefix.segments)] == prefix.segments


# Every invocation checks its callback URL against every allow-list entry; the URLs are those of a
# hospital's few Sectra servers, so each is parsed once (a refusal raises and is not kept).
@functools.lru_cache(maxsize=256)
def parse_origin(url: str) -> Origin:
    """Split a URL into an `Origin`, refusing anything ambiguous. Raises `CallbackUrlRefused`."""
    if not url.isascii():
        raise CallbackUrlRefused("the URL contains non-ASCII characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise CallbackUrlRefused(f"the URL cannot be parsed ({exc})") from exc
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise CallbackUrlRefused("the URL must start with https:// (or http:// where allowed)")
    if _AMBIGUOUS.search(url):
        raise CallbackUrlRefused(
            "the URL contains user info, a query, a fragment, percent-encoding, whitespace or backslashes"
        )
    if not parts.hostname:
        raise CallbackUrlRefused("the URL has no host")
    segments = tuple(s for s in parts.path.split("/") if s)
    if any(s in (".", "..") for s in segments) or "//" in parts.path:
        raise CallbackUrlRefused("the URL path contains empty, '.' or '..' segments")
    return Origin(scheme, parts.hostname.lower(), port or _DEFAULT_PORTS[scheme], segments)


def check_callback_url(url: str, allowed_prefixes: Sequence[str], allow_http: bool) -> None:
    """Raise `CallbackUrlRefused(reason)` unless `url` lies under one of `allowed_prefixes`.

    A malformed allow-list entry never matches; it is logged so the operator can fix it.
    """
    origin = parse_origin(url)
    if origin.scheme == "http" and not allow_http:
        raise CallbackUrlRefused("plain http callback URLs are refused (set SECTRA_ALLOW_HTTP=true to allow)")
    if not allowed_prefixes:
        raise CallbackUrlRefused(f"no callback URL is allowed: {_SETTING} is empty")
    for prefix in allowed_prefixes:
        try:
            allowed = parse_origin(prefix.strip())
        except CallbackUrlRefused as exc:
            logger.warning("ignoring malformed %s entry: %s", _SETTING, exc.reason)
            continue
        if origin.is_under(allowed):
            return
    raise CallbackUrlRefused(f"the callback URL is not under any prefix in {_SETTING}")


@functools.lru_cache(maxsize=256)
def normalise_base_url(url: str, allow_http: bool) -> str:
    """The base URL the adapter calls, without a trailing slash; plain http only when allowed.

    Unlike `sectra_client`, http is refused rather than silently rewritten to https:
    a rewritten URL would fail later with a confusing TLS error.
    """
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    if scheme == "http" and not allow_http:
        raise CallbackUrlRefused("plain http Sectra URLs are refused (set SECTRA_ALLOW_HTTP=true to allow)")
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        raise CallbackUrlRefused("the Sectra URL must be an absolute https:// URL")
    if "@" in parts.netloc or parts.query or parts.fragment:
        raise CallbackUrlRefused("the Sectra URL must not contain user info, a query or a fragment")
    return urlunsplit((scheme, parts.netloc.lower(), parts.path.rstrip("/"), "", ""))
