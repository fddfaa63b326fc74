"""Typed, immutable views of the platform's camelCase JSON.

Every parser ignores fields it does not know and tolerates missing optional ones:
the live platform is newer than the reference and adds fields (and statuses)
without notice, and a client that crashes on them would stop the bridge.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

TERMINAL_STATUSES = frozenset({"completed", "partial_failed", "failed", "cancelled"})


def _opt_str(raw: Mapping[str, Any], key: str) -> str | None:
    value = raw.get(key)
    return None if value is None else str(value)


def _opt_int(raw: Mapping[str, Any], key: str) -> int | None:
    value = raw.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return int(value)


def _opt_float(raw: Mapping[str, Any], key: str) -> float | None:
    value = raw.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _opt_datetime(raw: Mapping[str, Any], key: str) -> datetime | None:
    value = raw.get(key)
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class Upload:
    """An upload as the platform reports it; `existing` marks a `contentSha256` dedup hit (no bytes sent)."""

    id: str
    status: str | None = None
    width_px: int | None = None
    height_px: int | None = None
    dimensions_source: str | None = None
    filename: str | None = None
    file_size: int | None = None
    existing: bool = False

    @classmethod
    def from_wire(cls, raw: Mapping[str, Any], *, existing: bool = False) -> Upload:
        upload_id = raw.get("uploadId") or raw.get("id")
        return cls(
            id=str(upload_id),
            status=_opt_str(raw, "status"),
            width_px=_opt_int(raw, "widthPx"),
            height_px=_opt_int(raw, "heightPx"),
            dimensions_source=_opt_str(raw, "dimensionsSource"),
            filename=_opt_str(raw, "filename"),
            file_size=_opt_int(raw, "fileSize"),
            existing=existing,
        )


@dataclass(frozen=True, slots=True)
class UploadSession:
    """The answer to `POST /uploads` when bytes must be sent: where to PUT them."""

    upload_id: str
    upload_url: str
    gcs_path: str | None = None

    @classmethod
    def from_wire(cls, raw: Mapping[str, Any]) -> UploadSession:
        return cls(str(raw["uploadId"]), str(raw["uploadUrl"]), _opt_str(raw, "gcsPath"))


@dataclass(frozen=True, slots=True)
class UploadCheckpoint:
    """What a caller persists to resume an upload after a process restart.

    `offset` is the count of bytes Strand confirmed it holds; on resume the
    client asks the session again anyway, so a stale offset costs at most a
    re-send, never a corrupt object.
    """

    upload_id: str
    upload_url: str
    offset: int
    total_size: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "upload_id": self.upload_id,
            "upload_url": self.upload_url,
            "offset": self.offset,
            "total_size": self.total_size,
        }

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> UploadCheckpoint:
        return cls(str(raw["upload_id"]), str(raw["upload_url"]), int(raw["offset"]), int(raw["total_size"]))


@dataclass(frozen=True, slots=True)
class Estimate:
    """Credit cost of a prediction and the organisation's balance, before anything is reserved."""

    patch_count: int
    marker_count: int
    estimated_credits: int
    org_balance: int
    org_pending: int = 0

    @classmethod
    def from_wire(cls, raw: Mapping[str, Any]) -> Estimate:
        return cls(
            patch_count=int(raw["patchCount"]),
            marker_count=int(raw["markerCount"]),
            estimated_credits=int(raw["estimatedCredits"]),
            org_balance=int(raw.get("orgBalance") or 0),
            org_pending=int(raw.get("orgPending") or 0),
        )


@dataclass(frozen=True, slots=True)
class JobStatus:
    """One snapshot of a job. Unknown statuses are kept verbatim; only `is_terminal` interprets them."""

    id: str
    status: str
    progress: float | None = None
    reserved_credits: int | None = None
    markers: tuple[str, ...] = ()
    created_at: datetime | None = None
    started_at: datetime | None = None
    completed_at: datetime | None = None
    error_message: str | None = None
    results_available: bool = False
    model: str | None = None

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @classmethod
    def from_wire(cls, raw: Mapping[str, Any]) -> JobStatus:
        markers = raw.get("markers")
        return cls(
            id=str(raw.get("id") or raw.get("jobId")),
            status=str(raw.get("status") or "unknown"),
            progress=_opt_float(raw, "progress"),
            reserved_credits=_opt_int(raw, "reservedCredits"),
            markers=tuple(str(m) for m in markers) if isinstance(markers, list) else (),
            created_at=_opt_datetime(raw, "createdAt"),
            started_at=_opt_datetime(raw, "startedAt"),
            completed_at=_opt_datetime(raw, "completedAt"),
            error_message=_opt_str(raw, "errorMessage"),
            results_available=bool(raw.get("resultsAvailable")),
            model=_opt_str(raw, "model"),
        )


@dataclass(frozen=True, slots=True)
class JobEvent:
    """One SSE snapshot. The live stream may carry only `{status, progress, resultGcsPath}`; `raw` has all."""

    status: str
    progress: float | None = None
    id: str | None = None
    result_gcs_path: str | None = None
    error_message: str | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False)

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @classmethod
    def from_wire(cls, raw: Mapping[str, Any]) -> JobEvent:
        return cls(
            status=str(raw.get("status") or "unknown"),
            progress=_opt_float(raw, "progress"),
            id=_opt_str(raw, "id"),
            result_gcs_path=_opt_str(raw, "resultGcsPath"),
            error_message=_opt_str(raw, "errorMessage"),
            raw=dict(raw),
        )


@dataclass(frozen=True, slots=True)
class ResultsLocation:
    """`GET /jobs/{id}/results`: a signed URL for clients with GCS access; we read via the file proxy."""

    result_url: str
    result_base_path: str | None
    expires_at: datetime | None

    @classmethod
    def from_wire(cls, raw: Mapping[str, Any]) -> ResultsLocation:
        return cls(str(raw["resultUrl"]), _opt_str(raw, "resultBasePath"), _opt_datetime(raw, "expiresAt"))
