"""The result reader over real HTTP: every layout, missing pieces, ranges, retries, errors, mirror, AnnData.

Stores come from `build_results` (zarr-python writes them, so codecs and shard
indexes are real) and are served by uvicorn on a free port, wrapped in a small
recorder that logs requests and can answer with injected failures.
"""

from __future__ import annotations

import asyncio
import json
import mmap
import socket
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from zarr.abc.store import RangeByteRequest
from zarr.core.sync import sync

from strand_client._errors import AuthError, ServerError, StrandConnectionError
from strand_client._results import JobResults, ResultsError
from strand_client._retry import RetryPolicy
from strand_client.testing.zarr_results import (
    LAYOUTS,
    ResultsFixture,
    build_results,
    results_files_app,
    serve_app,
)

API_KEY = "sk-strand-results-test"
FAST = RetryPolicy(max_retries=4, base_delay=0.01, max_delay=0.05)
MARKERS = ["CD8", "PanCK", "Ki67"]


@dataclass
class Recorder:
    """ASGI wrapper: logs (key, Range) per request, tracks peak concurrency, plays scripted failures."""

    app: Any
    delay: float = 0.0
    requests: list[tuple[str, str | None]] = field(default_factory=list)
    failures: dict[str, list[tuple[int, dict[str, str]]]] = field(default_factory=dict)
    active: int = 0
    peak: int = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        key = scope["path"].split("/results/files/", 1)[-1]
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        self.requests.append((key, headers.get("range")))
        scripted = self.failures.get(key)
        if scripted:
            status, extra = scripted.pop(0)
            await send(
                {
                    "type": "http.response.start",
                    "status": status,
                    "headers": [(b"content-length", b"0")]
                    + [(k.encode(), v.encode()) for k, v in extra.items()],
                }
            )
            await send({"type": "http.response.body", "body": b""})
            return
        self.active += 1
        self.peak = max(self.peak, self.active)
        try:
            if self.delay:
                await asyncio.sleep(self.delay)  # holds requests open so overlap is observable
            await self.app(scope, receive, send)
        finally:
            self.active -= 1

    def keys(self) -> list[str]:
        return [key for key, _ in self.requests]


@contextmanager
def served(
    fixture: ResultsFixture | dict[str, bytes],
    *,
    honour_range: bool = True,
    delay: float = 0.0,
    api_key: str = API_KEY,
    **options: Any,
) -> Iterator[tuple[JobResults, Recorder]]:
    files = fixture.files if isinstance(fixture, ResultsFixture) else fixture
    recorder = Recorder(results_files_app(files, api_key=API_KEY, honour_range=honour_range), delay=delay)
    options.setdefault("retry_policy", FAST)
    with (
        serve_app(recorder) as url,
        JobResults(api_root=f"{url}/api/v1", api_key=api_key, job_id="job-1", **options) as results,
    ):
        yield results, recorder


def small(layout: str = "sharded", **kwargs: Any) -> ResultsFixture:
    """A map several shards wide (64-px chunks, 4 x 4 per shard) with background corners."""
    kwargs.setdefault("chunk", 64)
    kwargs.setdefault("chunks_per_shard", 4)
    return build_results(kwargs.pop("markers", MARKERS), 300, 520, layout=layout, **kwargs)


def full(results: JobResults, marker: str, level: int = 0) -> np.ndarray:
    marker_map = results.open_marker(marker, level)
    return marker_map.read(0, marker_map.height, 0, marker_map.width)


def assert_same_map(got: np.ndarray, truth: np.ndarray, value_max: float = 1.0) -> None:
    values = got.astype(np.float64) / value_max
    assert values.shape == truth.shape
    inside = ~np.isnan(truth)
    assert np.array_equal(values[inside], truth[inside])


@pytest.mark.parametrize(
    ("layout", "ndim"), [(layout, 3) for layout in LAYOUTS] + [("flat", 2), ("sharded", 2)]
)
def test_every_layout_reads_back_exactly(layout: str, ndim: int) -> None:
    fixture = small(layout, ndim=ndim)
    with served(fixture) as (results, _):
        for marker in MARKERS:
            got = full(results, marker)
            assert got.ndim == 2
            assert_same_map(got, fixture.truth[marker])
            assert np.array_equal(np.isnan(got), np.isnan(fixture.truth[marker]))


