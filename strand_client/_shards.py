"""The platform's sharded marker maps, read shard by shard without zarr-python's read path.

zarr-python reads a window that cuts a shard as one index request plus one
range request per inner chunk, and runs every inner chunk through its async
codec pipeline. The platform writes every marker map the same way, so for that
one layout this module fetches each shard object whole (one GET per shard,
edge shards included) and decodes its inner chunks itself. Any other layout
(`sharded_layout` answers None) stays with zarr-python.

What is read, from the Zarr v3 core specification and its codec specifications:

- Zarr v3 core, "Chunk key encoding": the `default` encoding names the chunk
  at grid coordinates (i, j, ...) `c/i/j/...` (the separator is configurable).
- Zarr v3 codec `sharding_indexed` (sharding-indexed/v1.0): a shard holds the
  inner chunks of `chunk_shape`, each encoded with `codecs`, followed
  (`index_location` "end", the default) or preceded ("start") by the shard
  index: `prod(chunks_per_shard)` pairs of uint64 (offset, nbytes) in C order
  of the inner chunk grid, offsets from the start of the shard, encoded with
  `index_codecs`. A pair of 2^64-1, 2^64-1 marks an empty inner chunk, read as
  the fill value; an absent shard object is all fill value.
- Zarr v3 codec `bytes`: the elements in C order, in the stated `endian`.
- Zarr v3 codec `crc32c`: appends the CRC-32C (Castagnoli) of what it encodes,
  4 bytes little endian; a mismatch on decoding is an error.
- Zarr v3 codec `zstd`: one Zstandard frame (RFC 8878) per encoded chunk.

Inner chunks are always stored at the full `chunk_shape`; the part past the
array's edge is cut off here, as zarr-python does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import google_crc32c
import numpy as np
import zarr
from numcodecs.zstd import Zstd
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

EMPTY = 2**64 - 1  # sharding-indexed v1.0: offset and nbytes of an empty inner chunk
_CRC_BYTES = 4
_ZSTD = Zstd()  # stateless: each decode makes its own context, so threads may share it

# A stored object's bytes (None: the object is absent), e.g. `store_fetcher`.
Fetch = Callable[[str], "bytes | bytearray | memoryview | None"]


class ShardFormatError(ValueError):
    """A shard's bytes contradict its array's metadata (bad checksum, index out of bounds, wrong size)."""


@dataclass(frozen=True, slots=True)
class ShardedLayout:
    """A 2-D (leading axes of length 1) sharded array in the platform's layout, as its metadata states.

    Shapes are (rows, columns). `dtype` carries the stored byte order;
    `compressed` says the inner chunks go through zstd after `bytes`.
    """

    shape: tuple[int, int]
    shard: tuple[int, int]
    chunk: tuple[int, int]
    leading: int  # axes of length 1 before (y, x)
    dtype: np.dtype[Any]
    fill_value: Any
    compressed: bool
    index_at_end: bool
    separator: str

    @property
    def chunks_per_shard(self) -> tuple[int, int]:
        return self.shard[0] // self.chunk[0], self.shard[1] // self.chunk[1]

    @property
    def index_nbytes(self) -> int:
        """16 bytes per inner chunk, then the crc32c (the fixed-size index sharding-indexed requires)."""
        rows, cols = self.chunks_per_shard
        return 16 * rows * cols + _CRC_BYTES

    @property
    def grid(self) -> tuple[int, int]:
        """Shards per axis (the last ones may reach past the array's edge)."""
        return -(-self.shape[0] // self.shard[0]), -(-self.shape[1] // self.shard[1])

    def shard_key(self, row: int, col: int) -> str:
        """The shard's key relative to the array (Zarr v3 `default` chunk key encoding)."""
        return self.separator.join(["c", *("0" * self.leading), str(row), str(col)])


def array_layout(array: zarr.Array) -> ShardedLayout | None:
    """`sharded_layout` of an open zarr-python array."""
    return sharded_layout(array.metadata.to_dict(), array.fill_value)


def store_fetcher(array: zarr.Array) -> Fetch:
    """Whole objects under the array's node, from its zarr store (one `get` each, no byte range).

    Safe to call from any thread but zarr's event-loop thread: each call waits
    on that loop, where an HTTP store keeps its connection pool.
    """
    store, prefix = array.store_path.store, array.store_path.path
    prototype = default_buffer_prototype()

    def fetch(key: str) -> memoryview | None:
        buffer = sync(store.get(f"{prefix}/{key}" if prefix else key, prototype=prototype))
        return None if buffer is None else memoryview(buffer.as_buffer_like())

    return fetch


def sharded_layout(meta: Mapping[str, Any], fill_value: Any) -> ShardedLayout | None:
    """The layout of a zarr v3 array's metadata document when it is the platform's, else None.

    The platform's layout: a regular grid of shards, `default` chunk keys, one
    `sharding_indexed` codec whose inner codecs are `bytes` (optionally then
    `zstd`) and whose index codecs are `bytes` then `crc32c`. `fill_value` is
    the fill value as zarr-python parsed it (the JSON forms of NaN and
    infinities are zarr's to read).
    """
    try:
        return _layout(meta, fill_value)
    except (KeyError, TypeError, ValueError, AttributeError):
        return None


def _layout(meta: Mapping[str, Any], fill_value: Any) -> ShardedLayout | None:
    if meta.get("zarr_format") != 3 or meta.get("node_type") != "array" or meta.get("storage_transformers"):
        return None
    grid = meta["chunk_grid"]
    encoding = meta.get("chunk_key_encoding") or {}
    codecs = meta["codecs"]
    if grid.get("name") != "regular" or encoding.get("name") != "default" or len(codecs) != 1:
        return None
    (codec,) = codecs
    if codec.get("name") != "sharding_indexed":
        return None
    config = codec["configuration"]
    location = config.get("index_location", "end")
    inner = [c.get("name") for c in config["codecs"]]
    index_codecs = config["index_codecs"]
    if (
        location not in ("end", "start")
        or inner not in (["bytes"], ["bytes", "zstd"])
        or [c.get("name") for c in index_codecs] != ["bytes", "crc32c"]
        or _endian(index_codecs[0]) != "little"
    ):
        return None
    dtype = np.dtype(str(meta["data_type"]))
    if dtype.kind not in "fuib":
        return None
    endian = _endian(config["codecs"][0])
    if dtype.itemsize > 1:
        if endian not in ("little", "big"):
            return None
        dtype = dtype.newbyteorder("<" if endian == "little" else ">")
    shape = [int(v) for v in meta["shape"]]
    shard = [int(v) for v in grid["configuration"]["chunk_shape"]]
    chunk = [int(v) for v in config["chunk_shape"]]
    if not len(shape) == len(shard) == len(chunk) >= 2:
        return None
    if any(v != 1 for v in [*shape[:-2], *shard[:-2], *chunk[:-2]]):
        return None
    if any(c <= 0 or s % c for s, c in zip(shard[-2:], chunk[-2:], strict=True)):
        return None
    return ShardedLayout(
        shape=(shape[-2], shape[-1]),
        shard=(shard[-2], shard[-1]),
        chunk=(chunk[-2], chunk[-1]),
        leading=len(shape) - 2,
        dtype=dtype,
        fill_value=fill_value,
        compressed=inner[-1] == "zstd",
        index_at_end=location == "end",
        separator=str((encoding.get("configuration") or {}).get("separator", "/")),
    )


def _endian(codec: Mapping[str, Any]) -> str | None:
    config = codec.get("configuration") or {}
    endian = config.get("endian")
    return str(endian) if endian is not None else None


def shard_index(layout: ShardedLayout, data: memoryview) -> np.ndarray:
    """The shard's (offset, nbytes) pairs, shape chunks_per_shard + (2,), checked against the shard's size.

    Raises `ShardFormatError` on a checksum mismatch or an entry that points
    outside the shard's chunk area (the bytes before a trailing index, after a
    leading one).
    """
    size, index_size = len(data), layout.index_nbytes
    if size < index_size:
        raise ShardFormatError(f"the shard is {size} bytes, shorter than its {index_size}-byte index")
    raw = data[size - index_size :] if layout.index_at_end else data[:index_size]
    body, stored = raw[:-_CRC_BYTES], bytes(raw[-_CRC_BYTES:])
    computed = google_crc32c.value(bytes(body))  # the index only: 16 bytes per inner chunk
    if computed != int.from_bytes(stored, "little"):
        raise ShardFormatError(
            f"the shard index fails its crc32c check (stored {stored.hex()}, "
            f"computed {computed.to_bytes(4, 'little').hex()})"
        )
    index = np.frombuffer(body, dtype="<u8").reshape(*layout.chunks_per_shard, 2)
    offsets, nbytes = index[..., 0], index[..., 1]
    low, high = (0, size - index_size) if layout.index_at_end else (index_size, size)
    empty = (offsets == EMPTY) & (nbytes == EMPTY)
    inside = (offsets >= low) & (offsets <= high) & (nbytes <= high - np.minimum(offsets, high))
    if not np.all(empty | inside):
        row, col = (int(v) for v in np.argwhere(~(empty | inside))[0])
        raise ShardFormatError(
            f"the shard index places inner chunk ({row}, {col}) at bytes "
            f"{int(offsets[row, col])}+{int(nbytes[row, col])}, outside the shard's {low}-{high}"
        )
    return index


def decode_chunk(layout: ShardedLayout, encoded: memoryview) -> np.ndarray:
    """One inner chunk, `chunk` shaped, in the stored dtype (a read-only view of the decoded bytes)."""
    raw = _ZSTD.decode(encoded) if layout.compressed else encoded
    expected = layout.chunk[0] * layout.chunk[1] * layout.dtype.itemsize
    if len(raw) != expected:
        raise ShardFormatError(
            f"an inner chunk decodes to {len(raw)} bytes, not the {expected} its shape needs"
        )
    return np.frombuffer(raw, dtype=layout.dtype).reshape(layout.chunk)


def read_window(
    layout: ShardedLayout,
    fetch: Fetch,
    y0: int,
    y1: int,
    x0: int,
    x1: int,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Rows `y0:y1`, columns `x0:x1` (inside the array), fetching each shard they touch once, whole.

    The result has the array's dtype in native byte order; whatever no stored
    inner chunk covers is the fill value. `out`, when given (of that shape and
    dtype), is overwritten and returned instead of a new array.
    """
    out = _buffer(layout, (y1 - y0, x1 - x0), out)
    for row in range(y0 // layout.shard[0], -(-y1 // layout.shard[0])):
        for col, data, index in _shard_row(layout, fetch, row, x0, x1):
            _place(layout, data, index, row, col, out, y0, x0)
    return out


def read_bands(
    layout: ShardedLayout, fetch: Fetch, y0: int, y1: int, x0: int, x1: int, band_rows: int | None = None
) -> Iterator[tuple[int, np.ndarray]]:
    """The same window as `read_window`, as (first row, values) bands that end on multiples of `band_rows`.

    `band_rows` (default: one inner-chunk row) must be a multiple of the inner
    chunk's height that divides the shard's. Each shard is fetched once,
    whole, as in `read_window`, but only one band is decoded at a time, into
    one buffer: each band is overwritten by the next, so use it before asking
    for the next. What a reader holds is then the encoded shards of one shard
    row plus one band, not the decoded window.
    """
    chunk_h = band_rows or layout.chunk[0]
    if chunk_h % layout.chunk[0] or layout.shard[0] % chunk_h:
        raise ValueError(
            f"bands of {chunk_h} rows do not fit {layout.chunk[0]}-row chunks in {layout.shard[0]}"
        )
    buffer = _buffer(layout, (chunk_h, x1 - x0), None)
    for row in range(y0 // layout.shard[0], -(-y1 // layout.shard[0])):
        shards = list(_shard_row(layout, fetch, row, x0, x1))
        top = max(y0, row * layout.shard[0])
        bottom = min(y1, (row + 1) * layout.shard[0])
        while top < bottom:
            end = min(bottom, (top // chunk_h + 1) * chunk_h)
            band = buffer[: end - top]
            band.fill(layout.fill_value)
            for col, data, index in shards:
                _place(layout, data, index, row, col, band, top, x0)
            yield top, band
            top = end


def _buffer(layout: ShardedLayout, shape: tuple[int, int], out: np.ndarray | None) -> np.ndarray:
    dtype = layout.dtype.newbyteorder("=")
    if out is None or out.shape != shape or out.dtype != dtype:
        out = np.empty(shape, dtype=dtype)
    out.fill(layout.fill_value)
    return out


def _shard_row(
    layout: ShardedLayout, fetch: Fetch, row: int, x0: int, x1: int
) -> Iterator[tuple[int, memoryview, np.ndarray]]:
    """(column, bytes, index) of each stored shard of shard row `row` that columns x0:x1 touch."""
    shard_w = layout.shard[1]
    for col in range(x0 // shard_w, -(-x1 // shard_w)):
        data = fetch(layout.shard_key(row, col))
        if data is not None:
            view = memoryview(data).cast("B")
            yield col, view, shard_index(layout, view)


def _place(
    layout: ShardedLayout,
    data: memoryview,
    index: np.ndarray,
    row: int,
    col: int,
    out: np.ndarray,
    y0: int,
    x0: int,
) -> None:
    """Decode the inner chunks of shard (row, col) that overlap `out` (whose corner is y0, x0) into it."""
    chunk_h, chunk_w = layout.chunk
    top, left = row * layout.shard[0], col * layout.shard[1]
    height, width = out.shape
    rows, cols = layout.chunks_per_shard
    first_i, last_i = max(0, (y0 - top) // chunk_h), min(rows, -(-(y0 + height - top) // chunk_h))
    first_j, last_j = max(0, (x0 - left) // chunk_w), min(cols, -(-(x0 + width - left) // chunk_w))
    for i in range(first_i, last_i):
        for j in range(first_j, last_j):
            offset, nbytes = (int(v) for v in index[i, j])
            if offset == EMPTY:
                continue
            chunk = decode_chunk(layout, data[offset : offset + nbytes])
            cy, cx = top + i * chunk_h, left + j * chunk_w  # the chunk's first array row and column
            r0, r1 = max(cy, y0), min(cy + chunk_h, y0 + height, layout.shape[0])
            c0, c1 = max(cx, x0), min(cx + chunk_w, x0 + width, layout.shape[1])
            out[r0 - y0 : r1 - y0, c0 - x0 : c1 - x0] = chunk[r0 - cy : r1 - cy, c0 - cx : c1 - cx]
