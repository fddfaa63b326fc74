"""A marker's density grid: per-cell counts over the slide, kept with the run after its summary.

The summariser already folds every map pixel into a coarse grid of cells (the
hotspot search runs on it). Kept with the run, that grid is what the density
bands are drawn from and what a hotspot review recomputes the figures from,
without reading the maps again or asking Strand for anything.

A hotspot box is a whole window of cells, so a figure recomputed without it
from the grid is exact, not an approximation.

`grids_to_bytes` / `grids_from_bytes` keep a run's grids as one compact blob beside the run.
"""

from __future__ import annotations

import json
import math
import struct
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class DensityGrid:
    """One marker's counts per grid cell over the analysed area (the slide, or the drawn regions).

    Cell (row i, column j) covers level-0 slide pixels x in [origin_x + j * cell_w, +cell_w),
    y in [origin_y + i * cell_h, +cell_h), cut short at `extent` (the map's edge over the slide).
    """

    marker: str
    origin: tuple[float, float]  # (x, y) of cell (0, 0)'s top-left corner, level-0 slide pixels
    cell: tuple[float, float]  # (width, height) of one cell, level-0 slide pixels
    extent: tuple[float, float]  # (width, height) the grid covers from `origin`, level-0 slide pixels
    pixel_mm2: float  # area of one map pixel; NaN when the slide's pixel size is unknown
    positive: np.ndarray  # int64 [rows, cols]: positive tissue map pixels per cell
    tissue: np.ndarray  # int64 [rows, cols]: tissue map pixels per cell
    value_sum: np.ndarray  # float64 [rows, cols]: sum of normalised values over the cell's tissue


# -- storage -------------------------------------------------------------------------------------
#
# A run keeps every marker's grid in one blob (`workers.runstore.GRIDS_BLOB`, at most 8 MiB).
# Layout, version 1:
#   b"SSBGRID" + b"\x01" | header length (uint32, big-endian) | header (UTF-8 JSON) | arrays
# The header lists each grid's fields and, per array, its dtype, shape and compressed length;
# the arrays follow in that order, each zlib-compressed after a byte shuffle (all first bytes,
# then all second bytes, ...), which is what makes small counts and smooth fields compress.
# Counts are stored in the narrowest unsigned type that holds them (exact). The value sums
# are stored as each cell's mean value (value_sum / tissue) in 1/65535 steps: a cell's mean is
# then within 2**-17 of the exact one, as close as the summariser's own float-map percentiles,
# and a noisy 1000 x 1000 grid stays near 4 MiB instead of 12.

_MAGIC = b"SSBGRID"
_VERSION = 1
_MEAN_STEPS = 65535
_ARRAYS = ("positive", "tissue", "mean_q")
_COUNT_TYPES = (np.dtype("<u1"), np.dtype("<u2"), np.dtype("<u4"), np.dtype("<u8"))
_MAX_HEADER = 1 << 20


def grid_to_bytes(grid: DensityGrid) -> bytes:
    """One grid as a compact, versioned blob (see the layout above)."""
    return grids_to_bytes({grid.marker: grid})


def grid_from_bytes(data: bytes) -> DensityGrid:
    """The grid `grid_to_bytes` wrote; ValueError when `data` is not exactly one valid grid."""
    grids = grids_from_bytes(data)
    if len(grids) != 1:
        raise ValueError(f"density grid blob holds {len(grids)} grids, expected one")
    return next(iter(grids.values()))


def grids_to_bytes(grids: Mapping[str, DensityGrid]) -> bytes:
    """Every marker's grid in one blob, keyed as given (usually by marker name)."""
    entries: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for key, grid in grids.items():
        _check(grid, where=f"grid {key!r}")
        tissue = grid.tissue
        mean = np.divide(grid.value_sum, tissue, out=np.zeros(tissue.shape), where=tissue > 0)
        arrays = {
            "positive": _narrow(grid.positive),
            "tissue": _narrow(tissue),
            "mean_q": np.rint(np.clip(mean, 0.0, 1.0) * _MEAN_STEPS).astype("<u2"),
        }
        stored: dict[str, Any] = {}
        for name in _ARRAYS:
            packed = zlib.compress(_shuffle(arrays[name]), 6)
            stored[name] = {"dtype": arrays[name].dtype.str, "length": len(packed)}
            chunks.append(packed)
        entries.append(
            {
                "key": key,
                "marker": grid.marker,
                "origin": list(grid.origin),
                "cell": list(grid.cell),
                "extent": list(grid.extent),
                "pixel_mm2": grid.pixel_mm2 if math.isfinite(grid.pixel_mm2) else None,
                "shape": list(grid.tissue.shape),
                "arrays": stored,
            }
        )
    header = json.dumps({"version": _VERSION, "grids": entries}, allow_nan=False).encode()
    return b"".join([_MAGIC, bytes([_VERSION]), struct.pack(">I", len(header)), header, *chunks])


