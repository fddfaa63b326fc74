"""Reduce each Strand marker map to the figures a pathologist sees, streaming it block by block.

A whole-slide marker map can be 20000 x 20000 float32 (1.5 GiB); the official
SDK decodes it whole. Here each block is folded into fixed-size accumulators
(counts, a value histogram, a coarse grid of positive counts for hotspots) and
dropped, so memory depends on the block size, never on the map.

Definitions (the results contract in DESIGN.md):
- geometry (where map pixels lie on the slide, hence areas and boxes):
  `MarkerMap.slide_geometry`, OME-NGFF units honoured and cross-checked
  against slide size / map size; only map pixels over the slide count (a map
  padded to whole shards has none of the slide past its edge);
- tissue: the `tissue` node's non-zero pixels when the store has one, and for
  float maps only non-NaN pixels; with neither, every pixel;
- values are normalised to [0, 1] (integers divided by their dtype's maximum);
  a pixel is positive when its normalised value >= `threshold`, compared
  exactly as float64 would;
- percentiles follow the inverted-CDF (nearest-rank) definition. Integer maps
  of up to 16 bits are counted per stored value, so they are exact; float maps
  use 65536 equal bins over [0, 1] and report a bin's centre, so each
  percentile is within 2**-17 (about 7.6e-6) of the exact value;
- hotspots are windows of `hotspot_window_um` (in slide microns) ranked by
  positive pixels per window area, sliding in quarter-window steps from the
  first map pixel over the slide, non-overlapping, reported as level-0
  slide-pixel boxes;
- drawn regions (`workers.regions`): only tissue whose map-pixel centre lies
  inside a region counts, every figure above included; the hotspot grid is
  the whole-slide grid's cells that meet the regions' bounding box (the same
  cells a whole-slide run has there), and only the map blocks under those
  cells are read. Each region also gets its own positive fraction and areas.
  A region holding no tissue gets a positive fraction of NaN ("no tissue",
  not 0 %) and areas of 0; when none of them holds any, the summary is
  refused with `messages.region_no_tissue()`.

The per-cell counts (and value sums) of the hotspot grid are also returned as
a `workers.grid.DensityGrid`, what density bands and a hotspot review work
from without reading the maps again.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sectra_adapter import AreaFigures, Hotspot, MarkerSummary, Region
from strand_client import BLOCK_BYTES, JobResults, MapBlock, MarkerMap, ResultsError, SlideGeometry
from workers import messages
from workers.grid import DensityGrid
from workers.regions import RegionRaster

_FLOAT_BINS = 65536
_HOTSPOT_STEPS = 4  # windows slide by a quarter of their side
_MAX_GRID_SIDE = 4096  # hotspot grid cells per axis, whatever the window: keeps the grid small
_PERCENTILES = (50, 90, 99)
_STRIP_ROWS = 128  # rows of a block folded in at once; <= 255, so a strip's per-column counts fit uint8


class RegionWithoutTissue(ResultsError):
    """None of the drawn regions holds tissue of this marker's map (the message says so in plain words)."""

    def __init__(self, marker: str) -> None:
        super().__init__(messages.region_no_tissue(), marker=marker)


def summarise_marker(
    marker_map: MarkerMap,
    *,
    threshold: float,
    slide_width: int,
    slide_height: int,
    microns_per_pixel: float,
    root_microns_per_pixel: float | None = None,
    top_hotspots: int = 5,
    hotspot_window_um: float = 500.0,
    block_bytes: int = BLOCK_BYTES,
    regions: Sequence[Region] = (),
) -> MarkerSummary:
    """One marker's summary (see `summarise_marker_with_grid`)."""
    summary, _ = summarise_marker_with_grid(
        marker_map,
        threshold=threshold,
        slide_width=slide_width,
        slide_height=slide_height,
        microns_per_pixel=microns_per_pixel,
        root_microns_per_pixel=root_microns_per_pixel,
        top_hotspots=top_hotspots,
        hotspot_window_um=hotspot_window_um,
        block_bytes=block_bytes,
        regions=regions,
    )
    return summary


