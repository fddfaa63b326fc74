"""A marker on the slide: nested density bands and the threshold line, drawn from its density grid.

The summary grid (`workers.grid.DensityGrid`) holds per cell the positive and the
tissue map pixels; their ratio is the cell's positive density. This module turns
that field into what Sectra draws as translucent polygons:

- Pooling (why): a cell at the tissue's edge may hold a handful of tissue pixels,
  so its density jumps between 0 and 1 on noise. Each tissue cell's density is
  therefore pooled over its 3 x 3 neighbourhood, weighted by tissue
  (sum of positive / sum of tissue pixels over the tissue cells around it); a
  cell without tissue stays empty. `pool=0` turns this off.
- Levels (the rule): the densities of the tissue cells that hold any positive
  pixel are taken at their 50th, 75th, 90th and 97th percentiles, each rounded
  DOWN to a legend-friendly step of `LEVEL_LADDER` (so "at least 10 %", not
  "at least 13.7 %"); repeated steps collapse, and a level that fewer than
  `MIN_BAND_CELLS` cells reach is dropped. A low-expressing marker therefore
  still shows bands at 1 % or 2 %, and a flat field shows one or none (there is
  nothing to contour). Explicit `levels` are used as given.
- Polygons: contourpy's filled contours of the pooled density between a level
  and +inf, on the cell centres in level-0 slide pixels, with the grid's outer
  edge as a density-0 border, so a cell at or above the level has its centre
  inside its band and a cell below it has its centre outside. Each outer ring
  and its holes become ONE ring joined by zero-width cuts, so a renderer that
  fills ring by ring leaves the holes open.
- Points: rings and lines are simplified with shapely (Douglas-Peucker; where
  that breaks a polygon, GEOS's topology-keeping variant), the tolerance raised
  step by step until the marker's total points fit `max_points` (threshold
  lines get at most `LINE_SHARE` of them). Rings smaller than `MIN_RING_CELLS`
  cells, or than (2 x tolerance)^2, and lines shorter than two cells, or than
  4 x tolerance, are left out; so are rings beyond the largest budget / 3 (each
  costs at least three points). If even the coarsest step is too many points,
  the smallest polygons and shortest lines go first. Rings are always given up
  smallest first, and a band's polygon is never larger than the one below it
  that holds it, so the bands stay nested (to within the simplification).
- Threshold lines: contour lines of the pooled mean expression
  (value_sum / tissue) at the app's positivity threshold, over tissue only.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from typing import Any, cast

import numpy as np
import shapely
from contourpy import FillType, LineType, contour_generator

from sectra_adapter import Band, MarkerOverlay

from .grid import DensityGrid

LEVEL_LADDER = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
LEVEL_QUANTILES = (0.5, 0.75, 0.9, 0.97)
MAX_BANDS = 4
MIN_BAND_CELLS = 3  # a band must hold at least this many tissue cells
MIN_RING_CELLS = 2.0  # rings with a smaller area (in cells) are left out: specks, not structure
MIN_LINE_CELLS = 2.0  # threshold lines shorter than this (in cell sides) are left out
# Coarser simplification steps also leave out rings under (2 x tolerance)^2 and lines under
# 4 x tolerance: at that tolerance they could not be drawn faithfully anyway.
LINE_SHARE = 0.25  # at most this share of a marker's points goes to its threshold lines
# Simplification tolerances tried in turn, in cell sides (0 = only collinear points removed).
_TOLERANCES = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0)
_EPS = 1e-9  # contours are drawn just below a level, so a cell exactly at it is inside its band

Ring = tuple[tuple[float, float], ...]


def marker_overlay(
    grid: DensityGrid,
    *,
    threshold: float,
    levels: Sequence[float] | None = None,
    max_points: int = 1500,
    pool: int = 1,
) -> MarkerOverlay:
    """Bands and threshold lines for one marker, at most `max_points` points in all."""
    if max_points < 0:
        raise ValueError("max_points must not be negative")
    if levels is not None and not all(0 < level <= 1 for level in levels):
        raise ValueError(f"band levels {list(levels)} must be densities in (0, 1]")
    tissue = grid.tissue > 0
    if not np.any(tissue):
        return MarkerOverlay(marker=grid.marker)
    density, mean = pooled_fields(grid, pool)
    chosen = sorted(set(levels)) if levels is not None else choose_levels(density[tissue])
    xs, ys = _centres(grid)
    line_budget = int(max_points * LINE_SHARE)
    lines = _threshold_lines(mean, tissue, xs, ys, threshold, grid.cell, line_budget)
    used = sum(len(line) for line in lines)
    bands = _bands(density, tissue, xs, ys, chosen, grid.cell, max_points - used)
    return MarkerOverlay(marker=grid.marker, bands=bands, threshold_lines=lines)


def overlays_for(
    grids: Mapping[str, DensityGrid],
    *,
    threshold: float,
    max_points_total: int = 6000,
    pool: int = 1,
) -> list[MarkerOverlay]:
    """One overlay per marker, in the mapping's order, the point budget split evenly between them.

    An even split keeps every marker legible; a marker that needs fewer points leaves its
    share unused rather than redrawing the others (the total is a ceiling, not a target).
    """
    if not grids:
        return []
    share = max_points_total // len(grids)
    return [marker_overlay(grid, threshold=threshold, max_points=share, pool=pool) for grid in grids.values()]


def pooled_fields(grid: DensityGrid, pool: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(density, mean) per cell: positive / tissue and value_sum / tissue, pooled over tissue.

    Each is summed over the (2 * pool + 1)^2 cells around a cell, then divided; cells without
    tissue of their own are 0 (density) and NaN (mean).
    """
    if pool < 0:
        raise ValueError("pool must not be negative")
    tissue = grid.tissue.astype(np.float64)
    sums = [_box_sum(a.astype(np.float64), pool) for a in (grid.positive, grid.tissue, grid.value_sum)]
    positive, tissue_sum, value_sum = sums
    own = tissue > 0
    density = np.zeros(tissue.shape)
    np.divide(positive, tissue_sum, out=density, where=own)
    mean = np.full(tissue.shape, np.nan)
    np.divide(value_sum, tissue_sum, out=mean, where=own)
    return density, mean


