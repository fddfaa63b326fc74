"""Errors raised by the Sectra adapter.

Every message is safe to log and to show an operator: it never carries a
token, a client secret or patient data (no file names from Sectra, no
response bodies beyond a short, redacted excerpt).
"""

from __future__ import annotations

import re

_CREDENTIAL = re.compile(r"(?i)(bearer|basic)\s+[A-Za-z0-9._~+/=\-]+")
_EXCERPT_CHARS = 200


def safe_excerpt(text: str) -> str:
    """A short, credential-free excerpt of a server's answer, for error messages."""
    text = _CREDENTIAL.sub(lambda m: f"{m.group(1)} ***", " ".join(text.split()))
    return text if len(text) <= _EXCERPT_CHARS else text[:_EXCERPT_CHARS] + "…"


class SectraError(Exception):
    """Base of everything the adapter raises; `str(exc)` is safe to log."""


class SectraRequestFailed(SectraError):
    """Sectra answered with a status the call cannot use."""

    def __init__(self, status_code: int, path: str, message: str) -> None:
        self.status_code = status_code
        self.path = path
        self.message = message
        super().__init__(f"Sectra answered {status_code} to {path}: {message}")


class SectraVersionConflict(SectraRequestFailed):
    """The result changed in Sectra since we read its versionId (optimistic concurrency)."""


class SectraAuthError(SectraError):
    """Sectra refused our token and we cannot get a new one; the message says what to configure."""


class SectraUnavailable(SectraError):
    """Sectra could not be reached or did not answer in time, after every retry."""


class DownloadError(SectraError):
    """A slide download failed; the message names the problem (truncated body, missing boundary, ...).

    `transient` is True when retrying the same download may succeed (the connection
    broke), False when the response itself is unusable (no filename, bad framing).
    """

    def __init__(self, message: str, *, transient: bool = False) -> None:
        self.transient = transient
        super().__init__(message)


class CallbackUrlRefused(SectraError):
    """A callback URL is not one this service may call; `reason` says why."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)