def summarise_marker_with_grid(
    marker_map: MarkerMap,
    *,
    threshold: float,
    slide_width: int,
    slide_height: int,
    microns_per_pixel: float,
    root_microns_per_pixel: float | None = None,
    top_hotspots: int = 5,
    hotspot_window_um: float = 500.0,
    block_bytes: int = BLOCK_BYTES,
    regions: Sequence[Region] = (),
) -> tuple[MarkerSummary, DensityGrid]:
    """One marker's summary over tissue, and its density grid, reading the map once, block by block.

    Where the map lies on the slide comes from `MarkerMap.slide_geometry`: the
    map's OME-NGFF `coordinateTransformations` in its axes' units, else the
    store's root `strand.micronsPerPixel` (`root_microns_per_pixel`, level 0),
    else slide size / map size, always checked against slide size / map size
    (`MarkerSummary.geometry_mismatch` says when the metadata lost).
    `microns_per_pixel` is the slide's. Map pixels beyond the slide (a map
    padded to whole shards) are not tissue. When nothing gives a pixel size in
    microns (slide µm/px unknown and passed as 0), the two areas are NaN and
    everything else still holds. Raises `ResultsError` naming the marker when
    the map cannot be read or has no tissue at all. `block_bytes` trades
    memory for fewer, larger reads.

    With `regions` (level-0 slide pixels, from `workers.regions`) only tissue
    inside them counts and only the blocks under them are read; the summary's
    `regions` holds one `AreaFigures` per region, in order, and its other
    figures are over all regions together. Raises `RegionWithoutTissue` (a
    `ResultsError`) when none of them holds tissue.
    """
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must be within [0, 1], not {threshold}")
    slide = (slide_height, slide_width)
    geometry = marker_map.slide_geometry(
        slide_mpp=microns_per_pixel, slide_size=slide, root_mpp=root_microns_per_pixel
    )
    read = functools.partial(
        _read_pass, marker_map, threshold, slide=slide, window_um=hotspot_window_um,
        block_bytes=block_bytes, regions=regions,
    )  # fmt: skip
    stats = read(geometry)
    if geometry.padded and stats.beyond_slide:
        # Taken for padding, the excess holds data: the metadata is wrong after all. A second read,
        # only on this rare path, keeps the first one to fixed-size accumulators.
        geometry = marker_map.slide_geometry(
            slide_mpp=microns_per_pixel,
            slide_size=slide,
            root_mpp=root_microns_per_pixel,
            data_beyond_slide=True,
        )
        stats = read(geometry)
    return stats.summary(top_hotspots, slide_width, slide_height), stats.grid()


def _read_pass(
    marker_map: MarkerMap,
    threshold: float,
    geometry: SlideGeometry,
    *,
    slide: tuple[int, int],
    window_um: float,
    block_bytes: int,
    regions: Sequence[Region],
) -> _Accumulator:
    window = geometry.slide_window((marker_map.height, marker_map.width), slide)
    raster = RegionRaster(regions, scale=geometry.scale, offset=geometry.offset) if regions else None
    stats = _Accumulator(marker_map, threshold, geometry, window, window_um, raster)
    # Only the blocks under the analysed area; all of them when padding must be checked for data.
    read_window = None if raster is None or geometry.padded else stats.area
    # Each block is measured on the thread that read it; the parts are folded in block order,
    # so the result does not depend on how many threads there were.
    for part in marker_map.map_blocks(
        stats.measure, block_bytes=block_bytes, align_rows=_STRIP_ROWS, window=read_window
    ):
        stats.fold(part)
    return stats