def choose_levels(densities: np.ndarray) -> list[float]:
    """The band levels for these tissue-cell densities, by the rule in the module docstring."""
    positive = np.sort(densities[densities > 0])
    if positive.size < MIN_BAND_CELLS:
        return []
    chosen: list[float] = []
    for q in LEVEL_QUANTILES:
        value = float(np.quantile(positive, q, method="inverted_cdf"))
        steps = [step for step in LEVEL_LADDER if step <= value + _EPS]
        if steps and steps[-1] not in chosen:
            chosen.append(steps[-1])
    reaching = [lv for lv in chosen if np.count_nonzero(densities >= lv - _EPS) >= MIN_BAND_CELLS]
    return sorted(reaching)[:MAX_BANDS]


def join_holes(outer: np.ndarray, holes: Sequence[np.ndarray]) -> np.ndarray:
    """One ring covering `outer` minus `holes`, each hole joined by a zero-width horizontal cut.

    Rings are (n, 2) arrays, not closed; `outer` counter-clockwise and holes clockwise in
    (x, y) as stored (either sense works as long as they are opposite). Holes are taken by
    decreasing rightmost x; from each hole's rightmost vertex M a ray runs in +x to the nearest
    edge of the ring built so far, and the hole is spliced in there. No unjoined hole lies right
    of M and the hit is the nearest, so the cut crosses nothing. A vertex lying exactly on the
    ray is treated as lying just below it (symbolic perturbation), so grid-aligned vertices,
    which contour output is full of, never make the choice ambiguous.
    """
    ring = np.asarray(outer, dtype=np.float64)
    for hole in sorted(holes, key=lambda h: -float(np.max(h[:, 0]))):
        m = int(np.argmax(hole[:, 0]))
        mx, my = float(hole[m, 0]), float(hole[m, 1])
        a, b = ring, np.roll(ring, -1, axis=0)
        above_a, above_b = a[:, 1] >= my, b[:, 1] >= my
        crossing = np.flatnonzero(above_a != above_b)
        t = (my - a[crossing, 1]) / (b[crossing, 1] - a[crossing, 1])
        hit_x = a[crossing, 0] + t * (b[crossing, 0] - a[crossing, 0])
        right = hit_x > mx
        if not np.any(right):
            raise ValueError("a hole does not lie inside its outer ring")
        pick = int(np.argmin(np.where(right, hit_x, np.inf)))
        k = int(crossing[pick])
        hit = np.array([[hit_x[pick], my]])
        loop = np.concatenate([hole[m:], hole[: m + 1]])
        ring = np.concatenate([ring[: k + 1], hit, loop, hit, ring[k + 1 :]])
    return _drop_repeats(ring)


