"""The summary over drawn regions against shapely + numpy on the fake's whole ground-truth arrays.

Oracle: the fixture's full-resolution `truth` (NaN outside tissue) and the
geometry it was written with (`slide_scale`, `translation`); a map pixel is in
a region when shapely's `contains_xy` holds at its centre in slide pixels,
x = (c + 0.5) * sx + tx, y = (r + 0.5) * sy + ty (the pixel-centre rule);
counts, areas, the mean and nearest-rank percentiles are then plain numpy
over the whole masked arrays. The regions' outlines stay clear of pixel
centres (coordinates in thirds of a pixel plus an irrational nudge), so
shapely's "on the outline is outside" never decides a pixel.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pytest
import shapely

from sectra_adapter import Region
from strand_client import JobResults, ResultsError
from strand_client._retry import RetryPolicy
from strand_client.testing.zarr_results import ResultsFixture, build_results, results_files_app, serve_app
from workers import messages
from workers.summarise import RegionWithoutTissue, summarise_job, summarise_marker, summarise_marker_with_grid

API_KEY = "sk-strand-regions-test"
SLIDE_MPP = 0.25
FLOAT_PERCENTILE_ERROR = 2.0**-17 + 1e-12
NUDGE = math.sqrt(2) * 1e-3  # keeps outlines off pixel centres


@contextmanager
def served(files: dict[str, bytes]) -> Iterator[tuple[JobResults, list[str]]]:
    """The store over HTTP, each requested key logged."""
    requested: list[str] = []
    app = results_files_app(files, api_key=API_KEY)

    async def logging_app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            requested.append(scope["path"].split("/results/files/", 1)[-1])
        await app(scope, receive, send)

    with (
        serve_app(logging_app) as url,  # type: ignore[arg-type]
        JobResults(
            api_root=f"{url}/api/v1",
            api_key=API_KEY,
            job_id="job-r",
            retry_policy=RetryPolicy(max_retries=2, base_delay=0.01, max_delay=0.02),
        ) as results,
    ):
        yield results, requested


@dataclasses.dataclass(frozen=True)
class Layout:
    layout: str = "sharded"
    dtype: str = "float32"
    tissue_mode: str = "nan"
    scale: tuple[float, float] = (1.0, 1.0)
    translation: tuple[float, float] = (0.0, 0.0)
    pad: bool = False


LAYOUTS = [
    Layout(),
    Layout("unsharded", "uint8", "node"),
    Layout("sharded", "float64", "node", scale=(2.0, 1.5), translation=(6.0, 10.0)),
    Layout("sharded", "uint16", "none", pad=True),
    Layout("flat", "float32", "nan", scale=(0.5, 0.5)),
]


def build(case: Layout, markers: tuple[str, ...] = ("CD8", "Ki67")) -> tuple[ResultsFixture, int, int]:
    """300 x 520 maps in 128 x 128 shards, and the slide's (width, height) in px."""
    fixture = build_results(
        markers, 300, 520, layout=case.layout, dtype=case.dtype, tissue_mode=case.tissue_mode, chunk=32,
        chunks_per_shard=4, slide_mpp=SLIDE_MPP, slide_scale=case.scale, translation=case.translation,
        pad_to_shards=case.pad, levels=1, with_he=False,
    )  # fmt: skip
    width = round(case.translation[1] + 520 * case.scale[1])
    height = round(case.translation[0] + 300 * case.scale[0])
    return fixture, width, height


def drawn(width: int, height: int) -> list[Region]:
    """A triangle and an overlapping pentagon, over the tissue blob, placed as fractions of the slide."""

    def at(u: float, v: float) -> tuple[float, float]:
        return (round(u * width * 3) / 3 + NUDGE, round(v * height * 3) / 3 + NUDGE)

    triangle = (at(0.25, 0.2), at(0.6, 0.35), at(0.3, 0.8))
    pentagon = (at(0.45, 0.3), at(0.75, 0.25), at(0.85, 0.6), at(0.6, 0.85), at(0.4, 0.6))
    return [Region(points=triangle, tag="Tumour"), Region(points=pentagon, tag="Tumour")]


@dataclasses.dataclass
class Expected:
    tissue: np.ndarray  # bool, map pixels counted (over the slide, tissue, inside the union)
    positive: np.ndarray
    values: np.ndarray  # normalised values, NaN outside `tissue`
    own: list[np.ndarray]  # per region: its tissue pixels
    pixel_mm2: float