def summarise_job(
    results: JobResults,
    markers: Sequence[str],
    *,
    threshold: float,
    slide_width: int,
    slide_height: int,
    microns_per_pixel: float,
    root_microns_per_pixel: float | None = None,
    top_hotspots: int = 5,
    hotspot_window_um: float = 500.0,
    level: int = 0,
    regions: Sequence[Region] = (),
) -> tuple[list[MarkerSummary], dict[str, str], dict[str, DensityGrid]]:
    """Summaries of the markers that can be read, `{marker: reason}` in plain words for the rest, and
    `{marker: density grid}` of the summarised ones.

    Only problems with the results themselves (absent, malformed, undecodable)
    make a marker "missing"; connection and server errors propagate so the
    caller's retry machinery can try the whole step again. With `regions`,
    a marker with no tissue inside them is missing for that reason, and when
    no marker is left and one was for that reason, `RegionWithoutTissue` is
    raised: the run has nothing to show (DESIGN: a region covering no tissue
    gets a result in plain words, no figures).
    """
    if root_microns_per_pixel is None:
        root_microns_per_pixel = results.microns_per_pixel()
    summaries: list[MarkerSummary] = []
    missing: dict[str, str] = {}
    grids: dict[str, DensityGrid] = {}
    without_tissue: RegionWithoutTissue | None = None
    for marker in markers:
        try:
            summary, grid = summarise_marker_with_grid(
                results.open_marker(marker, level),
                threshold=threshold,
                slide_width=slide_width,
                slide_height=slide_height,
                microns_per_pixel=microns_per_pixel,
                root_microns_per_pixel=root_microns_per_pixel,
                top_hotspots=top_hotspots,
                hotspot_window_um=hotspot_window_um,
                regions=regions,
            )
        except RegionWithoutTissue as exc:
            without_tissue = exc
            missing[marker] = exc.message
        except ResultsError as exc:
            missing[marker] = exc.message
        else:
            summaries.append(summary)
            grids[marker] = grid
    if without_tissue is not None and not summaries:
        raise without_tissue
    return summaries, missing, grids