def test_sharded_store_is_the_platform_layout_and_absent_shards_read_as_fill() -> None:
    fixture = small("sharded", microns_per_pixel=0.5)
    root = json.loads(fixture.files["zarr.json"])["attributes"]
    assert [entry["name"] for entry in root["multiscales"]] == ["H&E", *MARKERS]
    assert root["strand"]["micronsPerPixel"] == 0.5
    meta = json.loads(fixture.files["markers/CD8/0/zarr.json"])
    (codec,) = meta["codecs"]
    assert meta["shape"] == [1, 300, 520]
    assert codec["name"] == "sharding_indexed"
    assert [c["name"] for c in codec["configuration"]["codecs"]] == ["bytes", "zstd"]
    assert [c["name"] for c in codec["configuration"]["index_codecs"]] == ["bytes", "crc32c"]
    assert codec["configuration"]["index_location"] == "end"
    # Shards over background only are never written (zarr skips all-fill shards, as the platform does).
    grid = {f"markers/CD8/0/c/0/{r}/{c}" for r in range(2) for c in range(3)}
    absent = grid - set(fixture.files)
    assert absent and absent != grid
    with served(fixture) as (results, recorder):
        got = full(results, "CD8")
        assert absent <= set(recorder.keys())
        assert results.microns_per_pixel() == 0.5
    for key in absent:
        row, col = (int(v) for v in key.rsplit("/", 2)[-2:])
        assert np.isnan(got[row * 256 : (row + 1) * 256, col * 256 : (col + 1) * 256]).all()
    assert_same_map(got, fixture.truth["CD8"])


def test_platform_default_geometry_is_256_chunks_packed_8_by_8() -> None:
    fixture = build_results(["CD8"], 40, 50)
    codec = json.loads(fixture.files["markers/CD8/0/zarr.json"])["codecs"][0]
    assert codec["configuration"]["chunk_shape"] == [1, 256, 256]
    assert json.loads(fixture.files["markers/CD8/0/zarr.json"])["chunk_grid"]["configuration"][
        "chunk_shape"
    ] == [
        1,
        2048,
        2048,
    ]


def test_marker_names_skip_a_dataset_the_store_lacks_with_a_warning() -> None:
    fixture = small(missing_datasets=["markers/Ki67/0"])
    with served(fixture) as (results, _):
        with pytest.warns(UserWarning, match=r"Ki67.*markers/Ki67/0"):
            assert results.marker_names() == ["CD8", "PanCK"]
        with pytest.raises(ResultsError, match=r"Ki67.*markers/Ki67/0") as caught:
            results.open_marker("Ki67")
        assert caught.value.marker == "Ki67"
        assert caught.value.path == "markers/Ki67/0"


def test_a_manifest_naming_a_missing_level_fails_only_that_level() -> None:
    fixture = small(missing_datasets=["markers/Ki67/1"])
    with served(fixture) as (results, _):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert results.marker_names() == MARKERS
        assert_same_map(full(results, "Ki67"), fixture.truth["Ki67"])
        with pytest.raises(ResultsError, match=r"Ki67.*markers/Ki67/1"):
            results.open_marker("Ki67", 1)
        with pytest.raises(ResultsError, match=r"Ki67: level 5 .* 2 level"):
            results.open_marker("Ki67", 5)


def test_unknown_marker_is_a_clear_error() -> None:
    with (
        served(small()) as (results, _),
        pytest.raises(ResultsError, match=r"Marker CD3 is not in .*CD8, PanCK"),
    ):
        results.open_marker("CD3")


# µm per unit, typed here from OME-NGFF 0.5's unit list (UDUNITS-2), not taken from the reader.
MICRONS_PER = {"micrometer": 1.0, "nanometer": 1e-3, "millimeter": 1e3}


