"""The summary as the run record keeps it, and the `RunSummary` the result builder gets from it.

One pydantic model writes and reads it (pydantic validates the shared
dataclasses field by field, nested hotspots included), so what the summarising
step stores and what the publishing step rebuilds cannot drift apart.
"""

from __future__ import annotations

import logging
from typing import Any

from pydantic import BaseModel, Field

from sectra_adapter import MarkerOverlay, MarkerSummary, Region, ReusedJob, RunSummary
from workers.apps import AppConfig
from workers.bands import overlays_for
from workers.grid import grids_from_bytes
from workers.regions import regions_from_input
from workers.runstore import GRIDS_BLOB, RunRecord, RunStore

log = logging.getLogger(__name__)


class StoredSummary(BaseModel):
    """`RunRecord.summary`: each delivered marker's figures, and the reason each missing one is absent."""

    markers: list[MarkerSummary]
    missing: dict[str, str] = Field(default_factory=dict)
    job_error: str | None = None

    def to_record(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    @classmethod
    def from_record(cls, raw: dict[str, Any]) -> StoredSummary:
        return cls.model_validate(raw)


def regions_of(record: RunRecord, app: AppConfig) -> list[Region]:
    """The run's drawn regions in level-0 slide pixels; empty for a whole-slide run.

    Converted from the invocation's content as stored (`RunRecord.region_input`) each time it is
    needed: the conversion is pure, so every stage sees the same regions. Needs the slide's size,
    which the `downloading` stage stores first. Raises `RunRefused` (plain words) for a bad region.
    """
    if record.input_type == "wholeSlide" or record.region_input is None:
        return []
    return regions_from_input(
        record.region_input,
        slide_width=record.slide_width or 0,
        slide_height=record.slide_height or 0,
        tags=app.tags,
    )


def reused_job_of(record: RunRecord) -> ReusedJob | None:
    """The earlier job whose results the run read, when it read an earlier job's results."""
    if not record.reused_job:
        return None
    return ReusedJob(
        job_id=str(record.reused_job["job_id"]), completed_at=float(record.reused_job["completed_at"])
    )


def overlays_of(store: RunStore, record: RunRecord, app: AppConfig) -> list[MarkerOverlay]:
    """The density bands drawn per marker, from the grids the summary stage kept with the run.

    Empty when the app draws hotspots only, or when the grids are gone (a run summarised before
    grids were kept): the result then shows the figures and hotspots without bands.
    """
    if app.overlay == "hotspots":
        return []
    raw = store.get_blob(record.run_id, GRIDS_BLOB)
    if raw is None:
        log.warning("no density grids kept with the run; the result is drawn without bands")
        return []
    return list(overlays_for(grids_from_bytes(raw), threshold=app.positivity_threshold))


def run_summary(record: RunRecord, app: AppConfig, store: RunStore | None = None) -> RunSummary:
    """What the final Sectra result shows, from a run whose summary is stored.

    With `store`, the density bands are drawn from the run's kept grids (`overlays_of`); without
    it the summary carries no bands. A run that read an earlier job's results spent no credits.
    """
    assert record.summary is not None and record.job_id is not None
    stored = StoredSummary.from_record(record.summary)
    reused = reused_job_of(record)
    return RunSummary(
        slide_id=record.slide_id,
        slide_width=record.slide_width or 1,
        slide_height=record.slide_height or 1,
        markers=stored.markers,
        job_id=record.job_id,
        app_version=app.version,
        threshold=app.positivity_threshold,
        credits=0 if reused is not None else record.reserved_credits,
        model=record.model,
        missing_markers=dict(stored.missing),
        regions=regions_of(record, app),
        overlay=app.overlay,
        overlays=overlays_of(store, record, app) if store is not None else [],
        reused_job=reused,
    )