def expected_for(
    fixture: ResultsFixture, marker: str, case: Layout, regions: list[Region], threshold: float
) -> Expected:
    values = fixture.truth[marker]
    rows, cols = np.mgrid[0 : values.shape[0], 0 : values.shape[1]]
    xs = (cols + 0.5) * case.scale[1] + case.translation[1]
    ys = (rows + 0.5) * case.scale[0] + case.translation[0]
    own_inside = [shapely.contains_xy(shapely.Polygon(r.points), xs, ys) for r in regions]
    tissue = ~np.isnan(values) & np.logical_or.reduce(own_inside)
    positive = tissue & (np.nan_to_num(values, nan=-1.0) >= threshold)
    pixel_um = (SLIDE_MPP * case.scale[0], SLIDE_MPP * case.scale[1])
    return Expected(
        tissue=tissue,
        positive=positive,
        values=np.where(tissue, values, np.nan),
        own=[tissue & inside for inside in own_inside],
        pixel_mm2=pixel_um[0] * pixel_um[1] / 1e6,
    )


def percentile(values: np.ndarray, q: int) -> float:
    ordered = np.sort(values)
    return float(ordered[math.ceil(q * len(ordered) / 100) - 1])


def summarise(results: JobResults, marker: str, width: int, height: int, **kwargs: Any) -> Any:
    kwargs.setdefault("threshold", 0.4)
    kwargs.setdefault("hotspot_window_um", 20.0)
    return summarise_marker_with_grid(
        results.open_marker(marker),
        slide_width=width,
        slide_height=height,
        microns_per_pixel=SLIDE_MPP,
        block_bytes=128 * 128 * 8,
        **kwargs,
    )


@pytest.mark.parametrize("case", LAYOUTS, ids=lambda c: f"{c.layout}-{c.dtype}-{c.tissue_mode}-{c.scale}")
def test_figures_over_regions_match_shapely_and_numpy(case: Layout) -> None:
    fixture, width, height = build(case)
    regions = drawn(width, height)
    with served(fixture.files) as (results, _):
        for marker in ("CD8", "Ki67"):
            got, grid = summarise(results, marker, width, height, regions=regions)
            want = expected_for(fixture, marker, case, regions, 0.4)
            n, pos = int(want.tissue.sum()), int(want.positive.sum())
            assert n > 1000 and 0 < pos < n  # the regions hold tissue, some of it positive
            assert got.positive_fraction == pos / n
            assert got.tissue_area_mm2 == pytest.approx(n * want.pixel_mm2, rel=1e-12)
            assert got.positive_area_mm2 == pytest.approx(pos * want.pixel_mm2, rel=1e-12)
            inside = want.values[want.tissue]
            assert got.mean == pytest.approx(float(inside.mean()), rel=1e-9)
            tolerance = 1e-12 if case.dtype.startswith("uint") else FLOAT_PERCENTILE_ERROR
            for q in (50, 90, 99):
                assert abs(getattr(got, f"p{q}") - percentile(inside, q)) <= tolerance, q
            # Per region: its own pixels (the overlap counts in both), the union above counts it once.
            assert len(got.regions) == 2
            for figures, own in zip(got.regions, want.own, strict=True):
                own_n, own_pos = int(own.sum()), int((own & want.positive).sum())
                assert figures.positive_fraction == own_pos / own_n
                assert figures.tissue_area_mm2 == pytest.approx(own_n * want.pixel_mm2, rel=1e-12)
                assert figures.positive_area_mm2 == pytest.approx(own_pos * want.pixel_mm2, rel=1e-12)
            overlap = int((want.own[0] & want.own[1]).sum())
            assert overlap > 0 and sum(int(o.sum()) for o in want.own) == n + overlap
            # The grid holds exactly the union's pixels, cell by cell.
            assert int(grid.tissue.sum()) == n and int(grid.positive.sum()) == pos
            assert float(grid.value_sum.sum()) == pytest.approx(
                float(inside.sum()), rel=1e-6
            )  # float32 columns
            assert grid.pixel_mm2 == pytest.approx(want.pixel_mm2, rel=1e-12)
            check_grid_cells(grid, want, case)
            check_hotspots(got.hotspots, grid, want, case, regions)