@pytest.mark.parametrize("units", ["micrometer", "nanometer", "millimeter", None])
@pytest.mark.parametrize("layout", ["sharded", "ome-ngff"])
def test_levels_carry_their_geometry_in_the_axes_units(layout: str, units: str | None) -> None:
    fixture = small(layout, slide_scale=(2.0, 2.5), units=units, slide_mpp=0.4)
    root = json.loads(fixture.files["zarr.json"])["attributes"]
    entry = next(e for e in multiscales_of(root) if e["name"] == "PanCK")
    y_axis, x_axis = entry["axes"][-2:]
    assert y_axis.get("unit") == x_axis.get("unit") == units
    written = entry["datasets"][0]["coordinateTransformations"][0]["scale"][-2:]
    if units is not None:  # OME-NGFF: the scale is the pixel size in the axes' unit
        assert written == pytest.approx([2.0 * 0.4 / MICRONS_PER[units], 2.5 * 0.4 / MICRONS_PER[units]])
    else:
        assert written == [2.0, 2.5]
    with served(fixture) as (results, _):
        level0, level1 = results.open_marker("PanCK", 0), results.open_marker("PanCK", 1)
        slide = (600, 1300)  # (height, width): 300 x 520 map pixels of 2.0 x 2.5 slide pixels
        g0 = level0.slide_geometry(slide_mpp=0.4, slide_size=slide)
        g1 = level1.slide_geometry(slide_mpp=0.4, slide_size=slide)
        assert g0.scale == pytest.approx((2.0, 2.5), rel=1e-12)
        assert g1.scale == pytest.approx((4.0, 5.0), rel=1e-12)
        assert g0.pixel_um == pytest.approx((0.8, 1.0), rel=1e-12)
        assert g0.mismatch is None and g1.mismatch is None
        assert (level0.downsample, level1.downsample) == (1.0, 2.0)
        assert (level1.height, level1.width) == (150, 260)
        assert_same_map(full(results, "PanCK", 1), fixture.level_truth("PanCK", 1))


def multiscales_of(attributes: dict[str, Any]) -> list[dict[str, Any]]:
    return attributes.get("multiscales") or attributes["ome"]["multiscales"]


@pytest.mark.parametrize("split", [False, True])
def test_a_translation_moves_the_map_and_transformations_compose(split: bool) -> None:
    fixture = small(slide_scale=(2.0, 2.0), translation=(10.0, 40.0), split_transforms=split, slide_mpp=0.5)
    entry = next(
        e for e in json.loads(fixture.files["zarr.json"])["attributes"]["multiscales"] if e["name"] == "CD8"
    )
    assert ("coordinateTransformations" in entry) is split
    with served(fixture) as (results, _):
        level0, level1 = results.open_marker("CD8", 0), results.open_marker("CD8", 1)
        slide = (10 + 600, 40 + 1040)
        g0 = level0.slide_geometry(slide_mpp=0.5, slide_size=slide)
        g1 = level1.slide_geometry(slide_mpp=0.5, slide_size=slide)
    assert g0.offset == pytest.approx((10.0, 40.0)) and g1.offset == pytest.approx((10.0, 40.0))
    assert g0.scale == pytest.approx((2.0, 2.0)) and g1.scale == pytest.approx((4.0, 4.0))
    assert g0.mismatch is None and g1.mismatch is None


def test_metadata_that_contradicts_the_slide_loses_to_slide_size_and_says_so() -> None:
    fixture = small(slide_scale=2.0, slide_mpp=0.5)  # written for 0.5 µm slide pixels
    with served(fixture) as (results, _):
        # The slide is really 0.25 µm/px: the metadata would put 4 slide px in a map pixel, but
        # 600 x 1040 slide px over a 300 x 520 map is 2.
        geometry = results.open_marker("CD8").slide_geometry(slide_mpp=0.25, slide_size=(600, 1040))
    assert geometry.scale == (2.0, 2.0)
    assert geometry.source == "slide size / map size"
    assert geometry.mismatch is not None
    assert "4 x 4" in geometry.mismatch and "gives 2 x 2" in geometry.mismatch


