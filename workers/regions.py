"""The areas a pathologist drew in Sectra, as slide-pixel polygons, and which map pixels lie inside them.

Sectra sends a `taggedPolygon` (one polygon and the tag chosen for it) or a
`multiArea` (several polygons) in coordinates normalised by the slide's WIDTH:
x in [0, 1], y in [0, height / width] (DESIGN.md "Sectra coordinates"). They
are converted once, here, to level-0 slide pixels (x * width, y * width) and
checked; what cannot be analysed is refused in plain words before any Strand
job is asked for.

Which map pixels count is decided by the pixel-centre rule: a map pixel is
inside when its centre is, by the even-odd rule within each polygon, and a
pixel inside any of the polygons is inside their union (counted once). A
centre exactly on an edge counts for the region on that edge's left or top
side and not for the one on its right or bottom side: a centre on a region's
left or top edge is in, on its right or bottom edge out, so two regions
sharing an edge never both count the pixel and a tiling of regions counts
every pixel once.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import shapely
from pydantic import ValidationError
from sectra_client.schemas import MultiAreaContent, TaggedPolygonContent

from sectra_adapter import Region
from workers import messages
from workers.errors import RunRefused

MAX_REGIONS = 50  # polygons in one multiArea
MAX_POINTS = 10_000  # corners over all polygons: a drawn outline needs far fewer; keeps the work bounded


def regions_from_input(
    content: TaggedPolygonContent | MultiAreaContent | Mapping[str, Any],
    *,
    slide_width: int,
    slide_height: int,
    tags: Sequence[str] = (),
) -> list[Region]:
    """The drawn region(s) of a `create` input, in level-0 slide pixels, or `RunRefused` in plain words.

    `content` is the input's `content` as Sectra sent it, or its JSON as the
    run record keeps it. `tags` are the app's tags: the tag of a
    `taggedPolygon` is `content.tags[content.tagIndex]`, else `tags[tagIndex]`
    when Sectra sent only the index; an index that names no tag gives no tag
    (the figures do not depend on it). Refused: no polygon, more than
    `MAX_REGIONS` polygons or `MAX_POINTS` corners, a polygon with fewer than
    three distinct corners, a corner that is not a finite number, a polygon
    enclosing no area, a polygon wholly outside the slide. A polygon partly
    outside is kept; only the slide's pixels inside it count.
    """
    if slide_width <= 0 or slide_height <= 0:
        raise ValueError(f"the slide's size must be known, not {slide_width} x {slide_height}")
    parsed = _parse(content)
    if isinstance(parsed, TaggedPolygonContent):
        polygons = [parsed.polygon]
        tag = _tag(parsed, tags)
    else:
        polygons = list(parsed.polygons)
        tag = None
    if not polygons:
        raise RunRefused(messages.region_missing())
    if len(polygons) > MAX_REGIONS:
        raise RunRefused(messages.region_too_many(MAX_REGIONS))
    if sum(len(polygon.points) for polygon in polygons) > MAX_POINTS:
        raise RunRefused(messages.region_too_many_points(MAX_POINTS))
    slide = shapely.box(0.0, 0.0, float(slide_width), float(slide_height))
    regions = []
    for polygon in polygons:
        points = _outline([(p.x * slide_width, p.y * slide_width) for p in polygon.points])
        _check(points, slide)
        regions.append(Region(points=tuple(points), tag=tag))
    return regions


def _parse(content: TaggedPolygonContent | MultiAreaContent | Mapping[str, Any]) -> Any:
    if isinstance(content, TaggedPolygonContent | MultiAreaContent):
        return content
    model: type[TaggedPolygonContent] | type[MultiAreaContent] = (
        MultiAreaContent if "polygons" in content else TaggedPolygonContent
    )
    try:
        return model.model_validate(content)
    except ValidationError:
        raise RunRefused(messages.region_unreadable()) from None


def _tag(content: TaggedPolygonContent, app_tags: Sequence[str]) -> str | None:
    index = content.tagIndex
    offered = content.tags if content.tags is not None else list(app_tags)
    if index is None or not 0 <= index < len(offered):
        return None
    return offered[index]


def _outline(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The corners in drawing order, without repeats of the corner before and without a closing repeat."""
    outline: list[tuple[float, float]] = []
    for point in points:
        if not outline or point != outline[-1]:
            outline.append(point)
    while len(outline) > 1 and outline[-1] == outline[0]:
        outline.pop()
    return outline


