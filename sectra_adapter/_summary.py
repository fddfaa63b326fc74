"""Plain data the pipeline hands to the result builder: what Strand found, per marker.

These are the only types `workers` and `sectra_adapter` share, so they stay
dependency-free dataclasses.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Hotspot:
    """A window of densely positive tissue, as a box in level-0 slide pixels."""

    x: int
    y: int
    width: int
    height: int
    positive_fraction: float


@dataclass(frozen=True, slots=True)
class MarkerSummary:
    """One marker's figures over the tissue of one slide."""

    marker: str
    positive_fraction: float
    positive_area_mm2: float
    tissue_area_mm2: float
    mean: float
    p50: float
    p90: float
    p99: float
    hotspots: list[Hotspot] = field(default_factory=list)
    # Set when the results' geometry metadata contradicted the slide and slide size / map size was
    # used instead: both figures, in plain words (DESIGN.md "Strand results", Geometry).
    geometry_mismatch: str | None = None


@dataclass(frozen=True, slots=True)
class RunSummary:
    """Everything the final Sectra result shows for one run."""

    slide_id: str
    slide_width: int
    slide_height: int
    markers: list[MarkerSummary]
    job_id: str
    app_version: str
    threshold: float
    credits: int | None = None
    model: str | None = None
    # marker -> plain-words reason it is absent (partially failed job, unreadable map).
    missing_markers: dict[str, str] = field(default_factory=dict)