def grids_from_bytes(data: bytes) -> dict[str, DensityGrid]:
    """The grids `grids_to_bytes` wrote; ValueError with the reason for anything else."""
    view = memoryview(data)
    if len(view) < len(_MAGIC) + 5 or bytes(view[: len(_MAGIC)]) != _MAGIC:
        raise ValueError("not a density grid blob (wrong magic bytes)")
    version = view[len(_MAGIC)]
    if version != _VERSION:
        raise ValueError(f"density grid blob version {version} is not supported (expected {_VERSION})")
    start = len(_MAGIC) + 1
    (header_len,) = struct.unpack(">I", view[start : start + 4])
    if header_len > _MAX_HEADER or start + 4 + header_len > len(view):
        raise ValueError("density grid blob is truncated (header)")
    try:
        header = json.loads(bytes(view[start + 4 : start + 4 + header_len]))
        entries = header["grids"]
        if header["version"] != _VERSION or not isinstance(entries, list):
            raise ValueError("header version or grid list is wrong")
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"density grid blob has a malformed header: {exc}") from exc
    offset = start + 4 + header_len
    grids: dict[str, DensityGrid] = {}
    for entry in entries:
        try:
            grid, offset = _read_entry(entry, view, offset)
        except (KeyError, TypeError, IndexError, zlib.error) as exc:
            raise ValueError(f"density grid blob has a malformed entry: {exc!r}") from exc
        key = entry["key"]
        if not isinstance(key, str) or key in grids:
            raise ValueError(f"density grid blob has a missing or repeated key {key!r}")
        grids[key] = grid
    if offset != len(view):
        raise ValueError(f"density grid blob has {len(view) - offset} unexpected trailing bytes")
    return grids


def _read_entry(entry: dict[str, Any], view: memoryview, offset: int) -> tuple[DensityGrid, int]:
    rows, cols = (int(v) for v in entry["shape"])
    if rows < 0 or cols < 0:
        raise ValueError(f"density grid shape {rows} x {cols} is negative")
    arrays: dict[str, np.ndarray] = {}
    for name in _ARRAYS:
        spec = entry["arrays"][name]
        dtype = np.dtype(spec["dtype"])
        allowed = _COUNT_TYPES if name != "mean_q" else (np.dtype("<u2"),)
        if dtype not in allowed:
            raise ValueError(f"density grid array {name} has dtype {dtype}, not one this format writes")
        length = int(spec["length"])
        if length < 0 or offset + length > len(view):
            raise ValueError(f"density grid blob is truncated (array {name})")
        expected = rows * cols * dtype.itemsize
        inflater = zlib.decompressobj()
        raw = inflater.decompress(view[offset : offset + length], expected + 1)
        if len(raw) != expected or not inflater.eof or inflater.unconsumed_tail:
            raise ValueError(f"density grid array {name} does not hold {rows} x {cols} values")
        arrays[name] = _unshuffle(raw, dtype, (rows, cols))
        offset += length
    pixel_mm2 = entry["pixel_mm2"]
    tissue = arrays["tissue"].astype(np.int64)
    grid = DensityGrid(
        marker=str(entry["marker"]),
        origin=_pair(entry["origin"]),
        cell=_pair(entry["cell"]),
        extent=_pair(entry["extent"]),
        pixel_mm2=math.nan if pixel_mm2 is None else float(pixel_mm2),
        positive=arrays["positive"].astype(np.int64),
        tissue=tissue,
        value_sum=arrays["mean_q"].astype(np.float64) / _MEAN_STEPS * tissue,
    )
    _check(grid, where=f"grid {entry['key']!r}")
    return grid, offset


def _check(grid: DensityGrid, *, where: str) -> None:
    """Refuse a grid whose counts cannot be right, before it is stored or after it is read."""
    shape = grid.tissue.shape
    if len(shape) != 2 or grid.positive.shape != shape or grid.value_sum.shape != shape:
        raise ValueError(f"{where}: positive, tissue and value_sum must be 2-D arrays of one shape")
    if not all(math.isfinite(v) and v > 0 for v in grid.cell):
        raise ValueError(f"{where}: cell size {grid.cell} must be positive")
    if not all(math.isfinite(v) for v in (*grid.origin, *grid.extent)) or min(grid.extent) < 0:
        raise ValueError(f"{where}: origin {grid.origin} / extent {grid.extent} are not usable")
    if not (math.isnan(grid.pixel_mm2) or (math.isfinite(grid.pixel_mm2) and grid.pixel_mm2 > 0)):
        raise ValueError(f"{where}: pixel area {grid.pixel_mm2} must be positive or NaN")
    if grid.tissue.size and (grid.positive.min() < 0 or np.any(grid.positive > grid.tissue)):
        raise ValueError(f"{where}: positive counts must lie between 0 and the cell's tissue count")
    sums = grid.value_sum
    if sums.size and (not np.all(np.isfinite(sums)) or sums.min() < 0):
        raise ValueError(f"{where}: value sums must be finite and non-negative")
    # Values are in [0, 1], so a cell's sum is at most its tissue count; the slack absorbs float32
    # summation error, while sums of raw integers (not divided by their maximum) are still caught.
    if sums.size and np.any(sums > grid.tissue * (1 + 1e-3) + 1e-3):
        raise ValueError(f"{where}: a cell's value sum exceeds its tissue count (values are in [0, 1])")


def _narrow(counts: np.ndarray) -> np.ndarray:
    """Counts in the narrowest unsigned type that holds them all."""
    top = int(counts.max()) if counts.size else 0
    for dtype in _COUNT_TYPES:
        if top <= np.iinfo(dtype).max:
            return counts.astype(dtype)
    raise ValueError(f"count {top} does not fit 64 bits")  # pragma: no cover - int64 input always fits


def _shuffle(array: np.ndarray) -> bytes:
    flat = np.ascontiguousarray(array).reshape(-1)
    return flat.view(np.uint8).reshape(flat.size, array.dtype.itemsize).T.tobytes()


def _unshuffle(raw: bytes, dtype: np.dtype[Any], shape: tuple[int, int]) -> np.ndarray:
    planes = np.frombuffer(raw, dtype=np.uint8).reshape(dtype.itemsize, shape[0] * shape[1])
    return planes.T.copy().view(dtype).reshape(shape)


def _pair(value: Any) -> tuple[float, float]:
    a, b = value
    return float(a), float(b)
