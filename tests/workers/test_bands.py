"""Density bands and threshold lines, judged by rasterising them back.

Oracles, none of them the code under test:
- an even-odd point-in-polygon test written here in numpy, evaluated at every cell centre
  (a ring joined by zero-width cuts must fill correctly on its own, which is exactly what an
  even-odd fill of that single ring does), and Pillow's polygon fill for the donut's hole;
- the density and mean fields computed here from the spec (positive / tissue, pooled over
  3 x 3 cells by tissue weight, with explicit shifted sums);
- shapely for areas and nesting; bilinear interpolation written here for the threshold line.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import shapely
from PIL import Image, ImageDraw

from sectra_adapter import Hotspot
from strand_client.testing.zarr_results import build_results
from workers.bands import LEVEL_LADDER, join_holes, marker_overlay, overlays_for
from workers.grid import DensityGrid
from workers.review_math import grid_without

CELL = 16.0
ORIGIN = (100.0, 200.0)


def _grid(positive: np.ndarray, tissue: np.ndarray, value_sum: np.ndarray | None = None) -> DensityGrid:
    rows, cols = tissue.shape
    return DensityGrid(
        marker="CD8",
        origin=ORIGIN,
        cell=(CELL, CELL),
        extent=(cols * CELL, rows * CELL),
        pixel_mm2=1e-6,
        positive=positive.astype(np.int64),
        tissue=tissue.astype(np.int64),
        value_sum=(positive * 0.8 if value_sum is None else value_sum).astype(np.float64),
    )


def _field(density: np.ndarray, per_cell: int = 400) -> DensityGrid:
    """A grid whose cells all hold `per_cell` tissue pixels and density * that many positives."""
    tissue = np.full(density.shape, per_cell)
    return _grid(np.rint(density * per_cell), tissue)


def _centres(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    rows, cols = shape
    xs = ORIGIN[0] + (np.arange(cols) + 0.5) * CELL
    ys = ORIGIN[1] + (np.arange(rows) + 0.5) * CELL
    return np.meshgrid(xs, ys)


def _even_odd(ring: tuple[tuple[float, float], ...], px: np.ndarray, py: np.ndarray) -> np.ndarray:
    """Crossing-number point-in-polygon (even-odd rule) for one ring, vectorised over points."""
    pts = np.asarray(ring)
    inside = np.zeros(px.shape, dtype=bool)
    for (x1, y1), (x2, y2) in zip(pts, np.roll(pts, -1, axis=0), strict=True):
        if y1 == y2:
            continue
        straddles = (y1 > py) != (y2 > py)
        x_cross = x1 + (py - y1) * (x2 - x1) / (y2 - y1)
        inside ^= straddles & (px < x_cross)
    return inside


def _band_mask(
    band_polygons: tuple[tuple[tuple[float, float], ...], ...], shape: tuple[int, int]
) -> np.ndarray:
    px, py = _centres(shape)
    mask = np.zeros(shape, dtype=bool)
    for ring in band_polygons:
        mask ^= _even_odd(ring, px, py)  # the rings of a band do not overlap
    return mask


def _pooled(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """Sum over each cell's 3 x 3 neighbourhood (zeros beyond the edge) of num, over that of den."""
    pad_n, pad_d = np.pad(num.astype(float), 1), np.pad(den.astype(float), 1)
    rows, cols = num.shape
    sum_n, sum_d = np.zeros(num.shape), np.zeros(num.shape)
    for dy, dx in itertools.product(range(3), range(3)):
        sum_n += pad_n[dy : dy + rows, dx : dx + cols]
        sum_d += pad_d[dy : dy + rows, dx : dx + cols]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, sum_n / sum_d, np.nan)


def _points(overlay) -> int:  # type: ignore[no-untyped-def]
    return sum(len(r) for b in overlay.bands for r in b.polygons) + sum(
        len(line) for line in overlay.threshold_lines
    )