def check_grid_cells(grid: Any, want: Expected, case: Layout) -> None:
    """Every cell's counts equal numpy's over the map pixels the cell's slide rectangle covers."""
    (sy, sx), (ty, tx) = case.scale, case.translation
    cell_h, cell_w = round(grid.cell[1] / sy), round(grid.cell[0] / sx)
    r0, c0 = round((grid.origin[1] - ty) / sy), round((grid.origin[0] - tx) / sx)
    assert grid.cell == (cell_w * sx, cell_h * sy)
    for i in range(grid.tissue.shape[0]):
        for j in range(grid.tissue.shape[1]):
            rows = slice(r0 + i * cell_h, r0 + (i + 1) * cell_h)
            cols = slice(c0 + j * cell_w, c0 + (j + 1) * cell_w)
            assert grid.tissue[i, j] == int(want.tissue[rows, cols].sum())
            assert grid.positive[i, j] == int(want.positive[rows, cols].sum())
            cell_sum = float(np.nansum(want.values[rows, cols]))
            assert grid.value_sum[i, j] == pytest.approx(cell_sum, rel=1e-6, abs=1e-9)
    # Nothing of the union lies outside the grid.
    rows, cols = grid.tissue.shape
    assert int(want.tissue[r0 : r0 + rows * cell_h, c0 : c0 + cols * cell_w].sum()) == int(want.tissue.sum())


def check_hotspots(hotspots: Any, grid: Any, want: Expected, case: Layout, regions: list[Region]) -> None:
    """Boxes are whole windows of grid cells, inside the regions' bounding box rounded out to cells,
    and each one's positive fraction is numpy's over the union's pixels in it."""
    assert hotspots
    (sy, sx), (ty, tx) = case.scale, case.translation
    box = shapely.MultiPolygon([shapely.Polygon(r.points) for r in regions]).bounds
    cell_w, cell_h = grid.cell
    lo_x = grid.origin[0] + math.floor((box[0] - grid.origin[0]) / cell_w) * cell_w
    lo_y = grid.origin[1] + math.floor((box[1] - grid.origin[1]) / cell_h) * cell_h
    hi_x = grid.origin[0] + math.ceil((box[2] - grid.origin[0]) / cell_w) * cell_w
    hi_y = grid.origin[1] + math.ceil((box[3] - grid.origin[1]) / cell_h) * cell_h
    for spot in hotspots:
        assert lo_x - 1 <= spot.x and spot.x + spot.width <= hi_x + 1
        assert lo_y - 1 <= spot.y and spot.y + spot.height <= hi_y + 1
        for start, origin, side in ((spot.x, grid.origin[0], cell_w), (spot.y, grid.origin[1], cell_h)):
            assert abs((start - origin) / side - round((start - origin) / side)) * side <= 0.5 + 1e-9
        rows = slice(round((spot.y - ty) / sy), round((spot.y + spot.height - ty) / sy))
        cols = slice(round((spot.x - tx) / sx), round((spot.x + spot.width - tx) / sx))
        n = int(want.tissue[rows, cols].sum())
        assert spot.positive_fraction == pytest.approx(int(want.positive[rows, cols].sum()) / n, abs=1e-12)


@pytest.mark.parametrize("case", [LAYOUTS[0], LAYOUTS[2]], ids=["square", "anisotropic"])
def test_a_region_around_the_whole_slide_changes_nothing(case: Layout) -> None:
    fixture, width, height = build(case, markers=("CD8",))
    everything = [
        Region(points=((-5.0, -5.0), (width + 5.0, -5.0), (width + 5.0, height + 5.0), (-5.0, height + 5.0)))
    ]
    with served(fixture.files) as (results, _):
        whole, whole_grid = summarise(results, "CD8", width, height)
        framed, framed_grid = summarise(results, "CD8", width, height, regions=everything)
    assert whole.regions == []
    (only,) = framed.regions
    assert dataclasses.replace(framed, regions=[]) == whole
    assert only.positive_fraction == whole.positive_fraction
    assert whole_grid.origin == framed_grid.origin and whole_grid.extent == framed_grid.extent
    for name in ("positive", "tissue"):
        assert np.array_equal(getattr(whole_grid, name), getattr(framed_grid, name))


def test_a_whole_slide_grid_covers_the_slide_and_sums_to_the_figures() -> None:
    case = LAYOUTS[2]
    fixture, width, height = build(case, markers=("CD8",))
    with served(fixture.files) as (results, _):
        got, grid = summarise(results, "CD8", width, height)
    values = fixture.truth["CD8"]
    tissue = ~np.isnan(values)
    assert int(grid.tissue.sum()) == int(tissue.sum())
    assert int(grid.positive.sum()) == int((np.nan_to_num(values, nan=-1) >= 0.4).sum())
    assert float(grid.value_sum.sum()) == pytest.approx(float(np.nansum(values)), rel=1e-6)
    assert grid.origin == (case.translation[1], case.translation[0])
    assert grid.extent == (520 * case.scale[1], 300 * case.scale[0])
    assert got.positive_fraction == int(grid.positive.sum()) / int(grid.tissue.sum())


