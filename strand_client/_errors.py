"""Typed errors: one class per HTTP status the platform documents, all under `StrandError`.

The split that matters most to the bridge is between errors that *prove* a request
had no effect (every 4xx, `StrandConnectionError`) and `SubmissionUncertainError`,
which means a job submit may or may not have reached Strand: the caller must look
the job up before submitting again, or it may pay twice.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


class StrandError(Exception):
    """Base of every error this client raises; carries the server's `error` code and `message`."""

    def __init__(
        self,
        message: str,
        status_code: int | None = None,
        error_code: str | None = None,
        body: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.error_code = error_code
        self.body: Mapping[str, Any] = body or {}


class BadRequestError(StrandError):
    """400: the request was rejected as invalid; sending it again will not help."""


class UnknownMarkersError(BadRequestError):
    """400 `unknown_markers`: the platform does not know these marker names at all."""

    def __init__(
        self,
        message: str,
        unknown: Sequence[str],
        body: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message, 400, "unknown_markers", body)
        self.unknown = list(unknown)


class AuthError(StrandError):
    """401: the API key is missing, wrong or revoked."""


class InsufficientCreditsError(StrandError):
    """402: the organisation cannot cover the job's reservation; nothing was reserved."""

    def __init__(
        self,
        message: str,
        required: int | None = None,
        balance: int | None = None,
        body: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message, 402, "insufficient_credits", body)
        self.required = required
        self.balance = balance


class PermissionDeniedError(StrandError):
    """403 other than `marker_not_available`: the key may not do this."""


class MarkerNotAvailableError(StrandError):
    """403 `marker_not_available`: known markers this organisation is not entitled to."""

    def __init__(
        self,
        message: str,
        unavailable: Sequence[str],
        body: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message, 403, "marker_not_available", body)
        self.unavailable = list(unavailable)


class NotFoundError(StrandError):
    """404: the upload, job or file does not exist for this organisation."""


class ConflictError(StrandError):
    """409: the resource is not in a state that allows this yet (upload not ready, job not done)."""


class RateLimitError(StrandError):
    """429: too many requests or concurrent jobs; `retry_after` says how long to hold off."""

    def __init__(
        self,
        message: str,
        retry_after: float | None = None,
        error_code: str | None = None,
        body: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message, 429, error_code, body)
        self.retry_after = retry_after


class ServerError(StrandError):
    """5xx that outlived the retries of an idempotent request."""


class StrandConnectionError(StrandError):
    """Strand could not be reached (or kept timing out) for a request that is safe to repeat."""


class SubmissionUncertainError(StrandError):
    """A job submit may or may not have been accepted (timeout after sending, reset, 5xx).

    Never resubmit blindly after this: list the upload's jobs
    (`client.jobs.for_upload`) and adopt the one that went through, if any.
    """


class JobFailedError(StrandError):
    """The job ended `failed`; `error_message` is the platform's reason."""

    def __init__(self, job_id: str, error_message: str | None) -> None:
        super().__init__(error_message or f"Strand job {job_id} failed", None, "job_failed")
        self.job_id = job_id
        self.error_message = error_message


class JobTimeoutError(StrandError):
    """`Job.wait()` reached its deadline before the job ended; the job itself keeps running."""


class UploadError(StrandError):
    """The resumable upload could not be completed (session refused, retries exhausted, size mismatch)."""
