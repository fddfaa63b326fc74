"""The summary as the run record keeps it, and the `RunSummary` the result builder gets from it.

One pydantic model writes and reads it (pydantic validates the shared
dataclasses field by field, nested hotspots included), so what the summarising
step stores and what the publishing step rebuilds cannot drift apart.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from sectra_adapter import MarkerSummary, RunSummary
from workers.apps import AppConfig
from workers.runstore import RunRecord


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


def run_summary(record: RunRecord, app: AppConfig) -> RunSummary:
    """What the final Sectra result shows, from a run whose summary is stored."""
    assert record.summary is not None and record.job_id is not None
    stored = StoredSummary.from_record(record.summary)
    return RunSummary(
        slide_id=record.slide_id,
        slide_width=record.slide_width or 1,
        slide_height=record.slide_height or 1,
        markers=stored.markers,
        job_id=record.job_id,
        app_version=app.version,
        threshold=app.positivity_threshold,
        credits=record.reserved_credits,
        model=record.model,
        missing_markers=dict(stored.missing),
    )
