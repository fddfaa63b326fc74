"""Python client of the Strand REST API, and (in `strand_client.testing`) a faithful fake server."""

from strand_client.client import Client
from strand_client.errors import (
    AuthError,
    BadRequestError,
    ConflictError,
    InsufficientCreditsError,
    JobFailedError,
    JobTimeoutError,
    MarkerNotAvailableError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    ServerError,
    StrandConnectionError,
    StrandError,
    SubmissionUncertainError,
    UnknownMarkersError,
    UploadError,
)
from strand_client.jobs import Job
from strand_client.models import (
    TERMINAL_STATUSES,
    Estimate,
    JobEvent,
    JobStatus,
    ResultsLocation,
    Upload,
    UploadCheckpoint,
)
from strand_client.results import JobResults

__all__ = [
    "TERMINAL_STATUSES",
    "AuthError",
    "BadRequestError",
    "Client",
    "ConflictError",
    "Estimate",
    "InsufficientCreditsError",
    "Job",
    "JobEvent",
    "JobFailedError",
    "JobResults",
    "JobStatus",
    "JobTimeoutError",
    "MarkerNotAvailableError",
    "NotFoundError",
    "PermissionDeniedError",
    "RateLimitError",
    "ResultsLocation",
    "ServerError",
    "StrandConnectionError",
    "StrandError",
    "SubmissionUncertainError",
    "UnknownMarkersError",
    "Upload",
    "UploadCheckpoint",
    "UploadError",
]