def test_a_small_region_reads_only_the_shards_under_it() -> None:
    case = Layout()
    fixture, width, height = build(case, markers=("CD8",))
    corner = [Region(points=((20.5, 30.5), (90.3, 35.1), (60.2, 100.7)))]  # inside shard (0, 0)
    with served(fixture.files) as (results, requested):
        summarise(results, "CD8", width, height, regions=corner)
    shards = {key for key in requested if key.startswith("markers/CD8/0/c/")}
    assert shards == {"markers/CD8/0/c/0/0/0"}


def test_block_windows_cover_exactly_the_storage_objects_meeting_a_window() -> None:
    fixture, _, _ = build(Layout(), markers=("CD8",))  # 300 x 520 map in 128 x 128 shards
    with served(fixture.files) as (results, _):
        marker_map = results.open_marker("CD8")
        for block_bytes in (128 * 128 * 4, 16 << 20):
            covered = np.zeros((300, 520), dtype=int)
            for y0, y1, x0, x1 in marker_map.block_windows(block_bytes, window=(100, 140, 130, 300)):
                covered[y0:y1, x0:x1] += 1
            want = np.zeros((300, 520), dtype=int)
            want[0:256, 128:384] = 1  # shard rows 0-1, columns 1-2
            assert np.array_equal(covered, want)
        assert marker_map.block_windows(window=(10, 10, 0, 520)) == []
        assert marker_map.block_windows(window=(-50, 900, -5, 900)) == marker_map.block_windows()


def test_a_region_without_tissue_is_refused_in_plain_words() -> None:
    case = Layout()
    fixture, width, height = build(case)
    assert not fixture.tissue[:12, :12].any()  # the blob leaves the slide's corner empty
    corner = [Region(points=((0.5, 0.5), (10.2, 0.7), (1.1, 10.3)))]
    with served(fixture.files) as (results, _):
        with pytest.raises(RegionWithoutTissue) as refused:
            summarise_job(results, ["CD8", "Ki67"], threshold=0.4, slide_width=width, slide_height=height,
                          microns_per_pixel=SLIDE_MPP, regions=corner)  # fmt: skip
        assert isinstance(refused.value, ResultsError)
        assert refused.value.message == messages.region_no_tissue()
        # One empty region beside one with tissue: figures for both, the empty one says "no tissue".
        summaries, missing, grids = summarise_job(
            results, ["CD8", "Ki67"], threshold=0.4, slide_width=width, slide_height=height,
            microns_per_pixel=SLIDE_MPP, regions=[*corner, drawn(width, height)[0]],
        )  # fmt: skip
    assert missing == {} and set(grids) == {"CD8", "Ki67"}
    for summary in summaries:
        empty, full = summary.regions
        assert math.isnan(empty.positive_fraction) and empty.tissue_area_mm2 == 0.0
        assert full.positive_fraction == summary.positive_fraction
        assert full.tissue_area_mm2 == summary.tissue_area_mm2


def test_a_padded_map_is_still_checked_for_data_past_the_slide() -> None:
    # As in test_summarise: metadata that puts the slide on the first 25 x 25 of 128 x 128 map pixels,
    # which a region run too must overrule (it reads every shard when padding must be checked).
    fixture = build_results(
        ["CD8"], 100, 100, chunk=32, chunks_per_shard=4, pad_to_shards=True, slide_mpp=0.5, with_he=False
    )
    region = [Region(points=((10.5, 10.5), (90.5, 12.5), (50.5, 90.5)))]
    with served(fixture.files) as (results, _):
        got = summarise_marker(
            results.open_marker("CD8"), threshold=0.5, slide_width=100, slide_height=100,
            microns_per_pixel=0.125, hotspot_window_um=5.0, regions=region,
        )  # fmt: skip
    assert got.geometry_mismatch is not None and "no padding" in got.geometry_mismatch
    scale = 100 / 128
    values = fixture.truth["CD8"]
    rows, cols = np.mgrid[0:128, 0:128]
    inside = shapely.contains_xy(
        shapely.Polygon(region[0].points), (cols + 0.5) * scale, (rows + 0.5) * scale
    )
    tissue = inside & ~np.isnan(values)
    assert got.positive_fraction == int((tissue & (np.nan_to_num(values) >= 0.5)).sum()) / int(tissue.sum())
