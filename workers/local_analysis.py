"""One local slide through a run's steps, for research: no Redis, no Sectra, the pipeline's own code.

`analyse_slide` de-identifies and verifies a private copy (`workers.deidentify`,
failing closed, as the pipeline's stage does), reads where its level 0 lies with
OpenSlide (a reader not ours, and QuPath's for these formats), has
`workers.local_strand` upload it, price it, submit it and follow the job, then
summarises the job's maps with `workers.summarise.summarise_job` exactly as the
pipeline's summary stage calls it. It returns the summary document and the
GeoJSON (`workers.geojson`); the caller decides where they go.

The de-identified copy is byte-identical from one call to the next (fixed neutral
name, idempotent edits), so its SHA-256 keys the resume state: a second call on
the same file finds its upload and job.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import shutil
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from strand_client import Client, Job, JobStatus, StrandError
from workers import local_strand, messages
from workers.apps import AppConfig
from workers.deidentify import (
    DeidentificationError,
    deidentify_slide,
    identifiers_from_metadata,
    verify_deidentified,
)
from workers.geojson import feature_collection
from workers.local_strand import JobProgress, SlideNotAnalysed, SlideState, UploadProgress
from workers.summarise import summarise_job
from workers.summary_record import StoredSummary

STATE_DIR = ".sectra-bridge"
COORDINATES = "level-0 slide pixels, origin top-left, y down"
_SAFE = re.compile(r"[^A-Za-z0-9_.-]")
_HASH_BLOCK = 4 * 1024 * 1024


class Hooks(Protocol):
    """What the caller (a CLI) provides: where words go, who says yes, how progress is shown."""

    def echo(self, line: str) -> None: ...

    def confirm(self, estimated: int, ceiling: int) -> bool: ...

    def upload_progress(self, total: int) -> AbstractContextManager[UploadProgress]: ...

    def job_progress(self, job_id: str) -> AbstractContextManager[JobProgress]: ...


@dataclass(frozen=True)
class SlideGeometry:
    """Level 0 of the slide: the pixels hotspot boxes are given in."""

    width: int
    height: int
    microns_per_pixel: float  # 0.0 when the file does not say


@dataclass(frozen=True)
class Prepared:
    """The de-identified copy, what was removed from it, and where its results lie on the slide."""

    path: Path
    sha256: str
    geometry: SlideGeometry
    report: dict[str, Any]


@dataclass(frozen=True)
class Analysis:
    summary: dict[str, Any]  # the figures, the Strand ids, the slide's geometry and de-identification
    geojson: dict[str, Any]  # RFC 7946 FeatureCollection, level-0 slide pixels
    job_id: str


def analyse_slide(
    source: Path, app: AppConfig, strand: Client, work_dir: Path, hooks: Hooks, *, timeout: float
) -> Analysis:
    """One slide, from its file to its figures. `work_dir` holds the resume state and the private staging.

    Raises SlideNotAnalysed with the reason in plain words.
    """
    staging = work_dir / f".staging-{secrets.token_hex(8)}"
    staging.mkdir(mode=0o700)
    try:
        prepared = prepare(source, staging)
        hooks.echo(
            f"{prepared.report['format']}: de-identified and verified "
            f"(removed {', '.join(prepared.report['removed_images']) or 'nothing'})"
        )
        (work_dir / STATE_DIR).mkdir(mode=0o700, exist_ok=True)
        state_path = work_dir / STATE_DIR / f"{prepared.sha256}-{_SAFE.sub('_', app.id)}.json"
        state = SlideState.load(state_path, prepared.sha256, app.id)
        try:
            with hooks.upload_progress(prepared.path.stat().st_size) as progress:
                upload_id = local_strand.upload(strand, state, prepared.path, progress, hooks.echo)
        except StrandError as exc:
            raise _strand_failed(exc) from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # the de-identified copy too: Strand holds it now
    try:
        job = local_strand.submitted_job(strand, app, state, upload_id, hooks.confirm, hooks.echo)
        with hooks.job_progress(job.id) as on_event:
            status = local_strand.follow(job, timeout, on_event)
        if status.status in ("failed", "cancelled"):
            local_strand.forget_job(state)
            detail = f": {status.error_message}" if status.error_message else ""
            raise SlideNotAnalysed(
                f"the Strand job {status.status}{detail}; run again to submit a new one", "failed"
            )
        stored = summarise(job, status, app, prepared.geometry)
    except StrandError as exc:
        raise _strand_failed(exc) from exc
    mpp = prepared.geometry.microns_per_pixel or None
    return Analysis(
        summary=summary_document(app, prepared, upload_id, job, status, stored),
        geojson=feature_collection(stored.markers, microns_per_pixel=mpp),
        job_id=job.id,
    )


def _strand_failed(exc: StrandError) -> SlideNotAnalysed:
    # Strand's own words; every request carried neutral names only, so they hold nothing identifying.
    return SlideNotAnalysed(f"Strand: {exc}", "failed")


def prepare(source: Path, staging: Path) -> Prepared:
    """De-identify and verify a private copy (never the original), as the pipeline's stage does."""
    copy = staging / "in" / source.name
    copy.parent.mkdir(mode=0o700)
    shutil.copyfile(source, copy)  # contents only: no times, no owner
    try:
        # A fixed neutral name: it is all Strand sees, and the output stays byte-identical run to run.
        files, report = deidentify_slide([copy], run_id="slide", out_dir=staging / "out")
        verify_deidentified(files, identifiers=identifiers_from_metadata({}, [source.name]))
    except DeidentificationError as exc:  # names fields and formats, never values
        raise SlideNotAnalysed(str(exc)) from exc
    except Exception as exc:  # a reader's message may quote a path or a value: its kind only
        raise SlideNotAnalysed(f"the slide could not be read or written ({type(exc).__name__})") from exc
    if len(files) != 1:
        raise SlideNotAnalysed(f"a slide of {len(files)} files cannot be analysed from here; pass one file")
    path = files[0]
    return Prepared(
        path=path,
        sha256=_sha256(path),
        geometry=slide_geometry(path),
        report={
            "format": report.format,
            "removed_images": report.removed_images,
            "blanked_fields": report.blanked_fields,
        },
    )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as source:
        while block := source.read(_HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def slide_geometry(path: Path) -> SlideGeometry:
    """Level-0 size and µm per pixel as OpenSlide reads them (the pixels QuPath's coordinates count)."""
    import openslide

    try:
        with openslide.OpenSlide(str(path)) as slide:
            width, height = slide.dimensions
            mpp = [slide.properties.get(f"openslide.mpp-{axis}") for axis in ("x", "y")]
    except openslide.OpenSlideError as exc:
        raise SlideNotAnalysed(
            f"OpenSlide cannot read the de-identified slide ({type(exc).__name__})"
        ) from exc
    known = [float(value) for value in mpp if value]
    return SlideGeometry(int(width), int(height), sum(known) / len(known) if known else 0.0)


def summarise(job: Job, status: JobStatus, app: AppConfig, geometry: SlideGeometry) -> StoredSummary:
    """The job's maps reduced as the pipeline's summary stage reduces them (same call, same words)."""
    with job.results() as results:
        summaries, missing, _grids = summarise_job(
            results,
            app.markers,
            threshold=app.positivity_threshold,
            slide_width=geometry.width,
            slide_height=geometry.height,
            microns_per_pixel=geometry.microns_per_pixel,
        )
    if status.status == "partial_failed":
        delivered = {s.marker for s in summaries}
        detail = f" ({status.error_message})" if status.error_message else ""
        for marker in app.markers:
            if marker not in delivered:
                missing[marker] = messages.partially_delivered([marker]) + detail
    return StoredSummary(markers=summaries, missing=missing, job_error=status.error_message)


def summary_document(
    app: AppConfig, prepared: Prepared, upload_id: str, job: Job, status: JobStatus, stored: StoredSummary
) -> dict[str, Any]:
    """`<name>.summary.json`: the run record's summary, with what it needs to be read on its own."""
    geometry = prepared.geometry
    return {
        "app": {"id": app.id, "version": app.version, "markers": app.markers},
        "threshold": app.positivity_threshold,
        "strand": {"upload_id": upload_id, "job_id": job.id, "status": status.status, "model": status.model},
        "slide": {
            "sha256": prepared.sha256,
            "width_px": geometry.width,
            "height_px": geometry.height,
            "microns_per_pixel": geometry.microns_per_pixel or None,
            "coordinates": COORDINATES,
        },
        "deidentification": prepared.report,
        "summary": stored.to_record(),
    }