def _radius(shape: tuple[int, int], cy: float, cx: float) -> np.ndarray:
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]]
    return np.hypot(yy - cy, xx - cx)


def test_nested_discs_are_exact_at_every_cell_centre() -> None:
    r = _radius((80, 90), 40.3, 44.7)
    density = np.where(r < 10, 0.9, np.where(r < 25, 0.6, 0.02))
    overlay = marker_overlay(_field(density), threshold=0.5, levels=[0.3, 0.8], max_points=100_000, pool=0)
    assert [b.level for b in overlay.bands] == [0.3, 0.8]
    for band in overlay.bands:
        assert len(band.polygons) == 1
        np.testing.assert_array_equal(_band_mask(band.polygons, density.shape), density >= band.level)


def test_two_blobs_make_two_rings_and_a_level_exactly_met_is_inside() -> None:
    density = np.zeros((40, 60))
    density[_radius(density.shape, 12, 14) < 6] = 0.5
    density[_radius(density.shape, 25, 44) < 9] = 0.75
    overlay = marker_overlay(_field(density), threshold=0.5, levels=[0.5], max_points=100_000, pool=0)
    (band,) = overlay.bands
    assert len(band.polygons) == 2
    np.testing.assert_array_equal(_band_mask(band.polygons, density.shape), density >= 0.5)


def test_a_donut_is_one_ring_whose_hole_stays_open() -> None:
    r = _radius((60, 60), 30, 30)
    density = np.where((r >= 8) & (r < 22), 0.7, 0.0)
    overlay = marker_overlay(_field(density), threshold=0.5, levels=[0.5], max_points=100_000, pool=0)
    (band,) = overlay.bands
    (ring,) = band.polygons  # the hole is joined to its outer ring, not a ring of its own
    np.testing.assert_array_equal(_band_mask(band.polygons, density.shape), density >= 0.5)
    # Pillow fills the single ring as a renderer would: the hole's centre stays empty.
    image = Image.new("L", (60 * 16 + 200, 60 * 16 + 300), 0)
    ImageDraw.Draw(image).polygon([(x, y) for x, y in ring], fill=255)
    centre = (ORIGIN[0] + 30.5 * CELL, ORIGIN[1] + 30.5 * CELL)
    on_ring = (ORIGIN[0] + (30.5 + 15) * CELL, ORIGIN[1] + 30.5 * CELL)
    assert image.getpixel((round(centre[0]), round(centre[1]))) == 0
    assert image.getpixel((round(on_ring[0]), round(on_ring[1]))) == 255
    # The cut has no width: the ring's area is the donut's (outer disc minus hole), not the disc's.
    outer_only = marker_overlay(_field(np.where(r < 22, 0.7, 0.0)), threshold=0.5, levels=[0.5], pool=0)
    hole = marker_overlay(_field(np.where(r < 8, 0.7, 0.0)), threshold=0.5, levels=[0.5], pool=0)
    expected = (
        shapely.Polygon(outer_only.bands[0].polygons[0]).area
        - shapely.Polygon(hole.bands[0].polygons[0]).area
    )
    assert abs(shapely.Polygon(ring).area) == pytest.approx(expected, rel=0.02)


def _proper_crossings(ring: tuple[tuple[float, float], ...]) -> int:
    """Pairs of ring segments that cross at a point interior to both (touching and overlap allowed)."""
    a = np.asarray(ring, dtype=float)
    b = np.roll(a, -1, axis=0)

    def orient(p: np.ndarray, q: np.ndarray, r: np.ndarray) -> np.ndarray:
        return (q[..., 0] - p[..., 0]) * (r[..., 1] - p[..., 1]) - (q[..., 1] - p[..., 1]) * (
            r[..., 0] - p[..., 0]
        )

    p, q = a[:, None, :], b[:, None, :]  # segment i along axis 0, segment j along axis 1
    r, s = a[None, :, :], b[None, :, :]
    crossing = (orient(p, q, r) * orient(p, q, s) < 0) & (orient(r, s, p) * orient(r, s, q) < 0)
    return int(np.triu(crossing, 1).sum())


