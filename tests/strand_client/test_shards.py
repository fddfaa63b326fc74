"""Our reader of the platform's sharded layout against zarr-python, the independent reader, on one store.

Every store here is written by zarr-python (`build_results`, or `zarr.create`
with explicit codecs), so shard indexes, checksums and zstd frames are the
real thing. zarr-python then reads each array whole, and ours must return the
same array element for element: NaN, fill values, absent shards and inner
chunks, partial edge shards, both index locations and both byte orders. Where
a test needs to know what a shard holds (that it really has an empty inner
chunk, say), it reads the index with a few lines of numpy written here from
the Zarr v3 sharding-indexed spec, not with the code under test.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import google_crc32c
import numpy as np
import pytest
import zarr
from zarr.codecs import BytesCodec, GzipCodec, ShardingCodec, ZstdCodec
from zarr.core.buffer import cpu
from zarr.storage import MemoryStore

from strand_client._results import JobResults, ResultsError
from strand_client._retry import RetryPolicy
from strand_client._shards import (
    ShardFormatError,
    array_layout,
    read_bands,
    read_window,
    store_fetcher,
)
from strand_client.testing.zarr_results import build_results, results_files_app, serve_app
from workers.summarise import summarise_job, summarise_marker

API_KEY = "sk-strand-shards-test"
EMPTY = 2**64 - 1  # sharding-indexed v1.0: both fields of an empty inner chunk's index entry


def memory_store(files: dict[str, bytes]) -> MemoryStore:
    return MemoryStore({key: cpu.Buffer.from_bytes(value) for key, value in files.items()})


def whole(array: zarr.Array) -> np.ndarray:
    """zarr-python's reading of the whole 2-D map (leading axes of length 1 dropped)."""
    return np.asarray(array[...]).reshape(array.shape[-2:])


def spec_index(shard: bytes, chunks: int, at_end: bool = True) -> np.ndarray:
    """(offset, nbytes) pairs, read per the spec: 16 bytes per chunk + a crc32c, little-endian uint64."""
    size = 16 * chunks + 4
    raw = shard[-size:] if at_end else shard[:size]
    return np.frombuffer(raw[:-4], dtype="<u8").reshape(chunks, 2)


def assert_identical(ours: np.ndarray, theirs: np.ndarray) -> None:
    assert ours.shape == theirs.shape
    assert ours.dtype.kind == theirs.dtype.kind and ours.dtype.itemsize == theirs.dtype.itemsize
    assert np.array_equal(ours, theirs, equal_nan=ours.dtype.kind == "f")


FIXTURES = [
    dict(dtype="float32", tissue_mode="nan", ndim=3),
    dict(dtype="float64", tissue_mode="node", ndim=3, pad_to_shards=True),
    dict(dtype="uint8", tissue_mode="node", ndim=2),
    dict(dtype="uint16", tissue_mode="none", ndim=3),
]


@pytest.mark.parametrize("options", FIXTURES, ids=lambda o: f"{o['dtype']}-{o['tissue_mode']}-{o['ndim']}d")
def test_every_array_reads_as_zarr_python_reads_it(options: dict[str, Any]) -> None:
    # 300 x 520 in 128 x 128 shards of 32 x 32 chunks: cut edge shards, absent corner shards.
    fixture = build_results(["CD8"], 300, 520, chunk=32, chunks_per_shard=4, levels=2, **options)
    store = memory_store(fixture.files)
    paths = [f"markers/CD8/{level}" for level in (0, 1)]
    if options["tissue_mode"] == "node":
        paths.append("tissue/0")
    for path in paths:
        array = zarr.open_array(store, path=path, mode="r")
        layout = array_layout(array)
        assert layout is not None, f"{path} is in the platform's layout"
        expected = whole(array)
        fetch = store_fetcher(array)
        assert_identical(read_window(layout, fetch, 0, array.shape[-2], 0, array.shape[-1]), expected)
        for y0, y1, x0, x1 in [
            (0, 128, 0, 128),
            (100, 140, 300, 340),
            (37, 299, 5, 519),
            (256, 300, 384, 520),
        ]:
            y1, x1 = min(y1, array.shape[-2]), min(x1, array.shape[-1])
            if y0 < y1 and x0 < x1:
                assert_identical(read_window(layout, fetch, y0, y1, x0, x1), expected[y0:y1, x0:x1])
        banded = np.concatenate(
            [band.copy() for _, band in read_bands(layout, fetch, 0, array.shape[-2], 0, array.shape[-1], 64)]
        )
        assert_identical(banded, expected)


