"""Sectra's API and software versions, cached per Sectra server.

Every webhook answer must carry `X-Sectra-ApiVersion` and
`X-Sectra-SoftwareVersion`. They change only when Sectra is upgraded, so a busy
webhook reads `/info` once per server per TTL, not once per request; one lookup
per server runs at a time, and a failed lookup is not repeated for a while.
What `/info` answers goes into our response headers, so an answer outside the
header grammar (RFC 9110 §5.5) counts as a failed lookup: never cached, never sent.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from pydantic import ValidationError
from sectra_client.schemas import ApplicationInfo

from sectra_adapter._errors import SectraError, SectraRequestFailed
from sectra_adapter._header_values import MAX_VALUE_CHARS, is_field_value

logger = logging.getLogger(__name__)

INFO_TTL_SECONDS = 3600.0
FAILURE_BACKOFF_SECONDS = 60.0


def api_version_at_least(api_version: str, minimum: tuple[int, ...]) -> bool:
    """Whether Sectra's `apiVersion` ("1.10", "1.9.2") is `minimum` or later, compared numerically
    ("1.10" is after "1.9"); a version that is not dotted numbers counts as too old."""
    try:
        parts = tuple(int(part) for part in api_version.strip().split("."))
    except ValueError:
        return False
    return parts >= minimum


def version_headers(info: ApplicationInfo) -> dict[str, str]:
    return {"X-Sectra-ApiVersion": info.apiVersion, "X-Sectra-SoftwareVersion": info.softwareVersion}


def check_header_safe(info: ApplicationInfo) -> ApplicationInfo:
    """`info` when both versions are valid header values; else `SectraRequestFailed`, whose message
    names the problem but not the value (a CR/LF or non-ASCII answer is not ours to echo)."""
    for name in ("apiVersion", "softwareVersion"):
        if not is_field_value(getattr(info, name)):
            raise SectraRequestFailed(
                200,
                "/info",
                f"'{name}' is not a header field value (RFC 9110 §5.5: visible ASCII, spaces "
                f"and tabs, at most {MAX_VALUE_CHARS} characters)",
            )
    return info


def _validated(fetch: Callable[[], ApplicationInfo]) -> ApplicationInfo:
    """`fetch()`, with an answer that is not `ApplicationInfo` made a `SectraError` like any other
    bad answer (pydantic's message would quote the value)."""
    try:
        return fetch()
    except ValidationError:
        raise SectraRequestFailed(200, "/info", "the answer lacks apiVersion or softwareVersion") from None


class VersionCache:
    """Thread-safe TTL cache of `ApplicationInfo` keyed by Sectra base URL."""

    def __init__(
        self,
        ttl: float = INFO_TTL_SECONDS,
        failure_backoff: float = FAILURE_BACKOFF_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ttl = ttl
        self._failure_backoff = failure_backoff
        self._clock = clock
        self._guard = threading.Lock()
        self._entries: dict[str, tuple[float, ApplicationInfo]] = {}
        self._failed_at: dict[str, float] = {}
        self._key_locks: dict[str, threading.Lock] = {}

    def clear(self) -> None:
        """Forget every server's versions (tests start servers on ports earlier ones used)."""
        with self._guard:
            self._entries.clear()
            self._failed_at.clear()

    def fresh(self, key: str) -> ApplicationInfo | None:
        """The cached value if still within its TTL; never fetches."""
        with self._guard:
            entry = self._entries.get(key)
        if entry is not None and self._clock() - entry[0] < self._ttl:
            return entry[1]
        return None

    def get(
        self,
        key: str,
        fetch: Callable[[], ApplicationInfo],
        fallback: ApplicationInfo | None = None,
    ) -> ApplicationInfo:
        """The versions for `key`, fetching when stale.

        When the fetch fails (or failed less than `failure_backoff` ago), answer
        with the last known value, else `fallback`, and log it; raise only when
        there is neither.
        """
        cached = self.fresh(key)
        if cached is not None:
            return cached
        with self._lock_for(key):
            cached = self.fresh(key)
            if cached is not None:
                return cached
            with self._guard:
                failed_at = self._failed_at.get(key)
                stale = self._entries.get(key)
            substitute = stale[1] if stale is not None else fallback
            recently_failed = failed_at is not None and self._clock() - failed_at < self._failure_backoff
            if substitute is not None and recently_failed:
                return substitute
            try:
                info = check_header_safe(_validated(fetch))
            except SectraError as exc:
                with self._guard:
                    self._failed_at[key] = self._clock()
                if substitute is None:
                    raise
                logger.warning(
                    "cannot read Sectra versions from /info (%s); answering with the %s versions",
                    exc,
                    "last known" if stale is not None else "configured default",
                )
                return substitute
            with self._guard:
                self._entries[key] = (self._clock(), info)
                self._failed_at.pop(key, None)
            return info

    def _lock_for(self, key: str) -> threading.Lock:
        with self._guard:
            return self._key_locks.setdefault(key, threading.Lock())


VERSION_CACHE = VersionCache()