def test_many_holes_on_shared_rows_join_without_crossing() -> None:
    density = np.full((40, 70), 0.8)
    density[[0, -1], :] = 0.0
    density[:, [0, -1]] = 0.0
    for col in (5, 15, 25, 40, 55):  # square holes whose corners share rows: ties for the cut rays
        density[10:15, col : col + 4] = 0.0
        density[22:30, col + 2 : col + 6] = 0.0
    density[24:32, 58:66] = 0.0  # a hole with an island in it
    density[27:29, 61:63] = 0.8
    overlay = marker_overlay(_field(density), threshold=0.5, levels=[0.5], max_points=100_000, pool=0)
    (band,) = overlay.bands
    np.testing.assert_array_equal(_band_mask(band.polygons, density.shape), density >= 0.5)
    for ring in band.polygons:
        assert _proper_crossings(ring) == 0


def test_join_holes_on_a_hand_made_square() -> None:
    outer = np.array([[0, 0], [10, 0], [10, 10], [0, 10]], dtype=float)  # counter-clockwise (y up)
    holes = [
        np.array([[2, 2], [2, 4], [4, 4], [4, 2]], dtype=float),
        np.array([[6, 2], [6, 4], [8, 4], [8, 2]], dtype=float),  # same rows as the first
        np.array([[6, 6], [6, 8], [8, 8], [8, 6]], dtype=float),
    ]
    ring = tuple(map(tuple, join_holes(outer, holes)))
    assert shapely.Polygon(ring).area == pytest.approx(100 - 3 * 4)
    assert _proper_crossings(ring) == 0
    px, py = np.meshgrid(np.arange(10) + 0.5, np.arange(10) + 0.5)
    truth = ~(
        ((px > 2) & (px < 4) & (py > 2) & (py < 4))
        | ((px > 6) & (px < 8) & (py > 2) & (py < 4))
        | ((px > 6) & (px < 8) & (py > 6) & (py < 8))
    )
    np.testing.assert_array_equal(_even_odd(ring, px, py), truth)


def _fake_strand_grid(marker: str, threshold: float, cell: int = 8, scale: float = 1.0) -> DensityGrid:
    fixture = build_results([marker], 512, 640, seed=3)
    truth, tissue = fixture.truth[marker], fixture.tissue
    rows, cols = truth.shape[0] // cell, truth.shape[1] // cell

    def cells(a: np.ndarray) -> np.ndarray:
        return a[: rows * cell, : cols * cell].reshape(rows, cell, cols, cell).sum(axis=(1, 3))

    values = np.where(tissue, np.nan_to_num(truth) * scale, 0.0)
    return DensityGrid(
        marker=marker,
        origin=(0.0, 0.0),
        cell=(float(cell), float(cell)),
        extent=(cols * cell, rows * cell),
        pixel_mm2=0.25e-6,
        positive=cells(tissue & (values >= threshold)).astype(np.int64),
        tissue=cells(tissue).astype(np.int64),
        value_sum=cells(values),
    )


def _as_polygon(ring: tuple[tuple[float, float], ...]) -> shapely.Geometry:
    return shapely.make_valid(shapely.Polygon(ring))


@pytest.mark.parametrize(("marker", "positivity"), [("Ki67", 0.5), ("CD8", 0.5), ("CD8", 0.97)])
def test_fake_strand_bands_match_the_density_field_and_nest(marker: str, positivity: float) -> None:
    grid = _fake_strand_grid(marker, positivity)
    _assert_bands_follow_the_field(grid)