def _drop_repeats(ring: np.ndarray) -> np.ndarray:
    """Without consecutive repeated points (a cut landing on a vertex makes some), nor a closing one."""
    keep = np.ones(len(ring), dtype=bool)
    keep[1:] = np.any(ring[1:] != ring[:-1], axis=1)
    ring = ring[keep]
    while len(ring) > 1 and np.array_equal(ring[0], ring[-1]):
        ring = ring[:-1]
    return ring


def _box_sum(array: np.ndarray, radius: int) -> np.ndarray:
    """Sum over the (2r+1)^2 window around each cell, zeros beyond the edge (summed-area table)."""
    if radius == 0:
        return array
    rows, cols = array.shape
    table = np.zeros((rows + 1, cols + 1))
    np.cumsum(np.cumsum(array, axis=0), axis=1, out=table[1:, 1:])
    r0 = np.clip(np.arange(rows) - radius, 0, rows)
    r1 = np.clip(np.arange(rows) + radius + 1, 0, rows)
    c0 = np.clip(np.arange(cols) - radius, 0, cols)
    c1 = np.clip(np.arange(cols) + radius + 1, 0, cols)
    out: np.ndarray = (
        table[np.ix_(r1, c1)] - table[np.ix_(r0, c1)] - table[np.ix_(r1, c0)] + table[np.ix_(r0, c0)]
    )
    return out


def _centres(grid: DensityGrid) -> tuple[np.ndarray, np.ndarray]:
    """Slide x of every column and y of every row, with the grid's outer edges as a border on each side.

    A cell cut short by the extent has its centre in the middle of what is left of it.
    """
    rows, cols = grid.tissue.shape
    axes = []
    for n, start, size, extent in ((cols, grid.origin[0], grid.cell[0], grid.extent[0]),
                                   (rows, grid.origin[1], grid.cell[1], grid.extent[1])):  # fmt: skip
        lo = np.arange(n) * size
        hi = np.minimum(lo + size, extent)
        hi = np.where(hi > lo, hi, lo + size)  # an extent shorter than the cells: use whole cells
        axes.append(np.concatenate(([start], start + (lo + hi) / 2, [start + hi[-1]])))
    return axes[0], axes[1]


def _bands(
    density: np.ndarray,
    tissue: np.ndarray,
    xs: np.ndarray,
    ys: np.ndarray,
    levels: Sequence[float],
    cell: tuple[float, float],
    budget: int,
) -> tuple[Band, ...]:
    if not levels or budget <= 0:
        return ()
    field = np.pad(np.where(tissue, density, 0.0), 1)
    generator = contour_generator(xs, ys, field, fill_type=FillType.OuterOffset)
    raw: list[tuple[float, list[shapely.Polygon]]] = []
    for level in levels:
        # FillType.OuterOffset: a list of point arrays and a list of ring offsets into them.
        points, offsets = cast(Any, generator.filled(level - _EPS, np.inf))
        polygons = [
            shapely.Polygon(pts[off[0] : off[1]], [pts[a:b] for a, b in itertools.pairwise(off[1:])])
            for pts, off in zip(points, offsets, strict=True)
        ]
        raw.append((level, polygons))
    return _fit_bands(raw, cell, budget)


