"""Plain data the pipeline hands to the result builder: what Strand found, per marker.

These are the only types `workers` and `sectra_adapter` share, so they stay
dependency-free dataclasses.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Point = tuple[float, float]  # (x, y) in level-0 slide pixels
Overlay = Literal["hotspots", "bands", "both"]


@dataclass(frozen=True, slots=True)
class Hotspot:
    """A window of densely positive tissue, as a box in level-0 slide pixels."""

    x: int
    y: int
    width: int
    height: int
    positive_fraction: float


@dataclass(frozen=True, slots=True)
class Region:
    """An area the pathologist drew in Sectra (`taggedPolygon` or one of `multiArea`'s polygons).

    `points` are the outline's corners in level-0 slide pixels, in drawing order and not closed
    (Sectra's normalised coordinates are converted once, by `workers.regions`). `tag` is the tag
    the pathologist chose (`taggedPolygon` only).
    """

    points: tuple[Point, ...]
    tag: str | None = None


@dataclass(frozen=True, slots=True)
class AreaFigures:
    """One marker's figures over the tissue of one drawn region."""

    positive_fraction: float
    positive_area_mm2: float
    tissue_area_mm2: float


@dataclass(frozen=True, slots=True)
class Band:
    """Where one marker's positive density (positive / tissue pixels) is at least `level`.

    `polygons` are simple closed rings in level-0 slide pixels (not repeating the first point);
    a hole is joined to its outer ring by a zero-width cut, so each ring fills correctly alone.
    """

    level: float
    polygons: tuple[tuple[Point, ...], ...]


@dataclass(frozen=True, slots=True)
class MarkerOverlay:
    """What is drawn for one marker besides its hotspots: nested density bands and the threshold line.

    `bands` ascend by level (each lies inside the one before); `threshold_lines` are polylines
    where the mean predicted expression crosses the app's positivity threshold.
    """

    marker: str
    bands: tuple[Band, ...] = ()
    threshold_lines: tuple[tuple[Point, ...], ...] = ()


@dataclass(frozen=True, slots=True)
class ReusedJob:
    """The earlier Strand job whose results a run read instead of submitting a new one."""

    job_id: str
    completed_at: float  # Unix time the job's run completed


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
    # One entry per `RunSummary.regions`, in that order; the fields above are then over all regions
    # together (a pixel in two overlapping regions counts once). Empty for a whole-slide run.
    regions: list[AreaFigures] = field(default_factory=list)


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
    # The drawn regions the figures are over; empty = the whole slide.
    regions: list[Region] = field(default_factory=list)
    # What the app draws: hotspot rectangles, density bands, or both (`AppConfig.overlay`).
    overlay: Overlay = "both"
    overlays: list[MarkerOverlay] = field(default_factory=list)
    # Set when the figures come from an earlier job's results (no new Strand job, no credits).
    reused_job: ReusedJob | None = None
    # Hotspots the pathologist tagged Artefact in the review; the figures above already exclude them.
    excluded_hotspots: list[Hotspot] = field(default_factory=list)