def test_a_low_expressing_marker_still_shows_bands() -> None:
    rng = np.random.default_rng(5)
    r = _radius((120, 160), 60, 70)
    tissue = np.where(_radius((120, 160), 60, 80) < 58, rng.integers(200, 400, (120, 160)), 0)
    positive = rng.binomial(tissue, 0.004 + 0.03 * np.exp(-((r / 25) ** 2)))  # 0.4 % to 3.4 %
    grid = DensityGrid(**{**_grid(positive, tissue).__dict__, "origin": (0.0, 0.0), "cell": (8.0, 8.0),
                          "extent": (160 * 8.0, 120 * 8.0)})  # fmt: skip
    levels = _assert_bands_follow_the_field(grid)
    assert max(levels) <= 0.05


def _assert_bands_follow_the_field(grid: DensityGrid) -> list[float]:
    """Bands: 2-4 ladder levels ascending, within budget, >= 95 % agreement, each inside the one before."""
    assert grid.origin == (0.0, 0.0) and grid.cell == (8.0, 8.0)
    overlay = marker_overlay(grid, threshold=0.5)
    levels = [b.level for b in overlay.bands]
    assert 2 <= len(levels) <= 4 and levels == sorted(levels) and set(levels) <= set(LEVEL_LADDER)
    assert _points(overlay) <= 1500
    assert all(_proper_crossings(ring) == 0 for band in overlay.bands for ring in band.polygons)
    tissue = grid.tissue > 0
    density = _pooled(grid.positive, grid.tissue)
    px, py = np.meshgrid(
        (np.arange(grid.tissue.shape[1]) + 0.5) * 8, (np.arange(grid.tissue.shape[0]) + 0.5) * 8
    )
    shapes = []
    for band in overlay.bands:
        mask = np.zeros(grid.tissue.shape, dtype=bool)
        for ring in band.polygons:
            mask ^= _even_odd(ring, px, py)
        agreement = np.mean(mask[tissue] == (density[tissue] >= band.level))
        assert agreement >= 0.95, (band.level, agreement)
        shapes.append(shapely.union_all([_as_polygon(r) for r in band.polygons]))
    for lower, upper in itertools.pairwise(shapes):
        outside = shapely.difference(upper, shapely.buffer(lower, 2 * 8.0)).area
        assert outside <= 0.01 * upper.area
    return levels


def test_the_threshold_line_lies_where_the_mean_field_crosses_the_threshold() -> None:
    grid = _fake_strand_grid("Ki67", 0.5)
    threshold = 0.3
    overlay = marker_overlay(grid, threshold=threshold, max_points=100_000)
    assert overlay.threshold_lines
    mean = _pooled(grid.value_sum, grid.tissue)
    for line in overlay.threshold_lines:
        for x, y in line:
            # Back to fractional cell indices (cell centres at (j + 0.5) * 8). A contour point lies on
            # a grid edge, or (where contourpy cuts a quad with one corner off tissue into a triangle)
            # on a quad's diagonal: interpolate linearly between the two cells at that segment's ends.
            fi, fj = y / 8 - 0.5, x / 8 - 0.5
            i0, j0 = int(np.floor(fi + 1e-9)), int(np.floor(fj + 1e-9))
            ti, tj = fi - i0, fj - j0
            if abs(ti) < 1e-9:
                ends, t = ((i0, j0), (i0, j0 + 1)), tj
            elif abs(tj) < 1e-9:
                ends, t = ((i0, j0), (i0 + 1, j0)), ti
            elif abs(ti - tj) < 1e-9:
                ends, t = ((i0, j0), (i0 + 1, j0 + 1)), ti
            else:
                assert abs(ti + tj - 1) < 1e-9, (x, y)
                ends, t = ((i0, j0 + 1), (i0 + 1, j0)), ti
            a, b = (mean[e] if 0 <= e[1] < mean.shape[1] and e[0] < mean.shape[0] else np.nan for e in ends)
            if t < 1e-9:
                b = a
            assert np.isfinite(a) and np.isfinite(b), "a threshold line left the tissue"
            assert a + t * (b - a) == pytest.approx(threshold, abs=1e-9)