def _fit_bands(
    raw: list[tuple[float, list[shapely.Polygon]]], cell: tuple[float, float], budget: int
) -> tuple[Band, ...]:
    """Simplify with rising tolerance until the joined rings fit `budget` points, then drop the smallest.

    At each step rings smaller than (2 x tolerance)^2 are left out as well: they could not be
    drawn faithfully at that tolerance, and leaving them out first keeps GEOS's
    topology-preserving simplifier (slow on polygons with thousands of holes) fast.
    """
    side = math.sqrt(cell[0] * cell[1])
    current = [list(polygons) for _, polygons in raw]
    floor = _area_floor([p for polygons in current for p in polygons], budget // 3)
    for step in _TOLERANCES:
        min_area = max(MIN_RING_CELLS * side * side, (2 * step * side) ** 2, floor)
        current = [_without_specks(polygons, min_area) for polygons in current]
        if step:
            # Each step simplifies the last one's output (much cheaper than starting over), so a ring
            # strays from its contour by at most the sum of the steps: under twice the last one.
            current = [_simplified(polygons, step * side) for polygons in current]
        if sum(int(_joined_sizes(polygons).sum()) for polygons in current) <= budget:
            break
    chosen = np.array([p for polygons in current for p in polygons], dtype=object)
    owner = np.array([i for i, polygons in enumerate(current) for _ in polygons], dtype=np.int64)
    sizes = _joined_sizes(chosen)
    if int(sizes.sum()) > budget:
        # Still too many points: leave out the smallest polygons (a band's polygon is never larger
        # than the one of the band below that holds it, so nesting survives).
        order = np.lexsort((owner, shapely.area(chosen)))
        dropped = int(np.searchsorted(np.cumsum(sizes[order]), int(sizes.sum()) - budget)) + 1
        keep = np.sort(order[dropped:])
        chosen, owner = chosen[keep], owner[keep]
    bands = []
    for index, (level, _) in enumerate(raw):
        rings = tuple(_ring(p) for p in chosen[owner == index] if not p.is_empty)
        if rings:
            bands.append(Band(level=level, polygons=rings))
    return tuple(bands)


def _area_floor(polygons: list[shapely.Polygon], rings: int) -> float:
    """The area of the `rings`-th largest ring (outer or hole): no smaller ring can fit the budget.

    Every ring costs at least three points, so at most budget / 3 rings are ever drawn; the
    rings are always given up smallest first, so the smaller ones can go before any work.
    """
    if not polygons or rings <= 0:
        return math.inf if polygons else 0.0
    array = np.array(polygons, dtype=object)
    areas = [shapely.area(shapely.polygons(shapely.get_exterior_ring(array)))]
    for polygon in array[shapely.get_num_interior_rings(array) > 0]:
        holes = shapely.get_interior_ring(polygon, np.arange(shapely.get_num_interior_rings(polygon)))
        areas.append(shapely.area(shapely.polygons(holes)))
    every = np.concatenate(areas)
    if every.size <= rings:
        return 0.0
    return float(np.partition(every, every.size - rings)[every.size - rings])


def _simplified(polygons: list[shapely.Polygon], tolerance: float) -> list[shapely.Polygon]:
    """Douglas-Peucker; where that breaks a polygon (rings crossing), GEOS's topology-keeping variant.

    The plain simplifier is many times faster on polygons with many holes and nearly always
    gives a valid result; the few it breaks are redone the slow, safe way.
    """
    if not polygons:
        return []
    array = np.array(polygons, dtype=object)
    simple = shapely.simplify(array, tolerance, preserve_topology=False)
    broken = ~shapely.is_valid(simple) | shapely.is_empty(simple) | (shapely.get_type_id(simple) != 3)
    if np.any(broken):
        simple[broken] = shapely.simplify(array[broken], tolerance, preserve_topology=True)
    return [p for p in simple if not p.is_empty]


def _without_specks(polygons: Sequence[shapely.Polygon], min_area: float) -> list[shapely.Polygon]:
    """The polygons at least `min_area` large, without their holes smaller than that."""
    if not polygons:
        return []
    array = np.array(polygons, dtype=object)
    outer_area = shapely.area(shapely.polygons(shapely.get_exterior_ring(array)))
    out = []
    for polygon in array[outer_area >= min_area]:
        count = shapely.get_num_interior_rings(polygon)
        if count:
            holes = shapely.get_interior_ring(polygon, np.arange(count))
            holes = holes[shapely.area(shapely.polygons(holes)) >= min_area]
            polygon = shapely.Polygon(polygon.exterior, list(holes))
        out.append(shapely.orient_polygons(polygon, exterior_cw=False))
    return out


def _joined_sizes(polygons: np.ndarray | list[shapely.Polygon]) -> np.ndarray:
    """Points of each polygon's joined ring: its rings unclosed, plus 3 per hole for the cut."""
    if len(polygons) == 0:
        return np.zeros(0, dtype=np.int64)
    polygons = np.asarray(polygons, dtype=object)
    sizes: np.ndarray = (
        shapely.get_num_coordinates(polygons) - 1 + 2 * shapely.get_num_interior_rings(polygons)
    )
    return sizes


def _ring(polygon: shapely.Polygon) -> Ring:
    outer = np.asarray(polygon.exterior.coords)[:-1]
    holes = [np.asarray(h.coords)[:-1] for h in polygon.interiors]
    joined = join_holes(outer, holes) if holes else outer
    return tuple((float(x), float(y)) for x, y in joined)


def _threshold_lines(
    mean: np.ndarray,
    tissue: np.ndarray,
    xs: np.ndarray,
    ys: np.ndarray,
    threshold: float,
    cell: tuple[float, float],
    budget: int,
) -> tuple[tuple[tuple[float, float], ...], ...]:
    if budget <= 0 or not np.any(tissue):
        return ()
    field = np.ma.masked_array(np.pad(mean, 1), mask=np.pad(~tissue, 1, constant_values=True))
    generator = contour_generator(xs, ys, field, line_type=LineType.Separate)
    side = math.sqrt(cell[0] * cell[1])
    lines = np.array(
        [shapely.LineString(line) for line in cast(Any, generator.lines(threshold)) if len(line) >= 2],
        dtype=object,
    )
    # Every line costs at least two points: only the budget / 2 longest can ever be drawn.
    floor = float(np.sort(shapely.length(lines))[-(budget // 2)]) if len(lines) > budget // 2 > 0 else 0.0
    for step in _TOLERANCES:
        # As for the bands: a line shorter than four tolerances is left out at that step.
        shortest = max(MIN_LINE_CELLS * side, 4 * step * side, floor)
        lines = lines[shapely.length(lines) >= shortest] if len(lines) else lines
        if step and len(lines):
            lines = shapely.simplify(lines, step * side, preserve_topology=True)
        if int(shapely.get_num_coordinates(lines).sum()) <= budget:
            break
    else:
        counts = shapely.get_num_coordinates(lines)
        order = np.argsort(shapely.length(lines), kind="stable")
        dropped = int(np.searchsorted(np.cumsum(counts[order]), int(counts.sum()) - budget)) + 1
        lines = lines[np.sort(order[dropped:])]
    return tuple(tuple((float(x), float(y)) for x, y in line.coords) for line in lines)