@pytest.mark.parametrize("layout", ["sharded", "unsharded"])
def test_a_map_padded_to_whole_shards_keeps_its_metadata_geometry(layout: str) -> None:
    fixture = small(layout, slide_scale=(2.0, 3.0), pad_to_shards=True)  # 300 x 520 padded to 512 x 768
    with served(fixture) as (results, _):
        marker_map = results.open_marker("CD8")
        assert (marker_map.height, marker_map.width) == (fixture.level_shapes[0]) != (300, 520)
        geometry = marker_map.slide_geometry(slide_mpp=0.5, slide_size=(600, 1560))
        assert geometry.mismatch is None and geometry.scale == pytest.approx((2.0, 3.0))
        assert geometry.slide_window((marker_map.height, marker_map.width), (600, 1560)) == (0, 300, 0, 520)
        assert_same_map(full(results, "CD8"), fixture.truth["CD8"])


@pytest.mark.parametrize("rounding", ["ceil", "floor"])
def test_odd_sized_levels_round_as_written_and_still_agree_with_the_slide(rounding: str) -> None:
    fixture = build_results(
        ["CD8"], 301, 519, level_rounding=rounding, levels=3, chunk=64, chunks_per_shard=4
    )
    expected = {"ceil": [(301, 519), (151, 260), (76, 130)], "floor": [(301, 519), (150, 259), (75, 129)]}
    with served(fixture) as (results, _):
        for level, shape in enumerate(expected[rounding]):
            marker_map = results.open_marker("CD8", level)
            assert (marker_map.height, marker_map.width) == shape
            geometry = marker_map.slide_geometry(slide_mpp=0.5, slide_size=(301, 519))
            assert geometry.mismatch is None and geometry.scale == (2.0**level, 2.0**level)
            assert_same_map(full(results, "CD8", level), fixture.level_truth("CD8", level))


def _edit_entry(fixture: ResultsFixture, marker: str, edit: Any) -> None:
    root = json.loads(fixture.files["zarr.json"])
    entry = next(e for e in root["attributes"]["multiscales"] if e["name"] == marker)
    edit(entry)
    fixture.files["zarr.json"] = json.dumps(root).encode()


def _set_scale(value: list[float]) -> Any:
    def edit(entry: dict[str, Any]) -> None:
        entry["datasets"][0]["coordinateTransformations"][0]["scale"] = value

    return edit


def _set_unit(unit: str) -> Any:
    def edit(entry: dict[str, Any]) -> None:
        for axis in entry["axes"][-2:]:
            axis["unit"] = unit

    return edit


def _drop_axis(entry: dict[str, Any]) -> None:
    entry["axes"] = entry["axes"][1:]
    for dataset in entry["datasets"]:
        dataset["coordinateTransformations"][0]["scale"] = dataset["coordinateTransformations"][0]["scale"][
            1:
        ]


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        (_set_scale([1.0, 0.0, 0.5]), "zero or negative"),
        (_set_scale([1.0, -0.5, -0.5]), "zero or negative"),
        (_set_unit("pixel"), "'pixel', which is not an OME-NGFF unit of length"),
        (_set_unit("micron"), "'micron', which is not an OME-NGFF unit of length"),
        (_drop_axis, "declares 2 axes but markers/Ki67/0 has 3 dimensions"),
        (_set_scale([1.0, 0.5]), "has 2 values but the axes declare 3"),
    ],
)
def test_contradictory_geometry_makes_that_marker_unreadable_in_plain_words(edit: Any, reason: str) -> None:
    fixture = small()
    _edit_entry(fixture, "Ki67", edit)
    with served(fixture) as (results, _):
        with pytest.raises(ResultsError, match=r"^Marker Ki67: ") as caught:
            results.open_marker("Ki67")
        assert reason in caught.value.message
        assert caught.value.marker == "Ki67"
        assert_same_map(full(results, "CD8"), fixture.truth["CD8"])  # the others still read


@pytest.mark.parametrize("layout", ["sharded", "flat", "ome-ngff"])
def test_integer_maps_with_a_tissue_node(layout: str) -> None:
    fixture = small(layout, dtype="uint16", tissue_mode="node")
    with served(fixture) as (results, _):
        marker_map = results.open_marker("CD8")
        assert marker_map.value_max == 65535
        assert marker_map.dtype == np.uint16
        assert marker_map.tissue is not None
        mask = marker_map.read_tissue(0, marker_map.height, 0, marker_map.width)
        assert mask is not None
        assert np.array_equal(mask, fixture.tissue)
        assert_same_map(full(results, "CD8"), fixture.truth["CD8"], 65535)