def test_the_point_budget_holds_on_a_noisy_1000_by_1000_grid() -> None:
    rng = np.random.default_rng(7)
    tissue = rng.integers(0, 900, (1000, 1000))
    positive = rng.binomial(tissue, rng.uniform(0.1, 0.6, (1000, 1000)))
    grid = _grid(positive, tissue, positive * 0.7 + (tissue - positive) * 0.3)
    overlay = marker_overlay(grid, threshold=0.5, max_points=1500)
    assert overlay.bands
    assert _points(overlay) <= 1500
    assert all(_proper_crossings(ring) == 0 for band in overlay.bands for ring in band.polygons)


def test_output_is_deterministic_and_overlays_share_the_total_budget() -> None:
    rng = np.random.default_rng(11)
    grids = {}
    for name in ("CD3", "CD8", "Ki67"):
        tissue = rng.integers(0, 400, (150, 150))
        positive = rng.binomial(tissue, np.clip(rng.normal(0.3, 0.15, (150, 150)), 0, 1))
        grids[name] = DensityGrid(**{**_grid(positive, tissue).__dict__, "marker": name})
    first = overlays_for(grids, threshold=0.4, max_points_total=1800)
    again = overlays_for(grids, threshold=0.4, max_points_total=1800)
    assert first == again
    assert [o.marker for o in first] == ["CD3", "CD8", "Ki67"]
    assert sum(_points(o) for o in first) <= 1800
    assert all(_points(o) <= 600 for o in first)


def test_grids_without_tissue_or_too_small_draw_nothing_or_still_work() -> None:
    empty = _grid(np.zeros((5, 5)), np.zeros((5, 5)))
    assert marker_overlay(empty, threshold=0.5) == marker_overlay(empty, threshold=0.5)
    assert marker_overlay(empty, threshold=0.5).bands == ()
    single = _grid(np.array([[90]]), np.array([[100]]))
    assert marker_overlay(single, threshold=0.5).bands == ()  # one cell: nothing to contour
    assert overlays_for({}, threshold=0.5) == []


def test_the_crossing_oracle_sees_a_crossing_and_allows_a_zero_width_cut() -> None:
    assert _proper_crossings(((0, 0), (2, 2), (2, 0), (0, 2))) == 1  # a bow tie
    cut = (
        (0, 0),
        (10, 0),
        (10, 5),
        (7, 5),
        (7, 4),
        (3, 4),
        (3, 6),
        (7, 6),
        (7, 5),
        (10, 5),
        (10, 10),
        (0, 10),
    )
    assert _proper_crossings(cut) == 0


def test_levels_outside_zero_to_one_are_refused() -> None:
    grid = _field(np.full((4, 4), 0.5))
    with pytest.raises(ValueError, match="levels"):
        marker_overlay(grid, threshold=0.5, levels=[0.0, 0.5])


def test_bands_after_a_review_leave_the_artefact_unshaded() -> None:
    """The reviewed grid (`grid_without`) empties the cells under an Artefact box: the band there has a
    hole, checked with shapely against the box's own centre, and every other cell is as it was."""
    density = np.full((30, 40), 0.6)
    grid = _field(density)
    # A box of 4 x 4 cells in the middle, in level-0 slide pixels (cells are CELL px from ORIGIN).
    x, y = int(ORIGIN[0] + 18 * CELL), int(ORIGIN[1] + 13 * CELL)
    box = Hotspot(x=x, y=y, width=64, height=64, positive_fraction=0.6)
    reviewed = grid_without(grid, [box])
    gone = reviewed.tissue == 0
    assert gone.sum() == 16 and gone[13:17, 18:22].all()
    assert (reviewed.positive[~gone] == grid.positive[~gone]).all()
    centre = shapely.Point(box.x + box.width / 2, box.y + box.height / 2)
    before = marker_overlay(grid, threshold=0.5, levels=[0.5])
    after = marker_overlay(reviewed, threshold=0.5, levels=[0.5])
    assert any(shapely.Polygon(ring).contains(centre) for ring in before.bands[0].polygons)
    assert not any(shapely.Polygon(ring).contains(centre) for ring in after.bands[0].polygons)
