"""The bridge's client of Sectra's IA-API, on top of the `sectra_client` package's schemas.

The names below are the package's public surface; import them from here
(`from sectra_adapter import SectraAdapter`), not from the modules, which may move.
`SectraAdapter` (calls, streaming download, token refresh, one retry layer), `AsyncResultPoster`
(the webhook's result POST on its event loop),
`ResultPublisher` (one result per run), the result builders (final, status, hotspot review), the slide gate,
the callback-URL allow-list, the environment's outbound proxy (`EnvironmentProxies`,
`proxy_aware_transport`), the summary types shared with `workers`, and the errors.
"""

import importlib
from typing import TYPE_CHECKING, Any

from sectra_adapter._async_results import AsyncResultPoster, NotSent, StoredResult
from sectra_adapter._client import SectraAdapter, results_path
from sectra_adapter._download import DownloadedFile, ProgressCallback
from sectra_adapter._errors import (
    CallbackUrlRefused,
    DownloadError,
    SectraAuthError,
    SectraError,
    SectraRequestFailed,
    SectraUnavailable,
    SectraVersionConflict,
)
from sectra_adapter._gate import check_slide, check_stain
from sectra_adapter._header_values import MAX_TOKEN_CHARS, is_token68
from sectra_adapter._headers import DEFAULT_VERSIONS, sectra_response_headers
from sectra_adapter._patterns import UnsafePattern, check_pattern
from sectra_adapter._pool import SectraClientPool
from sectra_adapter._proxy import EnvironmentProxies, ProxyRoutedTransport, proxy_aware_transport
from sectra_adapter._retry import Backoff
from sectra_adapter._summary import (
    AreaFigures,
    Band,
    Hotspot,
    MarkerOverlay,
    MarkerSummary,
    Overlay,
    Region,
    ReusedJob,
    RunSummary,
)
from sectra_adapter._transport import SharedTransport, Urllib3Transport
from sectra_adapter._urls import check_callback_url, normalise_base_url
from sectra_adapter._versions import VERSION_CACHE, api_version_at_least, version_headers

# The result builders draw (numpy, shapely, contourpy: ~16 MiB of a process's RSS), so they are imported
# on first use (PEP 562): a process that only streams slides or posts a pending result does not carry
# them (bench/download.py's peak RSS). Type checkers read the imports below as they are.
if TYPE_CHECKING:
    from sectra_adapter._patches import (
        HotspotReview,
        ReviewedPatch,
        hotspot_review_result,
        read_review,
        reviewed_result,
    )
    from sectra_adapter._progress import PublishGuard, ResultPublisher
    from sectra_adapter._results import (
        body_bytes,
        build_final_result,
        cancelled_result,
        case_summary_result,
        colour_for,
        failure_result,
        pending_result,
        pending_result_json,
        progress_result,
        region_frames,
        slide_frame,
    )

_LAZY = {
    "sectra_adapter._patches": (
        "HotspotReview",
        "ReviewedPatch",
        "hotspot_review_result",
        "read_review",
        "reviewed_result",
    ),
    "sectra_adapter._progress": ("PublishGuard", "ResultPublisher"),
    "sectra_adapter._results": (
        "body_bytes",
        "build_final_result",
        "cancelled_result",
        "case_summary_result",
        "colour_for",
        "failure_result",
        "pending_result",
        "pending_result_json",
        "progress_result",
        "region_frames",
        "slide_frame",
    ),
}
_LAZY_HOME = {name: module for module, names in _LAZY.items() for name in names}


def __getattr__(name: str) -> Any:
    home = _LAZY_HOME.get(name)
    if home is None:
        raise AttributeError(f"module 'sectra_adapter' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


__all__ = [
    "DEFAULT_VERSIONS",
    "MAX_TOKEN_CHARS",
    "VERSION_CACHE",
    "AreaFigures",
    "AsyncResultPoster",
    "Backoff",
    "Band",
    "CallbackUrlRefused",
    "DownloadError",
    "DownloadedFile",
    "EnvironmentProxies",
    "Hotspot",
    "HotspotReview",
    "MarkerOverlay",
    "MarkerSummary",
    "NotSent",
    "Overlay",
    "ProgressCallback",
    "ProxyRoutedTransport",
    "PublishGuard",
    "Region",
    "ResultPublisher",
    "ReusedJob",
    "ReviewedPatch",
    "RunSummary",
    "SectraAdapter",
    "SectraAuthError",
    "SectraClientPool",
    "SectraError",
    "SectraRequestFailed",
    "SectraUnavailable",
    "SectraVersionConflict",
    "SharedTransport",
    "StoredResult",
    "UnsafePattern",
    "Urllib3Transport",
    "api_version_at_least",
    "body_bytes",
    "build_final_result",
    "cancelled_result",
    "case_summary_result",
    "check_callback_url",
    "check_pattern",
    "check_slide",
    "check_stain",
    "colour_for",
    "failure_result",
    "hotspot_review_result",
    "is_token68",
    "normalise_base_url",
    "pending_result",
    "pending_result_json",
    "progress_result",
    "proxy_aware_transport",
    "read_review",
    "region_frames",
    "results_path",
    "reviewed_result",
    "sectra_response_headers",
    "slide_frame",
    "version_headers",
]