def test_the_fixture_has_what_the_reader_must_handle() -> None:
    """Absent shards, empty inner chunks inside a stored shard, and a stored edge shard the array cuts."""
    fixture = build_results(["CD8"], 300, 520, chunk=32, chunks_per_shard=4, levels=1)
    keys = {key.rsplit("/c/", 1)[1] for key in fixture.files if key.startswith("markers/CD8/0/c/")}
    grid = {f"0/{row}/{col}" for row in range(3) for col in range(5)}  # ceil(300/128) x ceil(520/128)
    assert keys < grid, "some shard is absent (all background)"
    empty_in_stored = [
        key for key in keys if (spec_index(fixture.files[f"markers/CD8/0/c/{key}"], 16) == EMPTY).any()
    ]
    assert empty_in_stored, "some stored shard has an empty inner chunk"
    assert "0/2/1" in keys, "a shard the array's bottom edge cuts (rows 256-300 of 256-384) is stored"


def test_fill_values_index_at_the_start_and_big_endian_read_as_zarr_python_reads_them() -> None:
    store = MemoryStore()
    array = zarr.create(
        shape=(1, 70, 90),
        chunks=(1, 32, 32),
        dtype=">u2",
        fill_value=7,
        zarr_format=3,
        store=store,
        codecs=[
            ShardingCodec(
                chunk_shape=(1, 16, 16),
                codecs=[BytesCodec(endian="big"), ZstdCodec(level=1, checksum=True)],
                index_location="start",
            )
        ],
    )
    array[0, 3:40, 5:50] = np.arange(37 * 45, dtype=np.uint16).reshape(37, 45)
    array[0, 64:70, 80:90] = 9
    layout = array_layout(array)
    assert layout is not None and not layout.index_at_end and layout.dtype.byteorder == ">"
    stored = {key: value.to_bytes() for key, value in store._store_dict.items()}
    assert "c/0/0/2" not in stored and "c/0/2/2" in stored, "an absent shard, and a stored corner shard"
    assert (spec_index(stored["c/0/1/1"], 4, at_end=False) == EMPTY).any(), "an empty inner chunk"
    got = read_window(layout, store_fetcher(array), 0, 70, 0, 90)
    assert_identical(got, whole(array))
    assert got[0, 0] == 7 and got[69, 89] == 9


def test_a_corrupted_index_is_refused_by_both_readers() -> None:
    fixture = build_results(["CD8"], 300, 520, chunk=32, chunks_per_shard=4, levels=1)
    key = "markers/CD8/0/c/0/1/1"
    shard = bytearray(fixture.files[key])
    shard[-20] ^= 0x01  # inside the index (the last 4 bytes are its crc32c)
    files = {**fixture.files, key: bytes(shard)}
    array = zarr.open_array(memory_store(files), path="markers/CD8/0", mode="r")
    layout = array_layout(array)
    assert layout is not None
    with pytest.raises(ShardFormatError, match="crc32c"):
        read_window(layout, store_fetcher(array), 128, 256, 128, 256)
    with pytest.raises(ValueError, match="checksum"):  # zarr-python refuses it too
        whole(array)


def test_an_index_pointing_outside_the_shard_is_refused() -> None:
    fixture = build_results(["CD8"], 300, 520, chunk=32, chunks_per_shard=4, levels=1)
    key = "markers/CD8/0/c/0/1/1"
    shard = bytearray(fixture.files[key])
    index = np.frombuffer(bytes(shard[-(16 * 16 + 4) : -4]), dtype="<u8").copy().reshape(16, 2)
    stored = int(np.flatnonzero(index[:, 0] != EMPTY)[0])
    index[stored, 1] = len(shard)  # runs into the index and past the end
    body = index.tobytes()
    shard[-(16 * 16 + 4) :] = body + google_crc32c.value(body).to_bytes(4, "little")
    array = zarr.open_array(memory_store({**fixture.files, key: bytes(shard)}), path="markers/CD8/0")
    layout = array_layout(array)
    assert layout is not None
    with pytest.raises(ShardFormatError, match="outside the shard"):
        read_window(layout, store_fetcher(array), 128, 256, 128, 256)