def _check(points: list[tuple[float, float]], slide: shapely.Polygon) -> None:
    if not all(math.isfinite(v) for point in points for v in point):
        raise RunRefused(messages.region_not_a_number())
    if len(set(points)) < 3:
        raise RunRefused(messages.region_too_few_points())
    # Even-odd area (a figure-eight's lobes both count): make_valid keeps every lobe of a crossing outline.
    shape = shapely.make_valid(shapely.Polygon(points))
    if shape.area <= 0.0:
        raise RunRefused(messages.region_no_area())
    if shape.intersection(slide).area <= 0.0:
        raise RunRefused(messages.region_outside_slide())


class RegionRaster:
    """Which pixels of a map lie inside the drawn regions, by the pixel-centre rule, a block at a time.

    Map pixel (row r, column c) has its centre at slide pixel
    x = (c + 0.5) * sx + ox, y = (r + 0.5) * sy + oy (`scale` = (sy, sx) and
    `offset` = (oy, ox), as `strand_client.SlideGeometry` states them). Each
    map row is a scanline through the centres: the polygon edges crossing it
    (an edge spans y in [lower end, upper end), so a corner on the line is
    counted once and a horizontal edge never) are sorted by where they cross,
    and the centres between the 1st and 2nd crossing, 3rd and 4th, ... are
    inside (x in [start, end): left edges in, right edges out). Exact up to
    float64 rounding of the crossing points, and proportional to the pixels
    asked for, not to the map.
    """

    def __init__(
        self, regions: Sequence[Region], *, scale: tuple[float, float], offset: tuple[float, float]
    ) -> None:
        if not regions:
            raise ValueError("a raster needs at least one region")
        self.scale = scale
        self.offset = offset
        self._edges = [_edges(region.points) for region in regions]
        corners = np.concatenate([np.asarray(region.points, dtype=np.float64) for region in regions])
        self._boxes = [
            (*np.min(np.asarray(r.points), axis=0).tolist(), *np.max(np.asarray(r.points), axis=0).tolist())
            for r in regions
        ]
        low, high = corners.min(axis=0), corners.max(axis=0)
        self.bbox = (float(low[0]), float(low[1]), float(high[0]), float(high[1]))  # slide px x0, y0, x1, y1

    def __len__(self) -> int:
        return len(self._edges)

    def map_window(self, within: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
        """(row0, row1, col0, col1): the map pixels of `within` whose centres may lie inside a region."""
        (sy, sx), (oy, ox) = self.scale, self.offset
        x0, y0, x1, y1 = self.bbox
        r0, r1, c0, c1 = within
        rows = (math.floor((y0 - oy) / sy - 0.5), math.ceil((y1 - oy) / sy - 0.5) + 1)
        cols = (math.floor((x0 - ox) / sx - 0.5), math.ceil((x1 - ox) / sx - 0.5) + 1)
        top, bottom = max(r0, rows[0]), min(r1, rows[1])
        left, right = max(c0, cols[0]), min(c1, cols[1])
        return top, max(top, bottom), left, max(left, right)

    def masks(self, y0: int, y1: int, x0: int, x1: int) -> tuple[np.ndarray, list[tuple[int, np.ndarray]]]:
        """The union's mask of map rows y0:y1, columns x0:x1, and (region index, its own mask) for each
        region that meets the block (the others hold none of it)."""
        shape = (max(0, y1 - y0), max(0, x1 - x0))
        (sy, sx), (oy, ox) = self.scale, self.offset
        ys = (np.arange(y0, y1, dtype=np.float64) + 0.5) * sy + oy
        if shape[0] == 0 or shape[1] == 0:
            return np.zeros(shape, dtype=bool), []
        x_first, x_last = (x0 + 0.5) * sx + ox, (x1 - 0.5) * sx + ox
        own: list[tuple[int, np.ndarray]] = []
        for index, (edges, box) in enumerate(zip(self._edges, self._boxes, strict=True)):
            if box[0] > x_last or box[2] < x_first or box[1] > ys[-1] or box[3] < ys[0]:
                continue
            mask = self._polygon_mask(edges, ys, x0, x1)
            if mask is not None:
                own.append((index, mask))
        if not own:
            return np.zeros(shape, dtype=bool), []
        if len(own) == 1:
            return own[0][1], own
        union = own[0][1].copy()
        for _, mask in own[1:]:
            union |= mask
        return union, own

    def union_mask(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        return self.masks(y0, y1, x0, x1)[0]

    def _polygon_mask(self, edges: np.ndarray, ys: np.ndarray, x0: int, x1: int) -> np.ndarray | None:
        """One polygon's even-odd mask over rows at centres `ys`, columns x0:x1; None when it holds none."""
        ey0, ex0, ey1, slope = edges
        low, high = np.minimum(ey0, ey1), np.maximum(ey0, ey1)
        near = (high > ys[0]) & (low <= ys[-1])  # only edges the rows can cross
        if not near.any():
            return None
        ey0, ex0, ey1, slope = ey0[near], ex0[near], ey1[near], slope[near]
        y = ys[:, None]
        crosses = (ey0 <= y) != (ey1 <= y)  # each edge spans [lower end, upper end) in y
        if not crosses.any():
            return None
        at = ex0 + (y - ey0) * slope
        at[~crosses] = np.inf
        at.sort(axis=1)
        widest = int(crosses.sum(axis=1).max())  # always even: a closed outline crosses a line in pairs
        starts, ends = at[:, 0:widest:2], at[:, 1:widest:2]
        rows = np.broadcast_to(np.arange(len(ys))[:, None], starts.shape)
        real = np.isfinite(starts)
        width = x1 - x0
        first = np.clip(self._first_column(starts[real]), x0, x1) - x0
        last = np.clip(self._first_column(ends[real]), x0, x1) - x0
        keep = first < last
        if not keep.any():
            return None
        stride = width + 1
        flat_rows = rows[real][keep] * stride
        size = len(ys) * stride
        steps = np.bincount(flat_rows + first[keep], minlength=size) - np.bincount(
            flat_rows + last[keep], minlength=size
        )
        inside = np.cumsum(steps.reshape(len(ys), stride)[:, :width], axis=1)
        return inside > 0

    def _first_column(self, x: np.ndarray) -> np.ndarray:
        """The first map column whose centre (c + 0.5) * sx + ox is >= x, decided on the centre itself."""
        sx, ox = self.scale[1], self.offset[1]
        column = np.ceil((x - ox) / sx - 0.5)
        column = np.clip(column, -(2.0**52), 2.0**52)  # crossings far off the map stay far off it
        column -= (column - 0.5) * sx + ox >= x  # division rounded up one column too far
        column += (column + 0.5) * sx + ox < x  # ... or one too near
        return column.astype(np.int64)


def _edges(points: Sequence[tuple[float, float]]) -> np.ndarray:
    """(y0, x0, y1, dx/dy) of each non-horizontal edge of the closed outline (horizontal ones cross no
    scanline under the half-open rule)."""
    corners = np.asarray(points, dtype=np.float64)
    following = np.roll(corners, -1, axis=0)
    x0, y0, x1, y1 = corners[:, 0], corners[:, 1], following[:, 0], following[:, 1]
    slanted = y0 != y1
    x0, y0, x1, y1 = x0[slanted], y0[slanted], x1[slanted], y1[slanted]
    return np.stack([y0, x0, y1, (x1 - x0) / (y1 - y0)])
