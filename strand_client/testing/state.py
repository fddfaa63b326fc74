"""The fake platform's state: one organisation, its credits, uploads and jobs, behind one lock.

Jobs advance lazily from the clock (each read brings a job up to date), so
nothing runs in the background and tests control timing entirely through
`FakeOptions` or `FakeState.advance`.
"""

from __future__ import annotations

import hashlib
import math
import secrets
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from strand_client._models import TERMINAL_STATUSES

DEFAULT_API_KEY = "sk-strand-fake-0123456789abcdef"
DEFAULT_CATALOG = (
    "CD3", "CD4", "CD8", "CD20", "CD45", "CD68", "CD163", "FOXP3",
    "Ki67", "PanCK", "PD-L1", "PD-1", "SMA", "Vimentin", "HER2", "ER",
)  # fmt: skip
DEFAULT_PUBLIC_PANEL = frozenset({"CD3", "CD8", "CD20", "CD45", "PanCK", "Ki67"})
MODELS = ("v0.4", "v0.5", "v0.7")


@dataclass
class FakeOptions:
    """How the fake behaves. Read live, so a test may change a field while the server runs."""

    org_balance: int = 10_000
    max_concurrent_jobs: int = 4
    concurrency_retry_after: int = 2
    catalog: tuple[str, ...] = DEFAULT_CATALOG
    public_panel: frozenset[str] = DEFAULT_PUBLIC_PANEL
    entitled_markers: frozenset[str] | None = None  # None: the whole catalog
    default_model: str = "v0.7"
    queue_seconds: float = 0.0
    job_duration: float | None = 1.0  # None: jobs stay queued until `advance`
    progress_step: float = 0.25
    heartbeat_interval: float = 15.0
    sse_tick: float = 0.05
    preprocess_seconds: float = 0.0
    stub_dimensions: tuple[int, int] = (40_960, 32_768)  # (width, height) when the file is no TIFF
    patch_size: int = 1024
    patches_per_credit: int = 50
    results_shape: tuple[int, int] = (256, 320)  # (height, width) of a marker map
    results_layout: str = "sharded"
    results_dtype: str = "float32"
    results_tissue_mode: str = "nan"
    results_microns_per_pixel: float | None = None
    results_missing_datasets: tuple[str, ...] = ()
    # Result geometry, written as OME-Zarr writers do (see `zarr_results.build_results`).
    results_units: str | None = "micrometer"  # or "nanometer", "millimeter", None (unit-less scales)
    results_slide_mpp: float = 0.5  # the slide's µm per pixel the physical scales are computed from
    results_translation: tuple[float, float] = (0.0, 0.0)  # (y, x) slide pixels where the map starts
    results_pad_to_shards: bool = False
    results_level_rounding: str = "ceil"
    results_split_transforms: bool = False
    results_chunk: int = 256
    results_chunks_per_shard: int = 8

    def entitled(self) -> frozenset[str]:
        return frozenset(self.catalog) if self.entitled_markers is None else self.entitled_markers


@dataclass
class Stats:
    """Counters tests read to prove "exactly once" and "nothing re-sent"."""

    upload_sessions_opened: int = 0
    uploads_completed: int = 0
    bytes_received: int = 0
    put_requests: int = 0
    submits_accepted: int = 0
    submits_rejected: int = 0
    cancels: int = 0
    sse_connections: int = 0


@dataclass
class UploadRecord:
    id: str
    filename: str
    file_size: int
    content_type: str
    content_sha256: str | None
    path: Path
    created_at: datetime
    status: str = "uploading"
    width_px: int | None = None
    height_px: int | None = None
    dimensions_source: str | None = None
    ready_at: float | None = None

    @property
    def gcs_path(self) -> str:
        return f"gs://strand-fake-uploads/{self.id}"

    def to_wire(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "uploadId": self.id,
            "filename": self.filename,
            "fileSize": self.file_size,
            "contentType": self.content_type,
            "status": self.status,
            "widthPx": self.width_px,
            "heightPx": self.height_px,
            "dimensionsSource": self.dimensions_source,
            "gcsPath": self.gcs_path,
            "createdAt": _iso(self.created_at),
        }


@dataclass
class Session:
    """A GCS resumable session: bytes persisted so far, and a running hash when one was declared."""

    token: str
    upload_id: str
    persisted: int = 0
    finalized: bool = False
    hasher: Any = None


