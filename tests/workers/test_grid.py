"""Density grid storage: exact counts, bounded mean error, a size bound, and refusal of bad blobs.

Oracle: the arrays the test built, compared field by field; the mean's error bound is the
format's stated 1/65535 step (half a step per cell), written out here.
"""

from __future__ import annotations

import math
import struct

import numpy as np
import pytest
import redis

from workers.grid import DensityGrid, grid_from_bytes, grid_to_bytes, grids_from_bytes, grids_to_bytes
from workers.runstore import GRIDS_BLOB, RunStore


def _noisy_grid(rows: int, cols: int, *, seed: int = 0, marker: str = "CD8") -> DensityGrid:
    rng = np.random.default_rng(seed)
    tissue = rng.integers(0, 901, (rows, cols)).astype(np.int64)
    tissue[: rows // 10] = 0  # background rows, as at a slide's edge
    positive = rng.binomial(tissue, rng.uniform(0, 1, (rows, cols))).astype(np.int64)
    value_sum = positive * rng.uniform(0.5, 1.0, (rows, cols)) + (tissue - positive) * rng.uniform(0, 0.5)
    return DensityGrid(
        marker=marker,
        origin=(12.5, 40.0),
        cell=(31.25, 31.25),
        extent=(cols * 31.25 - 10, rows * 31.25),
        pixel_mm2=4e-6,
        positive=positive,
        tissue=tissue,
        value_sum=value_sum,
    )


def _assert_same(read: DensityGrid, grid: DensityGrid) -> None:
    assert read.marker == grid.marker
    assert read.origin == grid.origin and read.cell == grid.cell and read.extent == grid.extent
    assert read.pixel_mm2 == grid.pixel_mm2 or (math.isnan(read.pixel_mm2) and math.isnan(grid.pixel_mm2))
    assert read.positive.dtype == np.int64 and read.tissue.dtype == np.int64
    assert read.value_sum.dtype == np.float64
    np.testing.assert_array_equal(read.positive, grid.positive)
    np.testing.assert_array_equal(read.tissue, grid.tissue)
    # Each cell's mean is kept to the nearest 1/65535: its sum is within half a step times tissue.
    bound = grid.tissue * (0.5 / 65535) + 1e-9
    assert np.all(np.abs(read.value_sum - grid.value_sum) <= bound)


def test_round_trip_keeps_counts_exact_and_means_within_half_a_step() -> None:
    grid = _noisy_grid(120, 90)
    _assert_same(grid_from_bytes(grid_to_bytes(grid)), grid)


def test_several_grids_and_unknown_pixel_size_round_trip_in_order() -> None:
    a = _noisy_grid(30, 40, seed=1, marker="CD8")
    b = DensityGrid(**{**_noisy_grid(7, 3, seed=2, marker="Ki67").__dict__, "pixel_mm2": math.nan})
    read = grids_from_bytes(grids_to_bytes({"CD8": a, "Ki67": b}))
    assert list(read) == ["CD8", "Ki67"]
    _assert_same(read["CD8"], a)
    _assert_same(read["Ki67"], b)


def test_large_counts_and_empty_grids_round_trip() -> None:
    big = np.array([[3_000_000_000, 0]], dtype=np.int64)  # more than fits 32 bits
    grid = DensityGrid("X", (0.0, 0.0), (1e5, 1e5), (2e5, 1e5), 1e-6, big // 2, big, big * 0.25)
    _assert_same(grid_from_bytes(grid_to_bytes(grid)), grid)
    empty = np.zeros((0, 0), dtype=np.int64)
    none = DensityGrid("Y", (0.0, 0.0), (10.0, 10.0), (0.0, 0.0), 1e-6, empty, empty, empty.astype(float))
    _assert_same(grid_from_bytes(grid_to_bytes(none)), none)
    assert grids_from_bytes(grids_to_bytes({})) == {}


def test_a_noisy_1000_by_1000_grid_stays_well_under_the_blob_limit() -> None:
    data = grid_to_bytes(_noisy_grid(1000, 1000, seed=3))
    assert len(data) < 4 * 1024 * 1024  # the run store keeps blobs of up to 8 MiB


@pytest.mark.parametrize(
    "mangle",
    [
        lambda b: b"PNG" + b[3:],  # wrong magic
        lambda b: b[:7] + b"\x02" + b[8:],  # a version this code does not know
        lambda b: b[:10],  # cut inside the header length
        lambda b: b[:-5],  # cut inside the arrays
        lambda b: b + b"\x00",  # trailing bytes
        lambda b: b[:12] + b"{" * (len(b) - 12),  # header that is not JSON
        lambda b: b[:-40] + bytes(x ^ 0xFF for x in b[-40:]),  # corrupted compressed array
        lambda b: b[:8] + struct.pack(">I", 2**31) + b[12:],  # header longer than the blob
    ],
)
def test_malformed_blobs_are_refused_with_value_error(mangle) -> None:  # type: ignore[no-untyped-def]
    data = grid_to_bytes(_noisy_grid(20, 20))
    with pytest.raises(ValueError):
        grid_from_bytes(mangle(data))


def test_a_blob_of_two_grids_is_not_one_grid() -> None:
    grid = _noisy_grid(5, 5)
    with pytest.raises(ValueError, match="2 grids"):
        grid_from_bytes(grids_to_bytes({"a": grid, "b": grid}))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("positive", np.array([[5]])),  # more positive than tissue pixels
        ("value_sum", np.array([[7.0]])),  # a mean above 1
        ("value_sum", np.array([[math.nan]])),
        ("cell", (0.0, 1.0)),
        ("pixel_mm2", -1.0),
        ("tissue", np.array([[4, 4]])),  # shapes differ
    ],
)
def test_impossible_grids_are_not_written(field: str, value: object) -> None:
    base = {
        "marker": "M", "origin": (0.0, 0.0), "cell": (1.0, 1.0), "extent": (1.0, 1.0), "pixel_mm2": 1.0,
        "positive": np.array([[1]]), "tissue": np.array([[4]]), "value_sum": np.array([[2.0]]),
    }  # fmt: skip
    with pytest.raises(ValueError):
        grid_to_bytes(DensityGrid(**{**base, field: value}))  # type: ignore[arg-type]


def test_grids_survive_the_run_store_on_real_redis(redis_client: redis.Redis, key_prefix: str) -> None:
    store = RunStore(redis_client, prefix=key_prefix, retention_seconds=600)
    grids = {"CD8": _noisy_grid(200, 150, seed=4), "Ki67": _noisy_grid(200, 150, seed=5, marker="Ki67")}
    run_id = "run-" + "ab" * 12
    store.put_blob(run_id, GRIDS_BLOB, grids_to_bytes(grids))
    stored = store.get_blob(run_id, GRIDS_BLOB)
    assert stored is not None
    read = grids_from_bytes(stored)
    for name, grid in grids.items():
        _assert_same(read[name], grid)
