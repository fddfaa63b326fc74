"""A marker's figures again, without the hotspots the pathologist tagged as artefact.

The hotspot review (issue 16, item 4) must not ask Strand for anything: the figures are
recomputed from the run's density grid (`workers.grid.DensityGrid`). A hotspot box is a
whole window of grid cells, so leaving out every cell whose centre lies in a box removes
exactly the box's map pixels, and the recomputed fraction, areas and mean are exact.

What can and cannot be recomputed:
- positive_fraction, positive_area_mm2, tissue_area_mm2, mean: from the cells left;
- p50 / p90 / p99: not from counts (they need the value histogram of what is left), so they
  are kept as they were; the result says "percentiles before review";
- per-region figures (`MarkerSummary.regions`): one grid covers all regions together and a
  cell may straddle two of them, so they are kept, except for a single region, whose figures
  are the overall ones;
- hotspots: the excluded ones are dropped from `hotspots`, the rest kept as they were.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from sectra_adapter import AreaFigures, Hotspot, MarkerSummary
from workers import messages
from workers.grid import DensityGrid

EVERYTHING_EXCLUDED = messages.review_nothing_left()


class NothingLeftError(ValueError):
    """The excluded boxes cover every tissue cell; the message is in plain words for the pathologist."""

    def __init__(self, marker: str) -> None:
        super().__init__(EVERYTHING_EXCLUDED)
        self.marker = marker


def excluded_cells(grid: DensityGrid, boxes: Sequence[Hotspot]) -> np.ndarray:
    """Bool [rows, cols]: the cells whose centre lies in any box (x <= cx < x + width, same for y).

    The centre of a cell cut short by the grid's extent is the centre of what is left of it.
    """
    rows, cols = grid.tissue.shape
    cx = _centres(cols, grid.origin[0], grid.cell[0], grid.extent[0])
    cy = _centres(rows, grid.origin[1], grid.cell[1], grid.extent[1])
    out = np.zeros((rows, cols), dtype=bool)
    for box in boxes:
        in_x = (cx >= box.x) & (cx < box.x + box.width)
        in_y = (cy >= box.y) & (cy < box.y + box.height)
        out |= np.outer(in_y, in_x)
    return out


def grid_without(grid: DensityGrid, boxes: Sequence[Hotspot]) -> DensityGrid:
    """`grid` with the cells inside `boxes` emptied (no tissue), so bands drawn from it leave them out."""
    gone = excluded_cells(grid, boxes)
    if not gone.any():
        return grid
    return replace(
        grid,
        positive=np.where(gone, 0, grid.positive),
        tissue=np.where(gone, 0, grid.tissue),
        value_sum=np.where(gone, 0.0, grid.value_sum),
    )


def figures_without(summary: MarkerSummary, grid: DensityGrid, boxes: Sequence[Hotspot]) -> MarkerSummary:
    """`summary` recomputed from `grid` without the cells inside `boxes`.

    Raises NothingLeftError (a ValueError) when no tissue is left. An unknown pixel size
    (`grid.pixel_mm2` NaN) is taken from the summary's own tissue area over the grid's tissue
    pixels when that is known; otherwise the areas stay NaN, as they were.
    """
    if grid.marker != summary.marker:
        raise ValueError(f"grid of {grid.marker!r} does not belong to marker {summary.marker!r}")
    keep = ~excluded_cells(grid, boxes)
    tissue_px = int(grid.tissue[keep].sum())
    if tissue_px == 0:
        raise NothingLeftError(summary.marker)
    positive_px = int(grid.positive[keep].sum())
    pixel_mm2 = _pixel_mm2(summary, grid)
    fraction = positive_px / tissue_px
    figures = AreaFigures(
        positive_fraction=fraction,
        positive_area_mm2=positive_px * pixel_mm2,
        tissue_area_mm2=tissue_px * pixel_mm2,
    )
    dropped = {_box(b) for b in boxes}
    regions = [figures] if len(summary.regions) == 1 else list(summary.regions)
    return replace(
        summary,
        positive_fraction=figures.positive_fraction,
        positive_area_mm2=figures.positive_area_mm2,
        tissue_area_mm2=figures.tissue_area_mm2,
        mean=float(grid.value_sum[keep].sum()) / tissue_px,
        hotspots=[h for h in summary.hotspots if _box(h) not in dropped],
        regions=regions,
    )


def _centres(n: int, start: float, size: float, extent: float) -> np.ndarray:
    """Centre of each cell along one axis; a last cell cut short by the extent is centred on what is left.

    Hotspot boxes are clipped to the slide, so the cut-short cell at its edge must be judged
    by the part of it that lies on the slide.
    """
    lo = np.arange(n) * size
    hi = np.minimum(lo + size, extent)
    hi = np.where(hi > lo, hi, lo + size)  # an extent shorter than the cells: whole cells
    centres: np.ndarray = start + (lo + hi) / 2
    return centres


def _pixel_mm2(summary: MarkerSummary, grid: DensityGrid) -> float:
    if math.isfinite(grid.pixel_mm2):
        return grid.pixel_mm2
    total = int(grid.tissue.sum())
    if total > 0 and math.isfinite(summary.tissue_area_mm2):
        return summary.tissue_area_mm2 / total
    return math.nan


def _box(hotspot: Hotspot) -> tuple[int, int, int, int]:
    return (hotspot.x, hotspot.y, hotspot.width, hotspot.height)