@dataclass
class Outcome:
    status: str = "completed"
    message: str | None = None
    missing: tuple[str, ...] = ()


@dataclass
class JobRecord:
    id: str
    upload_id: str
    markers: tuple[str, ...]
    model: str
    reserved_credits: int
    seq: int
    outcome: Outcome
    created_at: datetime
    created_mono: float
    status: str = "queued"
    progress: float = 0.0
    started_at: datetime | None = None
    completed_at: datetime | None = None
    error_message: str | None = None
    charged: int = 0
    manual: bool = False

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @property
    def has_results(self) -> bool:
        return self.status in ("completed", "partial_failed")

    @property
    def delivered(self) -> tuple[str, ...]:
        return tuple(m for m in self.markers if m not in self.outcome.missing)

    def to_wire(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "uploadId": self.upload_id,
            "status": self.status,
            "progress": self.progress,
            "reservedCredits": self.reserved_credits,
            "markers": list(self.markers),
            "model": self.model,
            "createdAt": _iso(self.created_at),
            "startedAt": _iso(self.started_at),
            "completedAt": _iso(self.completed_at),
            "errorMessage": self.error_message,
            "resultsAvailable": self.has_results,
            "resultGcsPath": f"gs://strand-fake-results/{self.id}/" if self.has_results else None,
        }


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat().replace("+00:00", "Z")


def _now() -> datetime:
    return datetime.now(UTC)