def test_a_window_inside_a_shard_is_read_with_range_requests() -> None:
    fixture = small()
    with served(fixture) as (results, recorder):
        window = results.open_marker("CD8").read(100, 140, 300, 340)
        ranged = [(key, rng) for key, rng in recorder.requests if key == "markers/CD8/0/c/0/0/1"]
        assert ranged, "the shard holding the window was not fetched"
        assert all(rng is not None and rng.startswith("bytes=") for _, rng in ranged)
    assert_same_map(window, fixture.truth["CD8"][100:140, 300:340])


def test_a_server_that_ignores_range_is_sliced_locally() -> None:
    fixture = small()
    with served(fixture, honour_range=False) as (results, _):
        window = results.open_marker("CD8").read(100, 140, 300, 340)
    assert_same_map(window, fixture.truth["CD8"][100:140, 300:340])


def test_long_objects_arrive_whole_in_a_mapping_of_their_own_and_long_documents_still_parse() -> None:
    """A shard-sized body goes into its own anonymous mapping (returned to the system when dropped, not
    kept by malloc's heap); every reader of it still gets the served bytes: zarr, a ranged read, and the
    JSON parser, for a metadata document long enough to take that path too."""
    fixture = small()
    files = dict(fixture.files)
    root = json.loads(files["zarr.json"])
    root["attributes"]["padding"] = "x" * (2 << 20)
    files["zarr.json"] = json.dumps(root).encode()
    blob = np.random.default_rng(7).bytes(3 << 20)
    files["blob"] = blob
    with served(files) as (results, _):
        whole = sync(results._fetcher.get("blob"))
        assert isinstance(whole, mmap.mmap) and whole[:] == blob
        part = sync(results._fetcher.get("blob", RangeByteRequest(1 << 20, (2 << 20) + 5)))
        assert part is not None and bytes(part) == blob[1 << 20 : (2 << 20) + 5]
        assert_same_map(full(results, "CD8"), fixture.truth["CD8"])
        assert results.marker_names() == MARKERS


def test_busy_answers_are_retried_honouring_retry_after() -> None:
    fixture = small()
    key = "markers/PanCK/0/c/0/0/1"  # a whole shard: one GET per attempt
    with served(fixture) as (results, recorder):
        recorder.failures[key] = [(503, {"Retry-After": "0"}), (429, {"Retry-After": "0"}), (502, {})]
        assert_same_map(full(results, "PanCK"), fixture.truth["PanCK"])
        assert recorder.keys().count(key) == 4


def test_retries_are_bounded_and_the_error_names_the_marker() -> None:
    fixture = small()
    key = "markers/PanCK/0/c/0/0/1"  # a whole shard: one GET per attempt
    with served(fixture, retry_policy=RetryPolicy(max_retries=2, base_delay=0.01)) as (results, recorder):
        recorder.failures[key] = [(503, {})] * 10
        marker_map = results.open_marker("PanCK")
        with pytest.raises(ServerError) as caught:
            marker_map.read(0, marker_map.height, 0, marker_map.width)
        assert recorder.keys().count(key) == 3
        assert any("PanCK" in note for note in getattr(caught.value, "__notes__", []))


def test_a_wrong_key_is_an_auth_error() -> None:
    with served(small(), api_key="sk-strand-wrong") as (results, _), pytest.raises(AuthError):
        results.root_attributes()


def test_an_unreachable_server_is_a_connection_error_after_retries() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    policy = RetryPolicy(max_retries=1, base_delay=0.01)
    with (
        JobResults(
            api_root=f"http://127.0.0.1:{port}/api/v1", api_key=API_KEY, job_id="j", retry_policy=policy
        ) as results,
        pytest.raises(StrandConnectionError, match=r"zarr.json .* 2 attempts"),
    ):
        results.root_attributes()


def test_chunk_fetches_run_concurrently_but_within_the_cap() -> None:
    fixture = small("unsharded", markers=["CD8"])  # 5 x 9 = 45 chunk objects
    with served(fixture, delay=0.02, concurrency=3) as (results, recorder):
        assert_same_map(full(results, "CD8"), fixture.truth["CD8"])
    assert 2 <= recorder.peak <= 3


