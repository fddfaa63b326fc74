"""The bridge's client of Sectra's IA-API, on top of the `sectra_client` package's schemas.

The names below are the package's public surface; import them from here
(`from sectra_adapter import SectraAdapter`), not from the modules, which may move.
`SectraAdapter` (calls, streaming download, token refresh, one retry layer),
`ResultPublisher` (one result per run), the result builders, the slide gate,
the callback-URL allow-list, the summary types shared with `workers`, and the errors.
"""

from sectra_adapter.client import SectraAdapter
from sectra_adapter.download import DownloadedFile, ProgressCallback
from sectra_adapter.errors import (
    CallbackUrlRefused,
    DownloadError,
    SectraAuthError,
    SectraError,
    SectraRequestFailed,
    SectraUnavailable,
    SectraVersionConflict,
)
from sectra_adapter.gate import check_slide, check_stain
from sectra_adapter.headers import sectra_response_headers
from sectra_adapter.progress import ResultPublisher
from sectra_adapter.results import (
    build_final_result,
    cancelled_result,
    case_summary_result,
    failure_result,
    pending_result,
    progress_result,
)
from sectra_adapter.retry import Backoff
from sectra_adapter.summary import Hotspot, MarkerSummary, RunSummary
from sectra_adapter.transport import Urllib3Transport
from sectra_adapter.urls import check_callback_url, normalise_base_url
from sectra_adapter.versions import api_version_at_least

__all__ = [
    "Backoff",
    "CallbackUrlRefused",
    "DownloadError",
    "DownloadedFile",
    "Hotspot",
    "MarkerSummary",
    "ProgressCallback",
    "ResultPublisher",
    "RunSummary",
    "SectraAdapter",
    "SectraAuthError",
    "SectraError",
    "SectraRequestFailed",
    "SectraUnavailable",
    "SectraVersionConflict",
    "Urllib3Transport",
    "api_version_at_least",
    "build_final_result",
    "cancelled_result",
    "case_summary_result",
    "check_callback_url",
    "check_slide",
    "check_stain",
    "failure_result",
    "normalise_base_url",
    "pending_result",
    "progress_result",
    "sectra_response_headers",
]