def test_other_layouts_are_left_to_zarr_python() -> None:
    for layout_name in ("unsharded", "unsharded-zstd", "flat", "ome-ngff"):
        fixture = build_results(["CD8"], 100, 120, layout=layout_name, chunk=32, levels=1)
        path = fixture.dataset_paths["CD8"]
        assert array_layout(zarr.open_array(memory_store(fixture.files), path=path, mode="r")) is None
    store = MemoryStore()
    gzip = zarr.create(
        shape=(64, 64), chunks=(32, 32), dtype="f4", zarr_format=3, store=store,
        codecs=[ShardingCodec(chunk_shape=(16, 16), codecs=[BytesCodec(), GzipCodec()])],
    )  # fmt: skip
    assert array_layout(gzip) is None


@contextmanager
def recorded(files: dict[str, bytes]) -> Iterator[tuple[JobResults, list[tuple[str, str | None]]]]:
    """The store served over HTTP, each request's (key, Range header) logged."""
    requests: list[tuple[str, str | None]] = []
    app = results_files_app(files, api_key=API_KEY)

    async def logging_app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
            requests.append((scope["path"].split("/results/files/", 1)[-1], headers.get("range")))
        await app(scope, receive, send)

    with (
        serve_app(logging_app) as url,  # type: ignore[arg-type]
        JobResults(
            api_root=f"{url}/api/v1",
            api_key=API_KEY,
            job_id="job-shards",
            retry_policy=RetryPolicy(max_retries=2, base_delay=0.01, max_delay=0.02),
        ) as results,
    ):
        yield results, requests


SUMMARY_CASES = [
    dict(dtype="float32", tissue_mode="nan"),
    dict(dtype="uint8", tissue_mode="node", translation=(37.0, 11.0)),
    dict(dtype="float64", tissue_mode="node", pad_to_shards=True),
]


@pytest.mark.parametrize("options", SUMMARY_CASES, ids=lambda o: f"{o['dtype']}-{o['tissue_mode']}")
def test_a_summary_fetches_each_shard_once_and_equals_zarr_pythons_path(options: dict[str, Any]) -> None:
    fixture = build_results(
        ["CD8"], 300, 520, chunk=64, chunks_per_shard=2, levels=1, slide_mpp=0.25, **options
    )
    stored_shards = {key for key in fixture.files if "/c/" in key and key.startswith(("markers/", "tissue/"))}
    with recorded(fixture.files) as (results, requests):
        marker_map = results.open_marker("CD8")
        assert marker_map.shards is not None
        kwargs: dict[str, Any] = dict(
            threshold=0.4, slide_width=520, slide_height=300, microns_per_pixel=0.25, hotspot_window_um=40.0
        )
        ours = summarise_marker(marker_map, **kwargs)
        fetched = [(key, rng) for key, rng in requests if "/c/" in key]
        assert all(rng is None for _, rng in fetched), "whole shards only: no range requests"
        read = [key for key, _ in fetched]
        assert sorted(read) == sorted(set(read)), "each shard once"
        assert set(read) >= stored_shards  # absent ones were asked for too (404 = fill value)
        del requests[:]
        by_zarr = summarise_marker(dataclasses.replace(marker_map, shards=None, tissue_shards=None), **kwargs)
        assert any(rng is not None for _, rng in requests) or options.get("pad_to_shards"), (
            "zarr-python's path was the one taken (it reads cut edge shards by range)"
        )
    assert ours == by_zarr


def test_an_undecodable_shard_makes_that_marker_missing_in_plain_words() -> None:
    fixture = build_results(["CD8", "Ki67"], 300, 520, chunk=32, chunks_per_shard=4, levels=1, slide_mpp=0.25)
    key = "markers/CD8/0/c/0/1/1"
    shard = bytearray(fixture.files[key])
    shard[-20] ^= 0x01
    with recorded({**fixture.files, key: bytes(shard)}) as (results, _):
        summaries, missing, _ = summarise_job(
            results, ["CD8", "Ki67"], threshold=0.4, slide_width=520, slide_height=300, microns_per_pixel=0.25
        )
    assert [s.marker for s in summaries] == ["Ki67"]
    assert "CD8" in missing and "cannot be decoded" in missing["CD8"] and "crc32c" in missing["CD8"]


def test_a_read_error_names_the_marker() -> None:
    fixture = build_results(["CD8"], 300, 520, chunk=32, chunks_per_shard=4, levels=1)
    key = "markers/CD8/0/c/0/0/1"
    truncated = fixture.files[key][:10]
    with recorded({**fixture.files, key: truncated}) as (results, _):
        marker_map = results.open_marker("CD8")
        with pytest.raises(ResultsError, match=r"Marker CD8: rows 0-300.*shorter than its"):
            list(marker_map.blocks())
