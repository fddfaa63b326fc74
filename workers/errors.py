"""One taxonomy of failures, and the one place that sorts every client's errors into it.

Every failure of a stage is one of three kinds, and the kind alone decides what happens next:

- `Refused`: the pathologist's (or the administrator's) problem. The run fails at once with plain
  words; no retry can help.
- `Transient(service)`: a service was away. The clients have already retried the request itself
  (`strand_client`, `sectra_adapter`); the pipeline's step scheduler retries the step a bounded
  number of times on top, then fails the run with words that name the service: Sectra, Strand, or
  the bridge's own storage (Redis, the work volume).
- `Bug`: anything else. Logged with its traceback, retried a few times, then an internal error.

The run-control exceptions the stages raise (`RunRefused`, `SubmissionPending`, `RunCancelled`)
live here too, so a stage never imports another stage to raise them.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import httpx
import redis

from sectra_adapter import (
    CallbackUrlRefused,
    DownloadError,
    SectraAuthError,
    SectraError,
    SectraRequestFailed,
    SectraUnavailable,
    SectraVersionConflict,
)
from strand_client import (
    AuthError,
    BadRequestError,
    InsufficientCreditsError,
    JobFailedError,
    MarkerNotAvailableError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    StrandError,
    SubmissionUncertainError,
    UnknownMarkersError,
)
from workers import messages
from workers.deidentify import DeidentificationError

# Statuses after which the same request may succeed later (RFC 9110 sections 15.5.9, 15.6; RFC 6585 4;
# RFC 8470 5.2 for 425).
_BUSY_STATUS = frozenset({408, 425, 429})


class RunRefused(Exception):
    """The run cannot go on for a reason the pathologist should read; never retried."""


class SubmissionPending(Exception):
    """The submit may have reached Strand; the step is retried, and reconciles before submitting again."""


class RunCancelled(Exception):
    """Raised at a checkpoint when Sectra or an operator asked the run to stop (or deleted it)."""


class Service(enum.StrEnum):
    """Who failed, in the words the pathologist reads."""

    sectra = "Sectra"
    strand = "Strand"
    storage = "the bridge's own storage"


@dataclass(frozen=True, slots=True)
class Refused:
    message: str


@dataclass(frozen=True, slots=True)
class Transient:
    service: Service
    # What the pathologist reads once the step's retries are spent; None = "<service> could not be reached".
    final_message: str | None = None
    # A server's `Retry-After`: the step is not retried sooner.
    retry_after: float | None = None

    def message(self, attempts: int) -> str:
        return self.final_message or messages.service_unreachable(self.service.value, attempts)


@dataclass(frozen=True, slots=True)
class Bug:
    pass


Kind = Refused | Transient | Bug


def classify(exc: BaseException, *, network_service: Service) -> Kind:
    """The kind of `exc`. `network_service` names who a stray `httpx` transport error came from."""
    if isinstance(exc, RunRefused | DeidentificationError):
        return Refused(str(exc))
    if isinstance(exc, SubmissionPending | SubmissionUncertainError):
        return Transient(Service.strand, messages.unconfirmed_submission())
    if isinstance(exc, StrandError):
        return _strand(exc)
    if isinstance(exc, SectraError):
        return _sectra(exc)
    if isinstance(exc, redis.RedisError | OSError):
        # Redis, or the work volume (disk full, I/O error): both are the bridge's own storage.
        return Transient(Service.storage)
    if isinstance(exc, httpx.TransportError):
        return Transient(network_service)
    return Bug()


def _strand(exc: StrandError) -> Kind:
    if isinstance(exc, InsufficientCreditsError):
        return Refused(messages.insufficient_credits(exc.required, exc.balance))
    if isinstance(exc, UnknownMarkersError):
        return Refused(messages.unknown_markers(exc.unknown))
    if isinstance(exc, MarkerNotAvailableError):
        return Refused(messages.markers_not_available(exc.unavailable))
    if isinstance(exc, JobFailedError):
        return Refused(messages.job_failed(exc.error_message))
    if isinstance(exc, BadRequestError | NotFoundError):
        return Refused(messages.strand_refused(exc.message))
    if isinstance(exc, AuthError | PermissionDeniedError):
        return Refused(messages.strand_key_refused())
    if isinstance(exc, RateLimitError):
        return Transient(Service.strand, retry_after=exc.retry_after)
    status = exc.status_code
    if status is None or status >= 500 or status in _BUSY_STATUS:
        return Transient(Service.strand)
    return Bug()


def _sectra(exc: SectraError) -> Kind:
    if isinstance(exc, DownloadError):
        message = messages.sectra_download_failed(str(exc))
        return Transient(Service.sectra, message) if exc.transient else Refused(message)
    if isinstance(exc, SectraUnavailable | SectraVersionConflict):
        return Transient(Service.sectra)
    if isinstance(exc, SectraAuthError | CallbackUrlRefused):
        return Refused(messages.sectra_refused(str(exc)))
    if isinstance(exc, SectraRequestFailed):
        if exc.status_code >= 500 or exc.status_code in _BUSY_STATUS:
            return Transient(Service.sectra)
        return Refused(messages.sectra_refused(str(exc)))
    return Bug()
