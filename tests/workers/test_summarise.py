"""The streaming marker summary against plain numpy on the whole ground-truth array, over real HTTP.

Every figure (positive fraction, areas, mean, percentiles, hotspots) is
recomputed here from the fixture's full-resolution truth with straightforward
numpy: sorting for percentiles, slicing the whole mask for each hotspot window.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sectra_adapter._summary import Hotspot, MarkerSummary
from strand_client._results import JobResults
from strand_client._retry import RetryPolicy
from strand_client.testing.zarr_results import ResultsFixture, build_results, results_files_app, serve_app
from workers.summarise import summarise_job, summarise_marker

API_KEY = "sk-strand-summary-test"
FLOAT_PERCENTILE_ERROR = 2.0**-17 + 1e-12  # half a bin of 65536 over [0, 1]
SLIDE_MPP = 0.25


@contextmanager
def served(fixture: ResultsFixture) -> Iterator[JobResults]:
    with (
        serve_app(results_files_app(fixture.files, api_key=API_KEY)) as url,
        JobResults(
            api_root=f"{url}/api/v1",
            api_key=API_KEY,
            job_id="job-s",
            retry_policy=RetryPolicy(max_retries=3, base_delay=0.01, max_delay=0.05),
        ) as results,
    ):
        yield results


def make(
    layout: str = "sharded", markers: tuple[str, ...] = ("CD8", "Ki67"), **kwargs: Any
) -> ResultsFixture:
    """300 x 520 maps in 128 x 128 shards (32-px chunks): many shards, some absent, cut edges."""
    kwargs.setdefault("chunk", 32)
    kwargs.setdefault("chunks_per_shard", 4)
    kwargs.setdefault("slide_mpp", SLIDE_MPP)  # the physical scales are written for the slide we pass
    return build_results(markers, 300, 520, layout=layout, **kwargs)


def window_geometry(window_um: float, pixel_um: float, extent: int) -> tuple[int, int]:
    """The documented window grid: quarter-window cells, whole cells per window, <= 4096 cells per axis."""
    window_px = max(1.0, window_um / pixel_um)
    cell = max(1, round(window_px / 4), -(-extent // 4096))
    return cell, max(1, round(window_px / cell))


def expected(
    truth: np.ndarray,
    *,
    threshold: float,
    pixel_um: tuple[float, float],
    scale: tuple[float, float],
    window_um: float,
    slide: tuple[int, int],
    top: int = 5,
) -> MarkerSummary:
    """Plain numpy over the whole map. `truth` is NaN outside tissue; `slide` is (width, height)."""
    tissue = ~np.isnan(truth)
    values = truth[tissue]
    positive = np.zeros(truth.shape, dtype=bool)
    positive[tissue] = values >= threshold
    ordered = np.sort(values)
    n = len(ordered)
    pixel_mm2 = pixel_um[0] * pixel_um[1] / 1e6
    p50, p90, p99 = (float(ordered[math.ceil(q * n / 100) - 1]) for q in (50, 90, 99))
    return MarkerSummary(
        marker="",
        positive_fraction=int(positive.sum()) / n,
        positive_area_mm2=int(positive.sum()) * pixel_mm2,
        tissue_area_mm2=n * pixel_mm2,
        mean=float(values.mean()),
        p50=p50,
        p90=p90,
        p99=p99,
        hotspots=brute_force_hotspots(positive, tissue, pixel_um, scale, window_um, slide, top),
    )


def brute_force_hotspots(
    positive: np.ndarray,
    tissue: np.ndarray,
    pixel_um: tuple[float, float],
    scale: tuple[float, float],
    window_um: float,
    slide: tuple[int, int],
    top: int,
) -> list[Hotspot]:
    height, width = positive.shape
    cell_h, k_y = window_geometry(window_um, pixel_um[0], height)
    cell_w, k_x = window_geometry(window_um, pixel_um[1], width)
    cells_y, cells_x = -(-height // cell_h), -(-width // cell_w)
    k_y, k_x = min(k_y, cells_y), min(k_x, cells_x)
    candidates = []
    for i in range(cells_y - k_y + 1):
        for j in range(cells_x - k_x + 1):
            y0, x0 = i * cell_h, j * cell_w
            y1, x1 = min(y0 + k_y * cell_h, height), min(x0 + k_x * cell_w, width)
            count = int(positive[y0:y1, x0:x1].sum())
            if count:
                density = count / ((y1 - y0) * (x1 - x0))
                candidates.append((-density, i, j, count / int(tissue[y0:y1, x0:x1].sum()), y0, y1, x0, x1))
    candidates.sort()
    chosen: list[tuple[Any, ...]] = []
    for candidate in candidates:
        if len(chosen) == top:
            break
        if all(abs(candidate[1] - c[1]) >= k_y or abs(candidate[2] - c[2]) >= k_x for c in chosen):
            chosen.append(candidate)
    boxes = []
    for _, _, _, fraction, y0, y1, x0, x1 in chosen:
        left, right = min(round(x0 * scale[1]), slide[0]), min(round(x1 * scale[1]), slide[0])
        top_, bottom = min(round(y0 * scale[0]), slide[1]), min(round(y1 * scale[0]), slide[1])
        boxes.append(Hotspot(left, top_, right - left, bottom - top_, fraction))
    return boxes


def assert_matches(got: MarkerSummary, want: MarkerSummary, *, exact_percentiles: bool) -> None:
    assert got.positive_fraction == pytest.approx(want.positive_fraction, rel=1e-12, abs=1e-15)
    assert got.positive_area_mm2 == pytest.approx(want.positive_area_mm2, rel=1e-12, abs=1e-15)
    assert got.tissue_area_mm2 == pytest.approx(want.tissue_area_mm2, rel=1e-12)
    assert got.mean == pytest.approx(want.mean, rel=1e-9)
    tolerance = 1e-12 if exact_percentiles else FLOAT_PERCENTILE_ERROR
    for name in ("p50", "p90", "p99"):
        assert abs(getattr(got, name) - getattr(want, name)) <= tolerance, name
    assert got.hotspots == want.hotspots


CASES = [
    ("sharded", "float32", "nan", 3),
    ("sharded", "float64", "node", 3),
    ("sharded", "uint8", "node", 3),
    ("sharded", "uint16", "none", 2),
    ("unsharded", "float32", "none", 3),
    ("unsharded-zstd", "uint16", "node", 3),
    ("flat", "float32", "nan", 2),
    ("flat", "uint8", "node", 3),
    ("ome-ngff", "float32", "nan", 3),
    ("ome-ngff", "uint16", "node", 2),
]


@pytest.mark.parametrize(("layout", "dtype", "tissue_mode", "ndim"), CASES)
def test_every_figure_matches_numpy(layout: str, dtype: str, tissue_mode: str, ndim: int) -> None:
    fixture = make(layout, dtype=dtype, tissue_mode=tissue_mode, ndim=ndim)
    threshold, window_um = 0.35, 20.0  # 80-px windows on 20-px cells: cells straddle the 128-px blocks
    with served(fixture) as results:
        for marker in ("CD8", "Ki67"):
            marker_map = results.open_marker(marker)
            got = summarise_marker(
                marker_map,
                threshold=threshold,
                slide_width=520,
                slide_height=300,
                microns_per_pixel=SLIDE_MPP,
                hotspot_window_um=window_um,
                block_bytes=128 * 128 * marker_map.dtype.itemsize,
            )
            want = expected(
                fixture.truth[marker],
                threshold=threshold,
                pixel_um=(SLIDE_MPP, SLIDE_MPP),
                scale=(1.0, 1.0),
                window_um=window_um,
                slide=(520, 300),
            )
            assert got.marker == marker
            assert got.geometry_mismatch is None
            assert 0 < got.positive_fraction < 1
            assert len(got.hotspots) == 5
            assert_matches(got, want, exact_percentiles=dtype.startswith("uint"))


def test_markers_differ_and_the_strongest_hotspot_is_found() -> None:
    fixture = make("sharded", markers=("CD8", "PanCK", "Ki67"))
    with served(fixture) as results:
        summaries, missing, _ = summarise_job(
            results,
            ["CD8", "PanCK", "Ki67"],
            threshold=0.5,
            slide_width=520,
            slide_height=300,
            microns_per_pixel=SLIDE_MPP,
            hotspot_window_um=10.0,
        )
    assert missing == {}
    assert len({round(s.positive_fraction, 6) for s in summaries}) == 3
    for summary in summaries:
        best = summary.hotspots[0]
        centres = fixture.hotspots[summary.marker]
        assert any(
            best.x - 40 <= x <= best.x + best.width + 40 and best.y - 40 <= y <= best.y + best.height + 40
            for y, x in centres
        ), (summary.marker, best, centres)


def _drop_shard(fixture: ResultsFixture, marker: str, row: int, col: int, fill: float) -> np.ndarray:
    """Delete one stored shard (storage lost it) and return the truth a reader must then see."""
    key = f"markers/{marker}/0/c/0/{row}/{col}"
    assert key in fixture.files
    del fixture.files[key]
    truth = fixture.truth[marker].copy()
    region = truth[row * 128 : (row + 1) * 128, col * 128 : (col + 1) * 128]
    region[~np.isnan(region)] = fill
    return truth


@pytest.mark.parametrize(
    ("dtype", "tissue_mode", "fill"), [("float32", "nan", math.nan), ("uint8", "node", 0.0)]
)
def test_absent_shards_count_as_fill_value(dtype: str, tissue_mode: str, fill: float) -> None:
    fixture = make(dtype=dtype, tissue_mode=tissue_mode)
    geometry: dict[str, Any] = {
        "threshold": 0.4,
        "pixel_um": (SLIDE_MPP,) * 2,
        "scale": (1.0, 1.0),
        "window_um": 20.0,
        "slide": (520, 300),
    }
    before = expected(fixture.truth["CD8"], **geometry)
    truth = _drop_shard(fixture, "CD8", 1, 1, fill)
    with served(fixture) as results:
        got = summarise_marker(
            results.open_marker("CD8"),
            threshold=0.4,
            slide_width=520,
            slide_height=300,
            microns_per_pixel=SLIDE_MPP,
            hotspot_window_um=20.0,
        )
    want = expected(truth, **geometry)
    assert (want.tissue_area_mm2, want.positive_fraction) != (
        before.tissue_area_mm2,
        before.positive_fraction,
    )
    assert_matches(got, want, exact_percentiles=dtype == "uint8")


def test_a_map_smaller_than_the_slide_uses_its_coordinate_transformations() -> None:
    fixture = make(slide_scale=2.0, markers=("Ki67",))
    with served(fixture) as results:
        got = summarise_marker(
            results.open_marker("Ki67"),
            threshold=0.5,
            slide_width=1040,
            slide_height=600,
            microns_per_pixel=SLIDE_MPP,
            hotspot_window_um=40.0,
        )
    want = expected(
        fixture.truth["Ki67"],
        threshold=0.5,
        pixel_um=(0.5, 0.5),
        scale=(2.0, 2.0),
        window_um=40.0,
        slide=(1040, 600),
    )
    assert_matches(got, want, exact_percentiles=False)


def test_a_coarser_level_is_summarised_at_its_own_scale() -> None:
    fixture = make(markers=("CD8",))
    with served(fixture) as results:
        summaries, _, _ = summarise_job(
            results,
            ["CD8"],
            threshold=0.5,
            slide_width=520,
            slide_height=300,
            microns_per_pixel=SLIDE_MPP,
            hotspot_window_um=40.0,
            level=1,
        )
    want = expected(
        fixture.level_truth("CD8", 1),
        threshold=0.5,
        pixel_um=(0.5, 0.5),
        scale=(2.0, 2.0),
        window_um=40.0,
        slide=(520, 300),
    )
    assert_matches(summaries[0], want, exact_percentiles=False)


def test_scale_from_the_root_microns_per_pixel() -> None:
    fixture = make("flat", markers=("CD8",), microns_per_pixel=1.0)  # flat: no coordinateTransformations
    with served(fixture) as results:
        summaries, _, _ = summarise_job(
            results, ["CD8"], threshold=0.5, slide_width=2080, slide_height=1200, microns_per_pixel=SLIDE_MPP,
            hotspot_window_um=40.0,
        )  # fmt: skip
    want = expected(
        fixture.truth["CD8"],
        threshold=0.5,
        pixel_um=(1.0, 1.0),
        scale=(4.0, 4.0),
        window_um=40.0,
        slide=(2080, 1200),
    )
    assert_matches(summaries[0], want, exact_percentiles=False)


def test_scale_from_slide_size_when_the_store_says_nothing() -> None:
    fixture = make("flat", markers=("CD8",))
    with served(fixture) as results:
        got = summarise_marker(
            results.open_marker("CD8"),
            threshold=0.5,
            slide_width=1560,
            slide_height=900,
            microns_per_pixel=SLIDE_MPP,
            hotspot_window_um=30.0,
        )
    want = expected(
        fixture.truth["CD8"],
        threshold=0.5,
        pixel_um=(0.75, 0.75),
        scale=(3.0, 3.0),
        window_um=30.0,
        slide=(1560, 900),
    )
    assert_matches(got, want, exact_percentiles=False)


def test_unknown_slide_pixel_size_leaves_areas_unknown_but_keeps_the_rest() -> None:
    fixture = make(markers=("CD8",), units=None)  # unit-less scales: nothing says how big a pixel is
    with served(fixture) as results:
        got = summarise_marker(
            results.open_marker("CD8"),
            threshold=0.5,
            slide_width=520,
            slide_height=300,
            microns_per_pixel=0.0,
        )
    assert math.isnan(got.positive_area_mm2) and math.isnan(got.tissue_area_mm2)
    truth = fixture.truth["CD8"]
    assert got.positive_fraction == pytest.approx(
        np.nansum(truth >= 0.5) / np.count_nonzero(~np.isnan(truth))
    )


def test_missing_and_unreadable_markers_get_plain_reasons() -> None:
    fixture = make(markers=("CD8", "PanCK", "Ki67"), missing_datasets=["markers/Ki67/0"])
    shard = "markers/PanCK/0/c/0/1/1"
    fixture.files[shard] = bytes(len(fixture.files[shard]))  # storage returned garbage for one shard
    with served(fixture) as results:
        summaries, missing, _ = summarise_job(
            results,
            ["CD8", "PanCK", "Ki67", "CD3"],
            threshold=0.5,
            slide_width=520,
            slide_height=300,
            microns_per_pixel=SLIDE_MPP,
        )
    assert [s.marker for s in summaries] == ["CD8"]
    assert set(missing) == {"PanCK", "Ki67", "CD3"}
    assert "PanCK" in missing["PanCK"] and "cannot be decoded" in missing["PanCK"]
    assert "Ki67" in missing["Ki67"] and "markers/Ki67/0" in missing["Ki67"]
    assert "CD3 is not in these results" in missing["CD3"]


def test_a_map_without_tissue_is_reported_not_summarised() -> None:
    fixture = make(markers=("CD8",))
    for key in [k for k in fixture.files if k.startswith("markers/CD8/0/c/")]:
        del fixture.files[key]
    with served(fixture) as results:
        summaries, missing, _ = summarise_job(
            results, ["CD8"], threshold=0.5, slide_width=520, slide_height=300, microns_per_pixel=SLIDE_MPP
        )
    assert summaries == []
    assert "no tissue" in missing["CD8"]


def test_threshold_outside_unit_interval_is_refused() -> None:
    fixture = make(markers=("CD8",))
    with served(fixture) as results, pytest.raises(ValueError, match="threshold"):
        summarise_marker(
            results.open_marker("CD8"),
            threshold=1.5,
            slide_width=520,
            slide_height=300,
            microns_per_pixel=0.25,
        )


def test_summary_of_a_job_on_the_fake_strand_server(tmp_path: Path) -> None:
    import tifffile

    from strand_client import Client
    from strand_client.testing import FakeStrandServer

    slide = tmp_path / "slide.tif"
    tifffile.imwrite(slide, np.zeros((600, 960, 3), dtype=np.uint8))
    with (
        FakeStrandServer(job_duration=0.2, sse_tick=0.02) as fake,
        Client(api_key=fake.api_key, base_url=fake.url, timeout=10.0) as client,
    ):
        job = client.predict.submit(client.uploads.upload_file(slide).id, ["CD8", "PanCK"])
        assert job.wait(timeout=60).status == "completed"
        fixture = fake.results_fixture(job.id)
        with job.results() as results:
            summaries, missing, _ = summarise_job(
                results,
                ["CD8", "PanCK"],
                threshold=0.5,
                slide_width=960,
                slide_height=600,
                microns_per_pixel=0.5,
            )
    assert missing == {}
    rows, cols = fixture.truth["CD8"].shape
    scale = (600 / rows, 960 / cols)  # the map covers the slide: anisotropic when the aspects differ
    for summary in summaries:
        assert summary.geometry_mismatch is None
        want = expected(
            fixture.truth[summary.marker],
            threshold=0.5,
            pixel_um=(0.5 * scale[0], 0.5 * scale[1]),
            scale=scale,
            window_um=500.0,
            slide=(960, 600),
        )
        assert_matches(summary, want, exact_percentiles=False)


def test_a_unit_the_slide_contradicts_is_overruled_by_slide_size_and_reported() -> None:
    # Written as if slide pixels were 0.5 µm: the metadata says 0.5 µm map pixels = 2 slide px at 0.25 µm,
    # but the 300 x 520 map covers the 300 x 520 px slide one to one.
    fixture = make(markers=("CD8", "Ki67"), slide_mpp=0.5)
    with served(fixture) as results:
        summaries, missing, _ = summarise_job(
            results, ["CD8"], threshold=0.5, slide_width=520, slide_height=300, microns_per_pixel=SLIDE_MPP,
            hotspot_window_um=20.0,
        )  # fmt: skip
    assert missing == {}
    (got,) = summaries
    assert got.geometry_mismatch is not None
    assert "puts 2 x 2 slide pixels" in got.geometry_mismatch and "gives 1 x 1" in got.geometry_mismatch
    want = expected(
        fixture.truth["CD8"], threshold=0.5, pixel_um=(SLIDE_MPP, SLIDE_MPP), scale=(1.0, 1.0),
        window_um=20.0, slide=(520, 300),
    )  # fmt: skip
    assert_matches(got, want, exact_percentiles=False)


def test_contradictory_geometry_reports_that_marker_missing_and_summarises_the_rest() -> None:
    fixture = make(markers=("CD8", "Ki67"))
    root = json.loads(fixture.files["zarr.json"])
    entry = next(e for e in root["attributes"]["multiscales"] if e["name"] == "Ki67")
    entry["datasets"][0]["coordinateTransformations"][0]["scale"] = [1.0, 0.0, 0.25]
    fixture.files["zarr.json"] = json.dumps(root).encode()
    with served(fixture) as results:
        summaries, missing, _ = summarise_job(
            results, ["CD8", "Ki67"], threshold=0.5, slide_width=520, slide_height=300,
            microns_per_pixel=SLIDE_MPP,
        )  # fmt: skip
    assert [s.marker for s in summaries] == ["CD8"]
    assert set(missing) == {"Ki67"}
    assert "Ki67" in missing["Ki67"] and "zero or negative" in missing["Ki67"]


def test_a_map_taken_for_padding_that_holds_data_past_the_slide_is_a_mismatch() -> None:
    # 100 x 100 map pixels padded to one 128 x 128 shard; written for 0.5 µm slide pixels, so at
    # 0.125 µm the metadata puts the 100 x 100 px slide on the first 25 x 25 map pixels (the rest
    # could be padding), which leaves the rest of the tissue beyond the slide: that is no padding.
    fixture = build_results(
        ["CD8"], 100, 100, chunk=32, chunks_per_shard=4, pad_to_shards=True, slide_mpp=0.5, with_he=False
    )
    assert fixture.level_shapes[0] == (128, 128)
    with served(fixture) as results:
        got = summarise_marker(
            results.open_marker("CD8"),
            threshold=0.5,
            slide_width=100,
            slide_height=100,
            microns_per_pixel=0.125,
            hotspot_window_um=5.0,
        )
    assert got.geometry_mismatch is not None and "no padding" in got.geometry_mismatch
    scale = (100 / 128, 100 / 128)  # slide size / map size, as the contract then says
    want = expected(
        fixture.truth["CD8"],
        threshold=0.5,
        pixel_um=(0.125 * scale[0], 0.125 * scale[1]),
        scale=scale,
        window_um=5.0,
        slide=(100, 100),
    )
    assert_matches(got, want, exact_percentiles=False)


def test_a_padded_map_counts_only_the_pixels_over_the_slide() -> None:
    # Integer map, no tissue node: every pixel is tissue, the zero padding past the slide included,
    # unless the reader stops at the slide's edge.
    fixture = build_results(
        ["CD8"], 100, 200, chunk=32, chunks_per_shard=4, pad_to_shards=True, dtype="uint8",
        tissue_mode="none", slide_mpp=SLIDE_MPP, slide_scale=2.0, with_he=False,
    )  # fmt: skip
    with served(fixture) as results:
        got = summarise_marker(
            results.open_marker("CD8"),
            threshold=0.5,
            slide_width=400,
            slide_height=200,
            microns_per_pixel=SLIDE_MPP,
            hotspot_window_um=10.0,
        )
    assert got.geometry_mismatch is None
    truth = fixture.truth["CD8"]
    assert np.isnan(truth[100:, :]).all() and np.isnan(truth[:, 200:]).all()
    want = expected(
        truth, threshold=0.5, pixel_um=(0.5, 0.5), scale=(2.0, 2.0), window_um=10.0, slide=(400, 200)
    )
    assert got.tissue_area_mm2 == pytest.approx(100 * 200 * 0.25e-6)
    assert_matches(got, want, exact_percentiles=True)


def test_an_image_group_from_an_independent_ome_zarr_writer() -> None:
    """Metadata made by yaozarrs' OME-NGFF 0.5 builder, not by our fake: micrometre axes, a translation."""
    import zarr
    from yaozarrs import DimSpec, v05
    from zarr.storage import MemoryStore

    rows, cols = 75, 120
    dims = [
        DimSpec(name="c", size=1, type="channel"),
        DimSpec(name="y", size=rows, scale=2.0, unit="micrometer"),  # 4 slide px at 0.5 µm
        DimSpec(name="x", size=cols, scale=1.25, unit="micrometer", translation=10.0),  # 2.5 px, from x=20
    ]
    image = v05.Image(multiscales=[v05.Multiscale.from_dims(dims, name="CD8", n_levels=2)])
    rng = np.random.default_rng(7)
    values = rng.random((rows, cols)).astype(np.float32)
    values[:10, :] = np.nan  # background
    buffers: dict[str, Any] = {}
    root = zarr.open_group(MemoryStore(buffers), mode="w")
    group = root.create_group("CD8", attributes={"ome": image.model_dump(mode="json", exclude_none=True)})
    for level, dataset in enumerate(image.multiscales[0].datasets):
        step = 2**level
        level_values = values[::step, ::step]
        array = group.create_array(
            dataset.path, shape=(1, *level_values.shape), dtype="float32", chunks=(1, 32, 32),
            fill_value=np.nan, dimension_names=("c", "y", "x"),
        )  # fmt: skip
        array[0] = level_values
    fixture = ResultsFixture(
        files={key: buffer.to_bytes() for key, buffer in buffers.items()},
        truth={"CD8": values.astype(np.float64)},
        tissue=~np.isnan(values),
        layout="ome-ngff",
        dataset_paths={"CD8": "CD8/0"},
    )
    slide_w, slide_h = 20 + round(cols * 2.5), rows * 4
    with served(fixture) as results:
        marker_map = results.open_marker("CD8")
        geometry = marker_map.slide_geometry(slide_mpp=0.5, slide_size=(slide_h, slide_w))
        got = summarise_marker(
            marker_map,
            threshold=0.6,
            slide_width=slide_w,
            slide_height=slide_h,
            microns_per_pixel=0.5,
            hotspot_window_um=30.0,
        )
    assert geometry.scale == (4.0, 2.5) and geometry.offset == (0.0, 20.0) and geometry.mismatch is None
    want = expected(
        fixture.truth["CD8"],
        threshold=0.6,
        pixel_um=(2.0, 1.25),
        scale=(4.0, 2.5),
        window_um=30.0,
        slide=(slide_w - 20, slide_h),
    )
    shifted = [Hotspot(h.x + 20, h.y, h.width, h.height, h.positive_fraction) for h in want.hotspots]
    assert_matches(
        got, MarkerSummary(**{**dataclasses.asdict(want), "hotspots": shifted}), exact_percentiles=False
    )