class FakeState:
    """Everything the fake knows; every method takes the lock, so HTTP threads and tests can share it."""

    def __init__(self, options: FakeOptions, storage_dir: Path) -> None:
        self.options = options
        self.storage_dir = storage_dir
        self.lock = threading.RLock()
        self.stats = Stats()
        self.balance = options.org_balance
        self.uploads: dict[str, UploadRecord] = {}
        self.sessions: dict[str, Session] = {}
        self.jobs: dict[str, JobRecord] = {}
        self._next_outcomes: list[Outcome] = []

    # ---------- uploads ----------

    def find_by_hash(self, sha256: str) -> UploadRecord | None:
        with self.lock:
            for upload in self.uploads.values():
                self._promote(upload)
                if upload.content_sha256 == sha256 and upload.status in ("preprocessing", "ready"):
                    return upload
            return None

    def open_upload(
        self, filename: str, size: int, content_type: str, sha256: str | None
    ) -> tuple[UploadRecord, Session]:
        with self.lock:
            upload_id = str(uuid.uuid4())
            upload = UploadRecord(
                id=upload_id,
                filename=filename,
                file_size=size,
                content_type=content_type,
                content_sha256=sha256,
                path=self.storage_dir / f"{upload_id}.bin",
                created_at=_now(),
            )
            upload.path.touch()
            session = Session(secrets.token_urlsafe(32), upload_id)
            if sha256 is not None:
                session.hasher = hashlib.sha256()
            self.uploads[upload_id] = upload
            self.sessions[session.token] = session
            self.stats.upload_sessions_opened += 1
            return upload, session

    def upload(self, upload_id: str) -> UploadRecord | None:
        with self.lock:
            upload = self.uploads.get(upload_id)
            if upload is not None:
                self._promote(upload)
            return upload

    def finalize(self, session: Session, dimensions: tuple[int, int, str] | None) -> None:
        """All declared bytes arrived: the platform ingests the object even if nobody calls `complete`."""
        with self.lock:
            session.finalized = True
            upload = self.uploads[session.upload_id]
            self.stats.uploads_completed += 1
            digest = session.hasher.hexdigest() if session.hasher is not None else None
            if session.persisted != upload.file_size or (digest and digest != upload.content_sha256):
                upload.status = "upload_failed"
                return
            width, height, source = dimensions or (*self.options.stub_dimensions, "stub")
            upload.width_px, upload.height_px, upload.dimensions_source = width, height, source
            upload.status = "preprocessing"
            upload.ready_at = time.monotonic() + self.options.preprocess_seconds
            self._promote(upload)

    def mark_ready(self, upload: UploadRecord) -> None:
        with self.lock:
            upload.status = "ready"

    def _promote(self, upload: UploadRecord) -> None:
        if (
            upload.status == "preprocessing"
            and upload.ready_at is not None
            and time.monotonic() >= upload.ready_at
        ):
            upload.status = "ready"

    # ---------- credits ----------

    def pending(self) -> int:
        with self.lock:
            return sum(job.reserved_credits for job in self._all_jobs() if not job.terminal)

    def estimate(self, upload: UploadRecord, marker_count: int) -> dict[str, int]:
        """The cost model: patches of the slide times markers, rounded up to whole credits."""
        assert upload.width_px is not None and upload.height_px is not None
        size = self.options.patch_size
        patches = math.ceil(upload.width_px / size) * math.ceil(upload.height_px / size)
        credits = max(1, math.ceil(patches * marker_count / self.options.patches_per_credit))
        return {
            "patchCount": patches,
            "markerCount": marker_count,
            "estimatedCredits": credits,
            "orgBalance": self.balance,
            "orgPending": self.pending(),
        }

    # ---------- jobs ----------

    def queue_outcome(self, outcome: Outcome) -> None:
        with self.lock:
            self._next_outcomes.append(outcome)

    def active_jobs(self) -> int:
        with self.lock:
            return sum(1 for job in self._all_jobs() if not job.terminal)

    def create_job(self, upload_id: str, markers: tuple[str, ...], model: str, credits: int) -> JobRecord:
        with self.lock:
            outcome = self._next_outcomes.pop(0) if self._next_outcomes else Outcome()
            job = JobRecord(
                id=str(uuid.uuid4()),
                upload_id=upload_id,
                markers=markers,
                model=model,
                reserved_credits=credits,
                seq=len(self.jobs),
                outcome=outcome,
                created_at=_now(),
                created_mono=time.monotonic(),
            )
            self.jobs[job.id] = job
            self.stats.submits_accepted += 1
            return job

    def job(self, job_id: str) -> JobRecord | None:
        with self.lock:
            job = self.jobs.get(job_id)
            if job is not None:
                self._tick(job)
            return job

    def job_wire(self, job_id: str) -> dict[str, Any] | None:
        with self.lock:
            job = self.job(job_id)
            return None if job is None else job.to_wire()

    def jobs_for_upload(self, upload_id: str) -> list[JobRecord]:
        with self.lock:
            jobs = [job for job in self._all_jobs() if job.upload_id == upload_id]
            return sorted(jobs, key=lambda j: j.seq, reverse=True)

    def cancel(self, job: JobRecord) -> None:
        with self.lock:
            self._finish(job, "cancelled", None)
            self.stats.cancels += 1

    def advance(self, job_id: str, status: str, progress: float | None, error_message: str | None) -> None:
        """Put a job into any state by hand; its clock stops."""
        with self.lock:
            job = self.jobs[job_id]
            self._tick(job)
            job.manual = True
            if status in TERMINAL_STATUSES:
                if status == "partial_failed" and not job.outcome.missing:
                    job.outcome = Outcome("partial_failed", error_message, job.markers[-1:])
                self._finish(job, status, error_message)
                return
            job.status = status
            if status == "running" and job.started_at is None:
                job.started_at = _now()
            if progress is not None:
                job.progress = progress

    def _all_jobs(self) -> list[JobRecord]:
        for job in self.jobs.values():
            self._tick(job)
        return list(self.jobs.values())

    def _tick(self, job: JobRecord) -> None:
        """Bring a clock-driven job up to date: queued, running with stepped progress, then its outcome."""
        duration = self.options.job_duration
        if job.manual or job.terminal or duration is None:
            return
        elapsed = time.monotonic() - job.created_mono - self.options.queue_seconds
        if elapsed < 0:
            return
        if job.started_at is None:
            job.status, job.started_at = "running", _now()
        fraction = elapsed / duration if duration > 0 else 1.0
        if fraction >= 1.0:
            self._finish(job, job.outcome.status, job.outcome.message)
            return
        step = self.options.progress_step
        job.progress = math.floor(fraction / step) * step if step > 0 else fraction

    def _finish(self, job: JobRecord, status: str, message: str | None) -> None:
        """Settle the reservation: charge what was delivered, refund the rest."""
        job.status = status
        job.completed_at = _now()
        if job.has_results:
            job.progress = 1.0
        if status == "completed":
            job.charged = job.reserved_credits
        elif status == "partial_failed":
            job.charged = job.reserved_credits * len(job.delivered) // max(1, len(job.markers))
            missing = ", ".join(job.outcome.missing)
            job.error_message = message or f"Prediction failed for {missing} after retries"
        elif status == "failed":
            job.error_message = message or "Inference failed"
        self.balance -= job.charged
