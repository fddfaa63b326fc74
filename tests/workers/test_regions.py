"""Drawn regions: Sectra's input converted to slide pixels, refusals in plain words, and the rasteriser.

The rasteriser's oracle is shapely (`contains_xy` at every map pixel's centre,
x = (c + 0.5) * sx + ox, y = (r + 0.5) * sy + oy), an implementation of the
point-in-polygon test that shares nothing with our scanlines. Centres closer
than 1e-6 slide px to an outline are left out of that comparison (on the
outline shapely says "not contained" whichever side it is); the rule for
centres exactly on an edge is checked on its own, with the expected pixels
written out by hand.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import shapely
from hypothesis import given, settings
from hypothesis import strategies as st
from sectra_client.schemas import MultiAreaContent, TaggedPolygonContent

from sectra_adapter import Region
from workers import messages
from workers.errors import RunRefused
from workers.regions import MAX_POINTS, MAX_REGIONS, RegionRaster, regions_from_input

W, H = 1000, 500  # slide px: Sectra's y runs to H / W = 0.5


def polygon(*points: tuple[float, float]) -> dict[str, Any]:
    return {"points": [{"x": x, "y": y} for x, y in points]}


SQUARE = polygon((0.1, 0.1), (0.3, 0.1), (0.3, 0.2), (0.1, 0.2))


def test_a_tagged_polygon_is_normalised_by_the_slide_width() -> None:
    raw = {"polygon": SQUARE, "tags": ["Tumour", "Stroma"], "tagIndex": 1}
    content = TaggedPolygonContent.model_validate(raw)
    (region,) = regions_from_input(raw, slide_width=W, slide_height=H)
    assert region == regions_from_input(content, slide_width=W, slide_height=H)[0]
    assert region.points == ((100.0, 100.0), (300.0, 100.0), (300.0, 200.0), (100.0, 200.0))
    assert region.tag == "Stroma"


def test_the_tag_falls_back_to_the_apps_tags_and_an_index_naming_none_gives_none() -> None:
    content = {"polygon": SQUARE, "tagIndex": 0}
    assert regions_from_input(content, slide_width=W, slide_height=H, tags=["Tumour"])[0].tag == "Tumour"
    assert regions_from_input(content, slide_width=W, slide_height=H)[0].tag is None
    assert regions_from_input({"polygon": SQUARE}, slide_width=W, slide_height=H)[0].tag is None


def test_multi_area_gives_one_region_per_polygon_and_drops_a_closing_repeat() -> None:
    closed = polygon((0.5, 0.3), (0.6, 0.3), (0.6, 0.3), (0.55, 0.4), (0.5, 0.3))
    regions = regions_from_input(
        MultiAreaContent.model_validate({"polygons": [SQUARE, closed]}), slide_width=W, slide_height=H
    )
    assert [r.tag for r in regions] == [None, None]
    assert regions[1].points == ((500.0, 300.0), (600.0, 300.0), (550.0, 400.0))


def test_a_region_partly_outside_the_slide_is_kept() -> None:
    (region,) = regions_from_input(
        {"polygon": polygon((0.9, 0.4), (1.2, 0.4), (1.2, 0.7), (0.9, 0.7))}, slide_width=W, slide_height=H
    )
    assert region.points[1] == (1200.0, 400.0)


REFUSALS = [
    ({"polygon": polygon((0.1, 0.1), (0.2, 0.2))}, messages.region_too_few_points()),
    ({"polygon": polygon((0.1, 0.1), (0.2, 0.2), (0.1, 0.1), (0.2, 0.2))}, messages.region_too_few_points()),
    ({"polygon": polygon((0.1, 0.1), (0.2, math.nan), (0.3, 0.1))}, messages.region_not_a_number()),
    ({"polygon": polygon((0.1, 0.1), (math.inf, 0.2), (0.3, 0.1))}, messages.region_not_a_number()),
    ({"polygon": polygon((0.1, 0.1), (0.2, 0.2), (0.3, 0.3))}, messages.region_no_area()),
    ({"polygon": polygon((1.1, 0.1), (1.3, 0.1), (1.2, 0.3))}, messages.region_outside_slide()),
    ({"polygon": polygon((0.1, 0.6), (0.3, 0.6), (0.2, 0.9))}, messages.region_outside_slide()),  # below H
    ({"polygons": []}, messages.region_missing()),
    ({"polygons": [SQUARE] * (MAX_REGIONS + 1)}, messages.region_too_many(MAX_REGIONS)),
    (
        {
            "polygon": polygon(
                *[
                    (0.2 + 0.1 * math.cos(a), 0.2 + 0.1 * math.sin(a))
                    for a in np.linspace(0, 6.28, MAX_POINTS + 1)
                ]
            )
        },
        messages.region_too_many_points(MAX_POINTS),
    ),
    ({"polygon": {"points": "nowhere"}}, messages.region_unreadable()),
]


@pytest.mark.parametrize(("content", "words"), REFUSALS)
def test_regions_that_cannot_be_analysed_are_refused_in_plain_words(content: Any, words: str) -> None:
    with pytest.raises(RunRefused) as refused:
        regions_from_input(content, slide_width=W, slide_height=H)
    assert str(refused.value) == words


def test_one_bad_polygon_refuses_a_multi_area() -> None:
    outside = polygon((1.1, 0.1), (1.3, 0.1), (1.2, 0.3))
    with pytest.raises(RunRefused, match="outside the slide"):
        regions_from_input({"polygons": [SQUARE, outside]}, slide_width=W, slide_height=H)


# ---------- the rasteriser against shapely ----------


def centres(shape: tuple[int, int], scale: tuple[float, float], offset: tuple[float, float]) -> Any:
    rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]]
    return (cols + 0.5) * scale[1] + offset[1], (rows + 0.5) * scale[0] + offset[0]


def oracle(
    regions: list[Region], shape: tuple[int, int], scale: tuple[float, float], offset: tuple[float, float]
) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """(union inside, centres clear of every outline, each polygon's inside), by shapely."""
    xs, ys = centres(shape, scale, offset)
    shapes = [shapely.Polygon(r.points) for r in regions]
    own = [shapely.contains_xy(s, xs, ys) for s in shapes]
    clear = np.ones(shape, dtype=bool)
    with np.errstate(divide="ignore", invalid="ignore"):  # GEOS on a zero-length edge of a drawn outline
        for s in shapes:
            clear &= shapely.distance(s.exterior, shapely.points(xs, ys)) > 1e-6
    return np.logical_or.reduce(own), clear, own


@st.composite
def star_polygons(draw: st.DrawFn) -> Region:
    """A simple polygon: random radii around a centre at increasing angles (star-shaped, never crossing)."""
    n = draw(st.integers(3, 24))
    cx, cy = draw(st.floats(-20, 140)), draw(st.floats(-20, 100))
    turns = st.floats(0, 2 * math.pi, exclude_max=True)
    angles = sorted(draw(st.lists(turns, min_size=n, max_size=n, unique=True)))
    radii = draw(st.lists(st.floats(0.5, 60), min_size=n, max_size=n))
    points = tuple((cx + r * math.cos(a), cy + r * math.sin(a)) for a, r in zip(angles, radii, strict=True))
    shape = shapely.Polygon(points)
    if not shape.is_valid or shape.area < 1e-3:  # angles too close together: a sliver or a crossing
        points = ((cx, cy), (cx + 10.0, cy + 1.0), (cx + 2.0, cy + 9.0))
    return Region(points=points)


GEOMETRIES = st.tuples(
    st.sampled_from([(1.0, 1.0), (2.0, 2.0), (0.5, 1.5), (4.0, 2.5), (1.0 / 3.0, 0.75)]),
    st.tuples(st.floats(-10, 10), st.floats(-10, 10)),
)


@settings(max_examples=150, deadline=None)
@given(regions=st.lists(star_polygons(), min_size=1, max_size=3), geometry=GEOMETRIES)
def test_the_rasteriser_agrees_with_shapely_on_pixel_centres(
    regions: list[Region], geometry: tuple[tuple[float, float], tuple[float, float]]
) -> None:
    scale, offset = geometry
    shape = (int(120 / scale[0]), int(160 / scale[1]))
    raster = RegionRaster(regions, scale=scale, offset=offset)
    union, own = raster.masks(0, shape[0], 0, shape[1])
    want, clear, want_own = oracle(regions, shape, scale, offset)
    assert np.array_equal(union[clear], want[clear])
    got_own = {index: mask for index, mask in own}
    for index, expected in enumerate(want_own):
        got = got_own.get(index, np.zeros(shape, dtype=bool))
        assert np.array_equal(got[clear], expected[clear]), index
    # Any block of the map gives the same pixels as the whole map does.
    y0, y1, x0, x1 = shape[0] // 3, shape[0] - 2, shape[1] // 4, shape[1] // 2 + 7
    assert np.array_equal(raster.union_mask(y0, y1, x0, x1), union[y0:y1, x0:x1])
    # No pixel inside lies outside the window the raster says may hold some.
    top, bottom, left, right = raster.map_window((0, shape[0], 0, shape[1]))
    outside = union.copy()
    outside[top:bottom, left:right] = False
    assert not outside.any()


def test_centres_on_an_edge_count_for_the_left_and_top_edges_only() -> None:
    # Scale 1, no offset: pixel (r, c) has its centre at (c + 0.5, r + 0.5). The rectangle's edges run
    # through centres: x = 2.5 (left: in), 6.5 (right: out), y = 1.5 (top: in), 4.5 (bottom: out).
    rectangle = Region(points=((2.5, 1.5), (6.5, 1.5), (6.5, 4.5), (2.5, 4.5)))
    want = np.zeros((7, 9), dtype=bool)
    want[1:4, 2:6] = True  # rows 1, 2, 3; columns 2, 3, 4, 5
    got = RegionRaster([rectangle], scale=(1.0, 1.0), offset=(0.0, 0.0)).union_mask(0, 7, 0, 9)
    assert np.array_equal(got, want)
    # Drawn the other way round (clockwise vs anticlockwise) changes nothing.
    reverse = Region(points=rectangle.points[::-1])
    assert np.array_equal(
        RegionRaster([reverse], scale=(1.0, 1.0), offset=(0.0, 0.0)).union_mask(0, 7, 0, 9), want
    )


def test_regions_sharing_an_edge_count_each_pixel_once() -> None:
    # A slanted shared edge through many centres: the two triangles tile the square.
    square = [(0.5, 0.5), (8.5, 0.5), (8.5, 8.5), (0.5, 8.5)]
    lower = Region(points=(square[0], square[2], square[3]))
    upper = Region(points=(square[0], square[1], square[2]))
    raster = RegionRaster([lower, upper], scale=(1.0, 1.0), offset=(0.0, 0.0))
    union, own = raster.masks(0, 10, 0, 10)
    counts = np.sum([mask.astype(int) for _, mask in own], axis=0)
    want = np.zeros((10, 10), dtype=bool)
    want[0:8, 0:8] = True
    assert np.array_equal(union, want)
    assert counts.max() == 1  # the diagonal's centres belong to one triangle, not both


def test_a_self_crossing_outline_fills_by_the_even_odd_rule() -> None:
    # A five-pointed star drawn in one stroke: even-odd leaves the central pentagon empty.
    tips = [
        (50 + 40 * math.sin(k * 4 * math.pi / 5), 50 - 40 * math.cos(k * 4 * math.pi / 5)) for k in range(5)
    ]
    star = Region(points=tuple(tips))
    mask = RegionRaster([star], scale=(1.0, 1.0), offset=(0.0, 0.0)).union_mask(0, 100, 0, 100)
    assert not mask[50, 50]  # the centre: crossed twice
    points = shapely.make_valid(shapely.Polygon(star.points))  # the five tips, by shapely's own repair
    xs, ys = centres((100, 100), (1.0, 1.0), (0.0, 0.0))
    want = shapely.contains_xy(points, xs, ys)
    clear = shapely.distance(shapely.Polygon(star.points).exterior, shapely.points(xs, ys)) > 1e-6
    assert np.array_equal(mask[clear], want[clear])