@dataclass
class _Part:
    """What one block adds to the accumulator: measured on a reader thread, folded in on the caller's."""

    histogram: np.ndarray
    sums: list[float] = field(default_factory=list)  # per strip, added in this order (as one thread would)
    tissue_px: int = 0
    positive_px: int = 0
    beyond_slide: int = 0
    # Per strip: its first grid cell (row, column), its per-cell counts of positive and tissue pixels
    # and its per-cell sums of values over tissue (stored integers for exact-count maps).
    cells: list[tuple[int, int, np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=list)
    # Per drawn region (index): its tissue and positive pixels in this block.
    region_tissue: dict[int, int] = field(default_factory=dict)
    region_positive: dict[int, int] = field(default_factory=dict)


class _Accumulator:
    """Everything the summary needs, folded in one block at a time; size independent of the map.

    Only the map pixels over the slide (`window`: rows r0:r1, columns c0:c1)
    are counted; the hotspot grid's cells start at (r0, c0). With regions
    (`raster`), only the cells meeting their bounding box are kept (`area`,
    a whole number of those cells, cut at the slide window's edge) and only
    pixels inside a region count. `measure` only reads the settings fixed
    here, so blocks may be measured on several threads; `fold` adds their
    parts in, in block order.
    """

    def __init__(
        self,
        marker_map: MarkerMap,
        threshold: float,
        geometry: SlideGeometry,
        window: tuple[int, int, int, int],
        window_um: float,
        raster: RegionRaster | None = None,
    ) -> None:
        self.map = marker_map
        self.geometry = geometry
        self.raster = raster
        self.r0, self.r1, self.c0, self.c1 = window
        dtype = marker_map.dtype
        self.exact_counts = dtype.kind in "uib" and dtype.itemsize <= 2
        if self.exact_counts:
            self.bins = int(marker_map.value_max) + 1
            self.cutoff: float = _integer_cutoff(threshold, marker_map.value_max)
        else:
            self.bins = _FLOAT_BINS
            self.cutoff = _float_cutoff(threshold, dtype if dtype.kind == "f" else np.dtype(np.float64))
        self.histogram = np.zeros(self.bins, dtype=np.int64)
        self.value_sum = 0.0
        self.tissue_px = 0
        self.positive_px = 0
        self.beyond_slide = 0  # stored values past the slide's edge; only counted for a padded geometry
        slide_rows, slide_cols = max(0, self.r1 - self.r0), max(0, self.c1 - self.c0)
        self.cell_h, self.window_cells_y = _cells(
            window_um, geometry.pixel_um[0], geometry.scale[0], max(1, slide_rows)
        )
        self.cell_w, self.window_cells_x = _cells(
            window_um, geometry.pixel_um[1], geometry.scale[1], max(1, slide_cols)
        )
        self.area = window if raster is None else self._region_area(raster)
        self.ar0, self.ar1, self.ac0, self.ac1 = self.area
        self.rows, self.cols = max(0, self.ar1 - self.ar0), max(0, self.ac1 - self.ac0)
        grid_shape = (-(-self.rows // self.cell_h), -(-self.cols // self.cell_w))
        self.positive_grid = np.zeros(grid_shape, dtype=np.int64)
        self.tissue_grid = np.zeros(grid_shape, dtype=np.int64)
        self.sum_grid = np.zeros(grid_shape, dtype=np.int64 if self.exact_counts else np.float64)
        regions = len(raster) if raster is not None else 0
        self.region_tissue = [0] * regions
        self.region_positive = [0] * regions

    def _region_area(self, raster: RegionRaster) -> tuple[int, int, int, int]:
        """The slide window's grid cells that hold map pixels whose centres may lie in a region."""
        top, bottom, left, right = raster.map_window((self.r0, self.r1, self.c0, self.c1))
        if top >= bottom or left >= right:
            return self.r0, self.r0, self.c0, self.c0
        top = self.r0 + (top - self.r0) // self.cell_h * self.cell_h
        bottom = min(self.r1, self.r0 + -(-(bottom - self.r0) // self.cell_h) * self.cell_h)
        left = self.c0 + (left - self.c0) // self.cell_w * self.cell_w
        right = min(self.c1, self.c0 + -(-(right - self.c0) // self.cell_w) * self.cell_w)
        return top, bottom, left, right

    def measure(self, block: MapBlock) -> _Part:
        """One block's part over the slide, a strip of rows at a time (temporaries stay a few MiB)."""
        part = _Part(np.zeros(self.bins, dtype=np.int64))
        h, w = block.values.shape
        if self.geometry.padded:
            top, bottom = max(self.r0, block.y0), min(self.r1, block.y0 + h)
            left, right = max(self.c0, block.x0), min(self.c1, block.x0 + w)
            part.beyond_slide = self._data_count(block) - (
                self._data_count(block, top, bottom, left, right) if top < bottom and left < right else 0
            )
        top, bottom = max(self.ar0, block.y0), min(self.ar1, block.y0 + h)
        left, right = max(self.ac0, block.x0), min(self.ac1, block.x0 + w)
        if top >= bottom or left >= right:
            return part
        cols = slice(left - block.x0, right - block.x0)
        # Strips end on multiples of _STRIP_ROWS map rows, wherever the block starts: blocks cut on
        # those multiples (the shard reader's bands) then give the same strips, hence the same sums.
        y = top
        while y < bottom:
            end = min(bottom, (y // _STRIP_ROWS + 1) * _STRIP_ROWS)
            rows = slice(y - block.y0, end - block.y0)
            self._add(
                part,
                block.values[rows, cols],
                None if block.tissue is None else block.tissue[rows, cols],
                y - self.ar0,
                left - self.ac0,
            )
            y = end
        return part

    def fold(self, part: _Part) -> None:
        self.histogram += part.histogram
        for strip_sum in part.sums:
            self.value_sum += strip_sum
        self.tissue_px += part.tissue_px
        self.positive_px += part.positive_px
        self.beyond_slide += part.beyond_slide
        for row, col, positive, tissue, sums in part.cells:
            cells = (slice(row, row + positive.shape[0]), slice(col, col + positive.shape[1]))
            self.positive_grid[cells] += positive
            self.tissue_grid[cells] += tissue
            self.sum_grid[cells] += sums
        for index, count in part.region_tissue.items():
            self.region_tissue[index] += count
        for index, count in part.region_positive.items():
            self.region_positive[index] += count

    def _data_count(
        self, block: MapBlock, top: int | None = None, bottom: int = 0, left: int = 0, right: int = 0
    ) -> int:
        """Pixels of the block (or of rows top:bottom, columns left:right) not holding the fill value."""
        values, node = block.values, block.tissue
        if top is not None:
            rows = slice(top - block.y0, bottom - block.y0)
            cols = slice(left - block.x0, right - block.x0)
            values, node = values[rows, cols], None if node is None else node[rows, cols]
        fill = self.map.fill_value
        data = ~np.isnan(values) if values.dtype.kind == "f" and np.isnan(fill) else values != fill
        if node is not None:
            data |= node
        return int(np.count_nonzero(data))

    def _add(self, part: _Part, values: np.ndarray, node: np.ndarray | None, y0: int, x0: int) -> None:
        """Fold in one strip whose corner is (y0, x0) from the analysed area's corner."""
        inside: np.ndarray | None = None
        own: list[tuple[int, np.ndarray]] = []
        if self.raster is not None:
            top, left = self.ar0 + y0, self.ac0 + x0
            inside, own = self.raster.masks(top, top + values.shape[0], left, left + values.shape[1])
        if not self.exact_counts and values.dtype.kind != "f":
            values = values.astype(np.float64) / self.map.value_max
        if values.dtype.kind == "f":
            tissue = ~np.isnan(values)
            if node is not None:
                tissue &= node
            if inside is not None:
                tissue &= inside
            positive = values >= self.cutoff
            if node is not None or inside is not None:
                positive &= tissue  # NaN already compares False; this drops pixels outside node or region
            in_tissue = values[tissue]
            part.sums.append(float(in_tissue.sum(dtype=np.float64)))
            # Bin trunc(clip(v, 0, 1) * 65536) capped at the last bin, as trunc(clip(v * 65536, 0, last)):
            # scaling by a power of two is exact, so both give the same bin. The numbers fit uint16.
            bins = np.multiply(in_tissue, _FLOAT_BINS, out=in_tissue)
            np.clip(bins, 0.0, _FLOAT_BINS - 1, out=bins)
            indexes = bins.astype(np.uint16)
            where: np.ndarray | None = tissue
        else:
            if node is not None and inside is not None:
                tissue = node & inside
            elif inside is not None:
                tissue = inside
            else:
                tissue = node if node is not None else np.ones(values.shape, dtype=bool)
            positive = values >= self.cutoff if self.cutoff <= self.map.value_max else np.zeros_like(tissue)
            if node is not None or inside is not None:
                positive &= tissue
                indexes = values[tissue]
                where = tissue
            else:
                indexes = values.ravel()
                where = None
            if values.dtype.kind == "i":
                indexes = np.maximum(indexes, 0)
                values = np.maximum(values, 0)
        part.histogram += np.bincount(indexes, minlength=self.bins)[: self.bins]
        strip_tissue, strip_positive = int(np.count_nonzero(tissue)), int(np.count_nonzero(positive))
        part.tissue_px += strip_tissue
        part.positive_px += strip_positive
        for index, mask in own:
            if len(own) == 1:  # the strip meets one region: its mask is the union's, counted above
                region_tissue, region_positive = strip_tissue, strip_positive
            else:
                region_tissue = int(np.count_nonzero(tissue & mask))
                region_positive = int(np.count_nonzero(positive & mask))
            part.region_tissue[index] = part.region_tissue.get(index, 0) + region_tissue
            part.region_positive[index] = part.region_positive.get(index, 0) + region_positive
        part.cells.append(
            (
                y0 // self.cell_h,
                x0 // self.cell_w,
                self._cell_counts(positive, y0, x0),
                self._cell_counts(tissue, y0, x0),
                self._cell_sums(values, where, y0, x0),
            )
        )

    def _cell_counts(self, mask: np.ndarray, y0: int, x0: int) -> np.ndarray:
        """Per-cell counts of a strip's `mask` whose corner is (y0, x0) (strips need not align to cells).

        Rows are summed per cell as uint8 (a strip has at most 255 rows), which
        numpy does without converting every pixel to a wider type.
        """
        as_bytes = mask.view(np.uint8)
        row_cuts = [*_cuts(y0, mask.shape[0], self.cell_h).tolist(), mask.shape[0]]
        per_row = np.stack(
            [np.add.reduce(as_bytes[a:b], axis=0, dtype=np.uint8) for a, b in itertools.pairwise(row_cuts)]
        )
        return np.add.reduceat(per_row, _cuts(x0, mask.shape[1], self.cell_w), axis=1, dtype=np.int64)

    def _cell_sums(self, values: np.ndarray, tissue: np.ndarray | None, y0: int, x0: int) -> np.ndarray:
        """Per-cell sums of a strip's values over `tissue` (None: every pixel).

        Stored integers (of at most 16 bits) are summed exactly: zeroed outside
        tissue by a multiplication, down each column of the strip (at most 255
        rows) in 16 or 32 bits, then in int64. Float values are summed down
        each column in the map's own float type (at most 255 values, so
        float32 keeps about six digits, plenty for drawing and for a mean
        shown to three), then across columns and strips in float64. Either
        way a whole-slide run pays about one pass over the strip.
        """
        wide = np.int64 if self.exact_counts else np.float64
        column: Any = values.dtype
        where: Any = True
        if self.exact_counts:
            if tissue is not None:
                values = values * tissue  # same dtype; a masked reduction of integers is ten times slower
            signed = values.dtype.kind == "i"
            if values.dtype.itemsize == 1:
                column = np.int16 if signed else np.uint16
            else:
                column = np.int32 if signed else np.uint32
        elif tissue is not None:
            where = tissue
        row_cuts = [*_cuts(y0, values.shape[0], self.cell_h).tolist(), values.shape[0]]
        per_row = np.stack(
            [
                np.add.reduce(values[a:b], axis=0, dtype=column, where=where if where is True else where[a:b])
                for a, b in itertools.pairwise(row_cuts)
            ]
        )
        return np.add.reduceat(per_row, _cuts(x0, values.shape[1], self.cell_w), axis=1, dtype=wide)

    @property
    def pixel_mm2(self) -> float:
        return self.geometry.pixel_um[0] * self.geometry.pixel_um[1] / 1e6

    def summary(self, top: int, slide_width: int, slide_height: int) -> MarkerSummary:
        name = self.map.name
        if self.tissue_px == 0:
            if self.raster is not None:
                raise RegionWithoutTissue(name)
            raise ResultsError(f"Marker {name}: the map has no tissue pixels to summarise", marker=name)
        pixel_mm2 = self.pixel_mm2
        if self.exact_counts:
            levels = np.arange(self.bins, dtype=np.float64)
            mean = float(self.histogram @ levels) / self.tissue_px / self.map.value_max
            centres = levels / self.map.value_max
        else:
            mean = self.value_sum / self.tissue_px
            centres = (np.arange(self.bins, dtype=np.float64) + 0.5) / self.bins
        cumulative = np.cumsum(self.histogram)
        p50, p90, p99 = (
            float(centres[int(np.searchsorted(cumulative, -(-q * self.tissue_px // 100)))])
            for q in _PERCENTILES
        )
        return MarkerSummary(
            marker=name,
            positive_fraction=self.positive_px / self.tissue_px,
            positive_area_mm2=self.positive_px * pixel_mm2,
            tissue_area_mm2=self.tissue_px * pixel_mm2,
            mean=mean,
            p50=p50,
            p90=p90,
            p99=p99,
            hotspots=self._hotspots(top, slide_width, slide_height),
            geometry_mismatch=self.geometry.mismatch,
            regions=[
                AreaFigures(
                    positive_fraction=positive / tissue if tissue else math.nan,
                    positive_area_mm2=positive * pixel_mm2,
                    tissue_area_mm2=tissue * pixel_mm2,
                )
                for positive, tissue in zip(self.region_positive, self.region_tissue, strict=True)
            ],
        )

    def grid(self) -> DensityGrid:
        """The hotspot grid's counts as the run keeps them (`workers.grid`), placed in slide pixels."""
        (sy, sx), (oy, ox) = self.geometry.scale, self.geometry.offset
        sums = self.sum_grid / self.map.value_max if self.exact_counts else self.sum_grid.copy()
        return DensityGrid(
            marker=self.map.name,
            origin=(self.ac0 * sx + ox, self.ar0 * sy + oy),
            cell=(self.cell_w * sx, self.cell_h * sy),
            extent=(self.cols * sx, self.rows * sy),
            pixel_mm2=self.pixel_mm2,
            positive=self.positive_grid.copy(),
            tissue=self.tissue_grid.copy(),
            value_sum=sums.astype(np.float64),
        )

    def _hotspots(self, top: int, slide_width: int, slide_height: int) -> list[Hotspot]:
        """Greedy pick of the densest windows on the cell grid, none overlapping an earlier pick."""
        cells_y, cells_x = self.positive_grid.shape
        if cells_y == 0 or cells_x == 0:
            return []
        win_y, win_x = min(self.window_cells_y, cells_y), min(self.window_cells_x, cells_x)
        positive = _window_sums(self.positive_grid, win_y, win_x)
        tissue = _window_sums(self.tissue_grid, win_y, win_x)
        row_px = _window_extent(self.rows, self.cell_h, cells_y, win_y)
        col_px = _window_extent(self.cols, self.cell_w, cells_x, win_x)
        density = positive / np.outer(row_px, col_px)
        density[positive == 0] = -1.0
        found: list[Hotspot] = []
        for _ in range(top):
            i, j = np.unravel_index(int(np.argmax(density)), density.shape)
            if density[i, j] < 0:
                break
            y0, x0 = self.ar0 + int(i) * self.cell_h, self.ac0 + int(j) * self.cell_w
            found.append(
                self._box(
                    y0,
                    x0,
                    int(row_px[i]),
                    int(col_px[j]),
                    int(positive[i, j]) / int(tissue[i, j]),
                    slide_width,
                    slide_height,
                )
            )
            density[max(0, i - win_y + 1) : i + win_y, max(0, j - win_x + 1) : j + win_x] = -1.0
        return found

    def _box(
        self, y0: int, x0: int, rows: int, cols: int, fraction: float, slide_width: int, slide_height: int
    ) -> Hotspot:
        """A window of map pixels as a level-0 slide-pixel box, clipped to the slide."""
        (sy, sx), (oy, ox) = self.geometry.scale, self.geometry.offset
        left, top = round(x0 * sx + ox), round(y0 * sy + oy)
        right, bottom = round((x0 + cols) * sx + ox), round((y0 + rows) * sy + oy)
        if slide_width > 0:
            left, right = (min(max(v, 0), slide_width) for v in (left, right))
        if slide_height > 0:
            top, bottom = (min(max(v, 0), slide_height) for v in (top, bottom))
        return Hotspot(x=left, y=top, width=right - left, height=bottom - top, positive_fraction=fraction)


def _integer_cutoff(threshold: float, value_max: float) -> int:
    """Smallest stored integer whose value / max is >= threshold, decided exactly as float64 would."""
    cutoff = max(0, math.ceil(threshold * value_max))
    while cutoff > 0 and (cutoff - 1) / value_max >= threshold:
        cutoff -= 1
    while cutoff <= value_max and cutoff / value_max < threshold:
        cutoff += 1
    return cutoff


def _float_cutoff(threshold: float, dtype: np.dtype[np.floating]) -> float:
    """The smallest value of `dtype` that is >= threshold, so comparing in `dtype` matches float64 exactly."""
    cutoff = dtype.type(threshold)
    if float(cutoff) < threshold:
        cutoff = np.nextafter(cutoff, dtype.type(np.inf))
    return float(cutoff)


def _cells(window_um: float, pixel_um: float, scale: float, extent: int) -> tuple[int, int]:
    """Grid cell side (map pixels) and cells per window side for one axis.

    Without a pixel size in microns the window is sized in slide pixels at
    0.25 µm/px, a typical 40x scan, so hotspots still have a sensible size.
    """
    size_um = pixel_um if math.isfinite(pixel_um) else 0.25 * scale
    window_px = max(1.0, window_um / size_um)
    cell = max(1, round(window_px / _HOTSPOT_STEPS), -(-extent // _MAX_GRID_SIDE))
    return cell, max(1, round(window_px / cell))


def _cuts(start: int, length: int, cell: int) -> np.ndarray:
    """Offsets within a block where a new grid cell begins (always including 0)."""
    first_boundary = (start // cell + 1) * cell
    return np.concatenate(([0], np.arange(first_boundary, start + length, cell) - start)).astype(np.intp)


def _window_sums(grid: np.ndarray, win_y: int, win_x: int) -> np.ndarray:
    """Sum of every win_y x win_x block of cells, via a summed-area table."""
    table = np.zeros((grid.shape[0] + 1, grid.shape[1] + 1), dtype=np.int64)
    np.cumsum(np.cumsum(grid, axis=0), axis=1, out=table[1:, 1:])
    return table[win_y:, win_x:] - table[:-win_y, win_x:] - table[win_y:, :-win_x] + table[:-win_y, :-win_x]


def _window_extent(extent: int, cell: int, cells: int, win: int) -> np.ndarray:
    """Pixels each window covers along one axis (the last cells may be cut short by the map edge)."""
    starts = np.arange(cells - win + 1) * cell
    return np.minimum(starts + win * cell, extent) - starts
