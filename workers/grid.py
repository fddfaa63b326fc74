"""A marker's density grid: per-cell counts over the slide, kept with the run after its summary.

The summariser already folds every map pixel into a coarse grid of cells (the
hotspot search runs on it). Kept with the run, that grid is what the density
bands are drawn from and what a hotspot review recomputes the figures from,
without reading the maps again or asking Strand for anything.

A hotspot box is a whole window of cells, so a figure recomputed without it
from the grid is exact, not an approximation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class DensityGrid:
    """One marker's counts per grid cell over the analysed area (the slide, or the drawn regions).

    Cell (row i, column j) covers level-0 slide pixels x in [origin_x + j * cell_w, +cell_w),
    y in [origin_y + i * cell_h, +cell_h), cut short at `extent` (the map's edge over the slide).
    """

    marker: str
    origin: tuple[float, float]  # (x, y) of cell (0, 0)'s top-left corner, level-0 slide pixels
    cell: tuple[float, float]  # (width, height) of one cell, level-0 slide pixels
    extent: tuple[float, float]  # (width, height) the grid covers from `origin`, level-0 slide pixels
    pixel_mm2: float  # area of one map pixel; NaN when the slide's pixel size is unknown
    positive: np.ndarray  # int64 [rows, cols]: positive tissue map pixels per cell
    tissue: np.ndarray  # int64 [rows, cols]: tissue map pixels per cell
    value_sum: np.ndarray  # float64 [rows, cols]: sum of normalised values over the cell's tissue