def test_blocks_cover_the_map_once_in_storage_aligned_windows() -> None:
    fixture = small(markers=["CD8"])
    with served(fixture) as (results, _):
        marker_map = results.open_marker("CD8")
        assert marker_map.storage_block == (256, 256)
        windows = marker_map.block_windows(block_bytes=256 * 256 * 4)
        assert windows == [(0, 256, 0, 256), (0, 256, 256, 512), (0, 256, 512, 520),
                           (256, 300, 0, 256), (256, 300, 256, 512), (256, 300, 512, 520)]  # fmt: skip
        seen = np.zeros((300, 520), dtype=np.int64)
        for block in marker_map.blocks(block_bytes=256 * 256 * 4, in_flight=2):
            h, w = block.values.shape
            seen[block.y0 : block.y0 + h, block.x0 : block.x0 + w] += 1
            assert_same_map(
                block.values, fixture.truth["CD8"][block.y0 : block.y0 + h, block.x0 : block.x0 + w]
            )
        assert (seen == 1).all()


def test_the_store_cannot_list() -> None:
    with served(small()) as (results, _), pytest.raises(NotImplementedError, match="cannot list"):
        sync(anext(results.store.list_dir("markers")))


def test_mirror_is_byte_for_byte_and_drops_missing_datasets(tmp_path: Path) -> None:
    fixture = small(missing_datasets=["markers/Ki67/1"])
    with served(fixture) as (results, _), pytest.warns(UserWarning, match="markers/Ki67/1"):
        out = results.mirror_to(tmp_path / "copy")
    written = {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert set(written) == set(fixture.files)
    for key, data in fixture.files.items():
        if key != "zarr.json":
            assert written[key] == data, key
    manifest = json.loads(written["zarr.json"])["attributes"]["multiscales"]
    ki67 = next(entry for entry in manifest if entry["name"] == "Ki67")
    assert [d["path"] for d in ki67["datasets"]] == ["markers/Ki67/0"]
    group = zarr.open_group(out, mode="r")
    assert_same_map(np.asarray(group["markers/CD8/0"][0]), fixture.truth["CD8"])


def test_mirror_of_a_flat_store_reaches_markers_by_name(tmp_path: Path) -> None:
    fixture = small("flat", markers=["CD8", "PanCK"], tissue_mode="node", dtype="uint8")
    with served(fixture) as (results, _):
        out = results.mirror_to(tmp_path / "flat", markers=["CD8", "PanCK", "tissue"])
    written = {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert written == fixture.files


def test_anndata_has_one_observation_per_tissue_pixel() -> None:
    fixture = small(slide_scale=2.0, markers=["CD8", "Ki67"])
    with served(fixture) as (results, _):
        adata = results.to_anndata(level=1, slide_mpp=0.5)
        with pytest.raises(ResultsError, match="coarser level"):
            results.to_anndata(level=0, max_pixels=10_000)
    truth = {m: fixture.level_truth(m, 1) for m in ("CD8", "Ki67")}
    rows, cols = np.nonzero(~np.isnan(truth["CD8"]))
    assert adata.shape == (len(rows), 2)
    assert list(adata.var_names) == ["CD8", "Ki67"]
    assert np.allclose(adata.X[:, 1], truth["Ki67"][rows, cols], atol=1e-7)
    assert np.array_equal(adata.obsm["spatial"], np.stack([(cols + 0.5) * 4, (rows + 0.5) * 4], axis=1))
    assert adata.uns["strand"]["job_id"] == "job-1"
    assert adata.uns["strand"]["map_shape"] == [150, 260]


def test_the_fake_strand_server_serves_a_store_the_reader_reads(
    fake: Any, client: Any, tiff_slide: Path
) -> None:
    upload = client.uploads.upload_file(tiff_slide)
    job = client.predict.submit(upload.id, markers=["CD8", "PanCK"])
    assert job.wait(timeout=60).status == "completed"
    fixture = fake.results_fixture(job.id)
    with job.results() as results:
        assert results.marker_names() == ["CD8", "PanCK"]
        assert_same_map(full(results, "PanCK"), fixture.truth["PanCK"])


@pytest.mark.parametrize("layout", ["flat", "sharded"])
def test_download_results_mirrors_every_node_the_job_names_byte_for_byte(
    fake: Any, client: Any, tiff_slide: Path, tmp_path: Path, layout: str
) -> None:
    fake.options.results_layout = layout
    fake.options.results_tissue_mode = "node"
    fake.options.results_dtype = "uint16"
    fake.options.results_shape = (300, 520)
    fake.options.results_chunk, fake.options.results_chunks_per_shard = 64, 2
    job = client.predict.submit(client.uploads.upload_file(tiff_slide).id, markers=["CD8", "PanCK"])
    assert job.wait(timeout=60).status in ("completed", "partial_failed")
    fixture = fake.results_fixture(job.id)
    out = job.download_results(path=tmp_path / "copy")
    written = {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert written == fixture.files  # every node and chunk present on the server; absent ones stay absent
    if layout == "flat":  # 64-px chunks over 300 x 520: background-only corners are never stored
        grid = {f"CD8/c/0/{r}/{c}" for r in range(5) for c in range(9)}
        assert grid & set(written) and grid - set(written)
    assert any(key.startswith("tissue/") for key in written)


# Every OME-NGFF 0.5 space unit in metres (UDUNITS-2 definitions), typed from the spec's list.
METRES = {
    "angstrom": 1e-10, "attometer": 1e-18, "centimeter": 1e-2, "decimeter": 1e-1, "exameter": 1e18,
    "femtometer": 1e-15, "foot": 0.3048, "gigameter": 1e9, "hectometer": 1e2, "inch": 0.0254,
    "kilometer": 1e3, "megameter": 1e6, "meter": 1.0, "micrometer": 1e-6, "mile": 1609.344,
    "millimeter": 1e-3, "nanometer": 1e-9, "parsec": 3.0856775814913673e16, "petameter": 1e15,
    "picometer": 1e-12, "terameter": 1e12, "yard": 0.9144, "yoctometer": 1e-24, "yottameter": 1e24,
    "zeptometer": 1e-21, "zettameter": 1e21,
}  # fmt: skip


@pytest.mark.parametrize("unit", sorted(METRES))
def test_every_ome_ngff_unit_of_length_is_converted(unit: str) -> None:
    fixture = small(markers=["CD8"], levels=1)
    pixel_um = (0.75, 1.25)  # 3 x 5 slide pixels of 0.25 µm

    def edit(entry: dict[str, Any]) -> None:
        for axis in entry["axes"][-2:]:
            axis["unit"] = unit
        in_unit = [v * 1e-6 / METRES[unit] for v in pixel_um]
        entry["datasets"][0]["coordinateTransformations"] = [{"type": "scale", "scale": [1.0, *in_unit]}]

    _edit_entry(fixture, "CD8", edit)
    with served(fixture) as (results, _):
        geometry = results.open_marker("CD8").slide_geometry(slide_mpp=0.25, slide_size=(900, 2600))
    assert geometry.scale == pytest.approx((3.0, 5.0), rel=1e-9)
    assert geometry.pixel_um == pytest.approx(pixel_um, rel=1e-9)
    assert geometry.mismatch is None


@pytest.mark.parametrize(
    "options",
    [
        {},
        {
            "units": "nanometer",
            "slide_scale": (2.0, 2.5),
            "translation": (3.0, 5.0),
            "split_transforms": True,
        },
        {"units": "millimeter", "ndim": 2, "levels": 3, "level_rounding": "floor"},
        {"units": None, "pad_to_shards": True, "tissue_mode": "node", "dtype": "uint8"},
    ],
)
def test_the_fake_writes_ome_ngff_0_5_that_an_independent_validator_accepts(
    options: dict[str, Any], tmp_path: Path
) -> None:
    import yaozarrs

    fixture = build_results(["CD8"], 60, 90, layout="ome-ngff", chunk=16, chunks_per_shard=2, **options)
    for key, data in fixture.files.items():
        (tmp_path / key).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / key).write_bytes(data)
    groups = ["CD8", "he"] + (["tissue"] if options.get("tissue_mode") == "node" else [])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a unit outside OME-NGFF's list is only a warning there
        for group in groups:
            yaozarrs.validate_zarr_store(tmp_path / group)
