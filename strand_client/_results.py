"""A finished job's OME-Zarr results, read over Strand's authenticated file proxy without loading whole maps.

The official SDK decodes a whole marker map into one numpy array (about 1.25 GiB
for a 16000 x 16000 map). Here zarr-python reads the store through
`HttpResultsStore`, so callers pull one block at a time (`MarkerMap.blocks`) and
memory depends on the block, not on the map. Paths always come from the store's
metadata; layouts read: the platform's root `multiscales` manifest (sharded or
not), flat one-node-per-marker stores, and OME-NGFF 0.5 image groups.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import json
import math
import os
import types
import warnings
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import numpy as np
import zarr
from zarr.core.sync import sync

from strand_client._errors import StrandError
from strand_client._geometry import MapTransform, SlideGeometry, resolve_geometry
from strand_client._retry import RetryPolicy
from strand_client._shards import ShardedLayout, array_layout, read_bands, read_window, store_fetcher
from strand_client._zarr_http import HttpResultsStore, ResultFetcher, as_bytes
from strand_client._zarr_layout import (
    DatasetRef,
    chunk_keys,
    entry_datasets,
    entry_name,
    multiscales,
    root_microns_per_pixel,
)

HE_NAME = "H&E"
TISSUE_NAME = "tissue"
BLOCK_BYTES = 16 << 20  # aim for blocks this size: big enough to amortise a request, small enough to stream
_IN_FLIGHT_BYTES = 16 << 20  # decoded blocks being fetched ahead by `MarkerMap.blocks`
# The same for the platform's sharded layout, read by our own shard reader, whose threads also do the
# caller's per-block work (`MarkerMap.map_blocks`); each block in flight holds its shards' encoded
# bytes (and, for `blocks`, the decoded block), so this caps the reader's memory whatever the map's
# size. Threads beyond the cores only add memory: each holds a shard, and glibc keeps a freed shard
# in the arena it came from (measured: 20 to 40 MiB more peak RSS per thread on the 20000^2 bench map).
_SHARD_IN_FLIGHT_BYTES = 96 << 20
_SHARD_MAX_THREADS = max(2, min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 2))
T = TypeVar("T")


class ResultsError(StrandError):
    """A marker map cannot be read from the results as stored (absent, malformed, undecodable).

    Unlike connection or server errors, trying again will not help: the message
    names the marker and what is wrong, in words a person can act on.
    """

    def __init__(self, message: str, *, marker: str | None = None, path: str | None = None) -> None:
        super().__init__(message, None, "results_unreadable")
        self.marker = marker
        self.path = path


@dataclass(frozen=True, slots=True)
class MapBlock:
    """One block of a marker map: raw stored values and, when the store has one, its tissue mask."""

    y0: int
    x0: int
    values: np.ndarray
    tissue: np.ndarray | None


@dataclass(frozen=True)
class MarkerMap:
    """One marker at one pyramid level, seen as a 2-D map (leading axes of length 1 are squeezed).

    `transform` is what the multiscale's `axes` and `coordinateTransformations`
    state (OME-NGFF 0.5: a physical pixel size when the axes give a unit), or
    None when they state no scale; `slide_geometry` turns it into slide pixels
    and checks it against the slide. `downsample` is level 0's size over this
    level's. `value_max` is what a stored value is divided by to get
    expression in [0, 1]. `shards` (and `tissue_shards`, the tissue node's)
    is set when the array is in the platform's sharded layout: blocks are
    then read by `strand_client._shards`, one request per shard, not by zarr.
    """

    name: str
    path: str
    level: int
    array: zarr.Array
    tissue: zarr.Array | None
    transform: MapTransform | None
    downsample: float
    value_max: float
    shards: ShardedLayout | None = None
    tissue_shards: ShardedLayout | None = None

    @property
    def height(self) -> int:
        return int(self.array.shape[-2])

    @property
    def width(self) -> int:
        return int(self.array.shape[-1])

    @property
    def dtype(self) -> np.dtype[Any]:
        return np.dtype(self.array.dtype)

    @property
    def fill_value(self) -> Any:
        return self.array.fill_value

    @property
    def storage_block(self) -> tuple[int, int]:
        """(rows, columns) of one storage object: a shard when sharded, else a chunk."""
        grid = self.array.shards or self.array.chunks
        return int(grid[-2]), int(grid[-1])

    def slide_geometry(
        self,
        *,
        slide_mpp: float,
        slide_size: tuple[int, int],
        root_mpp: float | None = None,
        data_beyond_slide: bool = False,
    ) -> SlideGeometry:
        """Where this map lies on a slide of `slide_size` (height, width) at `slide_mpp` µm/px (0: unknown).

        `root_mpp` is the store's root `strand.micronsPerPixel`, used only when
        the map states no scale; `data_beyond_slide` says a first reading found
        values past the slide's edge. See `resolve_geometry` for the rules.
        """
        return resolve_geometry(
            self.transform,
            map_shape=(self.height, self.width),
            storage_block=self.storage_block,
            downsample=self.downsample,
            root_mpp=root_mpp,
            slide_mpp=slide_mpp,
            slide_size=slide_size,
            data_beyond_slide=data_beyond_slide,
        )

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """Stored values of rows `y0:y1`, columns `x0:x1` (absent storage objects read as the fill value)."""
        return self._read(self.array, y0, y1, x0, x1)

    def read_tissue(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray | None:
        """The tissue node's mask (non-zero = tissue) for the same window, or None without a node."""
        if self.tissue is None:
            return None
        return self._read(self.tissue, y0, y1, x0, x1) != 0

    def block_windows(
        self, block_bytes: int = BLOCK_BYTES, *, window: tuple[int, int, int, int] | None = None
    ) -> list[tuple[int, int, int, int]]:
        """(y0, y1, x0, x1) windows covering the map row by row, aligned to whole storage objects.

        Each is about `block_bytes` decoded, but never less than one storage
        object: a window that cuts a shard makes zarr fetch its index and then
        each inner chunk by a separate range request. `window` (rows y0:y1,
        columns x0:x1) covers only the storage objects meeting it, widened to
        whole objects (nothing when it is empty), so a small area of a large
        map costs the few objects under it.
        """
        obj_h, obj_w = self.storage_block
        target = max(1, int((block_bytes / self.dtype.itemsize) ** 0.5))
        block_h = obj_h * max(1, target // obj_h)
        block_w = obj_w * max(1, target // obj_w)
        top, bottom, left, right = 0, self.height, 0, self.width
        if window is not None:
            y0, y1, x0, x1 = (
                max(0, window[0]),
                min(self.height, window[1]),
                max(0, window[2]),
                min(self.width, window[3]),
            )
            if y0 >= y1 or x0 >= x1:
                return []
            top, bottom = y0 // obj_h * obj_h, min(self.height, -(-y1 // obj_h) * obj_h)
            left, right = x0 // obj_w * obj_w, min(self.width, -(-x1 // obj_w) * obj_w)
        return [
            (y0, min(y0 + block_h, bottom), x0, min(x0 + block_w, right))
            for y0 in range(top, bottom, block_h)
            for x0 in range(left, right, block_w)
        ]

    def blocks(self, *, block_bytes: int = BLOCK_BYTES, in_flight: int | None = None) -> Iterator[MapBlock]:
        """Every block in `block_windows` order, fetched ahead by a few threads.

        At most `in_flight` blocks (default: as many as fit in 16 MiB, 1 to 4;
        for the platform's sharded layout, in 96 MiB counting encoded shards,
        2 to 4) are being fetched while the caller works on the current one, so
        network, decompression and the caller's arithmetic overlap without
        memory growing with the map.
        """
        return self.map_blocks(_same, block_bytes=block_bytes, in_flight=in_flight)

    def map_blocks(
        self,
        work: Callable[[MapBlock], T],
        *,
        block_bytes: int = BLOCK_BYTES,
        in_flight: int | None = None,
        align_rows: int = 1,
        window: tuple[int, int, int, int] | None = None,
    ) -> Iterator[T]:
        """`work(block)` over the map in `block_windows` order, run on the threads that read the blocks.

        As `blocks`, but the caller's per-block work runs in parallel with the
        reading (numpy and zstd release the GIL). `work` must be safe to call
        from several threads at once, must not keep the block (its arrays may
        be reused), and should return something small. In the platform's
        sharded layout each window comes as bands of whole inner-chunk rows
        that end on multiples of `align_rows` (`strand_client._shards.read_bands`;
        whole windows when the shard's height does not allow it): each shard is
        still fetched once, but no thread holds a decoded window. `window`
        (map rows y0:y1, columns x0:x1) reads only the storage objects meeting
        it (`block_windows`); blocks may reach past it to whole objects.
        """
        windows = self.block_windows(block_bytes, window=window)
        if not windows:
            return
        band_rows = self._band_rows(align_rows) if work is not _same else None
        in_flight = in_flight or self.in_flight(block_bytes, banded=band_rows is not None)
        pending: deque[Future[list[T]]] = deque()
        todo = iter(windows)

        def task(y0: int, y1: int, x0: int, x1: int) -> list[T]:
            if band_rows is not None:
                return [work(band) for band in self._bands(y0, y1, x0, x1, band_rows)]
            return [work(self._block(y0, y1, x0, x1))]

        with ThreadPoolExecutor(max_workers=in_flight, thread_name_prefix=f"read-{self.name}") as pool:
            try:
                for window in itertools.islice(todo, in_flight):
                    pending.append(pool.submit(task, *window))
                while pending:
                    done = pending.popleft().result()
                    following = next(todo, None)
                    if following is not None:
                        pending.append(pool.submit(task, *following))
                    yield from done
            finally:
                for future in pending:
                    future.cancel()

    def in_flight(self, block_bytes: int = BLOCK_BYTES, *, banded: bool = False) -> int:
        """How many blocks `blocks` (or, `banded`, `map_blocks`) reads at once by default: its threads."""
        windows = self.block_windows(block_bytes)
        if not windows:
            return 1
        y0, y1, x0, x1 = windows[0]
        window_bytes = (y1 - y0) * (x1 - x0) * self.dtype.itemsize
        if self.shards is None:
            return max(1, min(4, _IN_FLIGHT_BYTES // max(1, window_bytes)))
        held = window_bytes if banded else 2 * window_bytes  # encoded shards (+ the decoded window)
        return max(2, min(_SHARD_MAX_THREADS, _SHARD_IN_FLIGHT_BYTES // max(1, held)))

    def _band_rows(self, align_rows: int) -> int | None:
        """Rows per band when our shard reader reads the map (and tissue node) in bands ending on
        multiples of `align_rows`; None when it cannot (other layouts, shards of another height)."""
        if self.shards is None:
            return None
        node = self.tissue_shards
        if self.tissue is not None and (
            node is None or node.shard != self.shards.shard or node.chunk != self.shards.chunk
        ):
            return None
        rows = math.lcm(self.shards.chunk[0], max(1, align_rows))
        return rows if self.shards.shard[0] % rows == 0 else None

    def _bands(self, y0: int, y1: int, x0: int, x1: int, band_rows: int) -> Iterator[MapBlock]:
        assert self.shards is not None
        with self._reading(self.array, y0, y1, x0, x1):
            values = read_bands(self.shards, store_fetcher(self.array), y0, y1, x0, x1, band_rows)
            if self.tissue is None or self.tissue_shards is None:
                for top, band in values:
                    yield MapBlock(top, x0, band, None)
                return
            tissue = read_bands(self.tissue_shards, store_fetcher(self.tissue), y0, y1, x0, x1, band_rows)
            for (top, band), (_, mask) in zip(values, tissue, strict=True):
                yield MapBlock(top, x0, band, mask != 0)

    def _block(self, y0: int, y1: int, x0: int, x1: int) -> MapBlock:
        values = self._read(self.array, y0, y1, x0, x1, self.shards)
        tissue = None
        if self.tissue is not None:
            tissue = self._read(self.tissue, y0, y1, x0, x1, self.tissue_shards) != 0
        return MapBlock(y0, x0, values, tissue)

    def _read(
        self, array: zarr.Array, y0: int, y1: int, x0: int, x1: int, shards: ShardedLayout | None = None
    ) -> np.ndarray:
        with self._reading(array, y0, y1, x0, x1):
            if shards is not None:
                return read_window(shards, store_fetcher(array), y0, y1, x0, x1)
            return np.asarray(array[(0,) * (array.ndim - 2) + (slice(y0, y1), slice(x0, x1))])

    @contextmanager
    def _reading(self, array: zarr.Array, y0: int, y1: int, x0: int, x1: int) -> Iterator[None]:
        """Errors reading a window: ours get the marker as a note, the rest become ResultsError."""
        try:
            yield
        except StrandError as exc:
            if not isinstance(exc, ResultsError):
                exc.add_note(f"while reading marker {self.name} ({array.path})")
            raise
        except Exception as exc:  # codec failures surface as assorted ValueError/RuntimeError types
            raise ResultsError(
                f"Marker {self.name}: rows {y0}-{y1}, columns {x0}-{x1} of {array.path} "
                f"cannot be decoded ({type(exc).__name__}: {exc})",
                marker=self.name,
                path=array.path,
            ) from exc


class JobResults:
    """Read-only view of one job's result store through `GET {api_root}/jobs/{id}/results/files/{path}`.

    Metadata documents are fetched once and cached; arrays are read lazily
    through zarr. All network I/O runs on zarr's event-loop thread, so this
    object may be used from any (and several) threads. Close it, or use it as a
    context manager, to release its connection pool. `retry_policy`, when
    given, replaces the default backoff for `max_retries` attempts.
    """

    def __init__(
        self,
        *,
        api_root: str,
        api_key: str,
        job_id: str,
        timeout: float = 30.0,
        max_retries: int = 5,
        concurrency: int = 8,
        transport: httpx.AsyncBaseTransport | None = None,
        retry_policy: RetryPolicy | None = None,
    ) -> None:
        self.job_id = job_id
        self._fetcher = ResultFetcher(
            files_url=f"{api_root.rstrip('/')}/jobs/{job_id}/results/files",
            api_key=api_key,
            timeout=timeout,
            policy=retry_policy or RetryPolicy(max_retries=max_retries),
            concurrency=concurrency,
            transport=transport,
        )
        self.store = HttpResultsStore(self._fetcher)
        self._raw_docs: dict[str, bytes | bytearray | None] = {}

    def __repr__(self) -> str:
        return f"JobResults(job_id={self.job_id!r})"

    def __enter__(self) -> JobResults:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: types.TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        sync(self._fetcher.aclose())

    # ---------- metadata ----------

    def root_attributes(self) -> dict[str, Any]:
        """The root group's attributes (empty when the store has no root document, as flat stores may)."""
        doc = self._doc("zarr.json")
        attributes = doc.get("attributes") if doc is not None else None
        return copy.deepcopy(attributes) if isinstance(attributes, dict) else {}

    def microns_per_pixel(self) -> float | None:
        """Root `strand.micronsPerPixel`: the size of a level-0 marker-map pixel, when the store says."""
        return root_microns_per_pixel(self.root_attributes())

    def marker_names(self) -> list[str]:
        """Markers the manifest lists (not H&E, not the tissue mask) whose level-0 data exists.

        A marker the manifest names but the store lacks is skipped with a
        warning. Flat stores have no manifest and an HTTP store cannot list, so
        for those this is empty: open the job's markers by name instead.
        """
        refs: list[DatasetRef] = []
        for name, levels in self._manifest_markers().items():
            if levels:
                refs.append(levels[0])
            else:
                warnings.warn(
                    f"Marker {name}: the manifest lists no datasets; skipped", UserWarning, stacklevel=2
                )
        self._prefetch_docs([f"{ref.path}/zarr.json" for ref in refs])
        names: list[str] = []
        for ref in refs:
            if self._doc(f"{ref.path}/zarr.json") is None:
                warnings.warn(
                    f"Marker {ref.name}: the manifest names {ref.path} but the store lacks it; skipped",
                    UserWarning,
                    stacklevel=2,
                )
            else:
                names.append(ref.name)
        return names

    def open_marker(self, name: str, level: int = 0) -> MarkerMap:
        """Open one marker's map at pyramid `level` (0 = full resolution).

        Raises `ResultsError` naming the marker when the results do not hold it,
        the level is not there, or the array is not a 2-D map of numbers.
        """
        ref = self._find(name, level)
        if ref is None:
            listed = ", ".join(self._manifest_markers()) or "none"
            raise ResultsError(
                f"Marker {name} is not in these results (markers listed: {listed})", marker=name
            )
        if ref.geometry_error is not None:
            raise ResultsError(
                f"Marker {name}: the geometry metadata of {ref.path} cannot be right: {ref.geometry_error}",
                marker=name,
                path=ref.path,
            )
        array = self._open_array(ref, role="marker map")
        if ref.ndim is not None and ref.ndim != array.ndim:
            raise ResultsError(
                f"Marker {name}: the multiscale declares {ref.ndim} axes but {ref.path} "
                f"has {array.ndim} dimensions",
                marker=name,
                path=ref.path,
            )
        tissue_ref = self._find(TISSUE_NAME, level) if name.lower() != TISSUE_NAME else None
        tissue = self._open_array(tissue_ref, role="tissue mask", marker=name) if tissue_ref else None
        if tissue is not None and tuple(tissue.shape[-2:]) != tuple(array.shape[-2:]):
            raise ResultsError(
                f"Marker {name}: the tissue mask {tissue_ref.path if tissue_ref else ''} is "
                f"{tissue.shape[-2]}x{tissue.shape[-1]} but the map is {array.shape[-2]}x{array.shape[-1]}",
                marker=name,
                path=ref.path,
            )
        dtype = np.dtype(array.dtype)
        value_max = float(np.iinfo(dtype).max) if dtype.kind in "ui" else 1.0
        return MarkerMap(
            shards=array_layout(array),
            tissue_shards=array_layout(tissue) if tissue is not None else None,
            name=name,
            path=ref.path,
            level=level,
            array=array,
            tissue=tissue,
            transform=ref.transform,
            downsample=self._downsample(name, ref, int(array.shape[-1])),
            value_max=value_max,
        )

    # ---------- whole-store copies ----------

    def mirror_to(self, path: str | os.PathLike[str], markers: Sequence[str] = ()) -> Path:
        """Copy every object the manifest reaches to `path`, byte for byte, streaming each to disk.

        `markers` adds nodes a flat store only reaches by name (with them, a
        `tissue` node is looked for too; absent nodes are skipped). A dataset the
        manifest names but the store lacks is dropped from the local root
        `zarr.json` with a warning (the official SDK does the same), so the copy
        opens with `zarr.open`; absent chunk objects stay absent (= fill value).
        """
        out = Path(path).resolve()
        out.mkdir(parents=True, exist_ok=True)
        root_raw = self._raw("zarr.json")
        refs = [
            ref
            for entry in multiscales(self.root_attributes())
            for ref in entry_datasets(entry, name=entry_name(entry) or "")
        ]
        for name in [*markers, TISSUE_NAME] if markers else []:
            if not any(ref.name == name for ref in refs):
                refs.extend(self._all_levels(name))
        self._prefetch_docs([f"{ref.path}/zarr.json" for ref in refs])
        present = [ref for ref in refs if self._doc(f"{ref.path}/zarr.json") is not None]
        missing = sorted({ref.path for ref in refs} - {ref.path for ref in present})
        group_docs = sorted(
            {
                f"{'/'.join(ref.path.split('/')[:depth])}/zarr.json"
                for ref in present
                for depth in range(1, ref.path.count("/") + 1)
            }
        )
        self._prefetch_docs(group_docs)
        for key in [*group_docs, *(f"{ref.path}/zarr.json" for ref in present)]:
            raw = self._raw(key)
            if raw is not None:
                _write_inside(out, key, raw)
        objects = [
            f"{ref.path}/{key}"
            for ref in {ref.path: ref for ref in present}.values()
            for key in chunk_keys(self._doc(f"{ref.path}/zarr.json") or {})
        ]
        sync(self._download_all(out, objects))
        if root_raw is not None:
            _write_inside(out, "zarr.json", _without_datasets(root_raw, missing) if missing else root_raw)
        if missing:
            warnings.warn(
                "The results manifest names datasets the store does not have; "
                f"left out of the local copy: {', '.join(missing)}",
                UserWarning,
                stacklevel=2,
            )
        return out

    def to_anndata(
        self,
        markers: Sequence[str] | None = None,
        level: int = 0,
        slide_size: tuple[int, int] | None = None,
        max_pixels: int = 16_000_000,
        slide_mpp: float = 0.0,
    ) -> Any:
        """One observation per map pixel inside tissue, one variable per marker (values in [0, 1]).

        Meant for maps up to a few million pixels: it holds every marker at
        `level` in memory, so pick a level accordingly (each level halves the
        side); above `max_pixels` it refuses rather than exhaust memory. Tissue is
        where every marker has a value (not NaN) and the tissue node, if any, is
        non-zero. `obsm['spatial']` holds each pixel centre's (x, y) in level-0
        slide pixels, placed by `MarkerMap.slide_geometry` for a slide of
        `slide_size` (width, height) at `slide_mpp` µm/px (physical scales need
        it); with nothing to go on, left in map pixels.
        """
        try:
            import anndata
            import pandas as pd
        except ImportError as exc:
            raise StrandError("to_anndata() needs the 'anndata' extra: pip install anndata pandas") from exc
        names = list(markers) if markers is not None else self.marker_names()
        if not names:
            raise ResultsError("No marker maps to assemble into an AnnData")
        maps = [self.open_marker(name, level) for name in names]
        height, width = maps[0].height, maps[0].width
        for marker_map in maps:
            if (marker_map.height, marker_map.width) != (height, width):
                raise ResultsError(
                    f"Marker {marker_map.name} is {marker_map.height}x{marker_map.width} at level {level}, "
                    f"but {maps[0].name} is {height}x{width}; they cannot share observations",
                    marker=marker_map.name,
                )
        if height * width > max_pixels:
            raise ResultsError(
                f"Level {level} maps are {height}x{width} = {height * width} pixels, above the "
                f"{max_pixels} this in-memory form allows; ask for a coarser level"
            )
        columns: list[np.ndarray] = []
        inside = np.ones((height, width), dtype=bool)
        for marker_map in maps:
            values = marker_map.read(0, height, 0, width)
            normalised = values.astype(np.float32) / np.float32(marker_map.value_max)
            if normalised.dtype.kind == "f":
                inside &= ~np.isnan(normalised)
            mask = marker_map.read_tissue(0, height, 0, width)
            if mask is not None:
                inside &= mask
            columns.append(normalised)
        rows, cols = np.nonzero(inside)
        matrix = np.stack([column[rows, cols] for column in columns], axis=1)
        geometry = maps[0].slide_geometry(
            slide_mpp=slide_mpp,
            slide_size=(slide_size[1], slide_size[0]) if slide_size is not None else (0, 0),
            root_mpp=self.microns_per_pixel(),
        )
        (scale_y, scale_x), (offset_y, offset_x) = geometry.scale, geometry.offset
        spatial = np.stack([(cols + 0.5) * scale_x + offset_x, (rows + 0.5) * scale_y + offset_y], axis=1)
        return anndata.AnnData(
            X=matrix,
            obs=pd.DataFrame(index=pd.Index((rows * width + cols).astype(str), name="pixel")),
            var=pd.DataFrame(index=pd.Index(names, name="marker")),
            obsm={"spatial": spatial},
            uns={
                "strand": {
                    "job_id": self.job_id,
                    "level": level,
                    "map_shape": [height, width],
                    "scale_to_slide": [scale_y, scale_x],
                    "microns_per_pixel": self.microns_per_pixel(),
                }
            },
        )

    # ---------- internals ----------

    def _manifest_markers(self) -> dict[str, list[DatasetRef]]:
        """Marker entries of the root manifest (not H&E, not the tissue mask), in manifest order."""
        markers: dict[str, list[DatasetRef]] = {}
        for entry in multiscales(self.root_attributes()):
            name = entry_name(entry)
            if name is not None and name != HE_NAME and name.lower() != TISSUE_NAME:
                markers[name] = entry_datasets(entry, name=name)
        return markers

    def _find(self, name: str, level: int) -> DatasetRef | None:
        """Where `name` at `level` lives: the root manifest, else a node of that name (flat, OME group)."""
        for entry in multiscales(self.root_attributes()):
            entry_label = entry_name(entry)
            matches = entry_label == name or (
                name == TISSUE_NAME and entry_label is not None and entry_label.lower() == TISSUE_NAME
            )
            if matches:
                return _level(entry_datasets(entry, name=name), name, level)
        doc = self._doc(f"{name}/zarr.json")
        if doc is None:
            return None
        if doc.get("node_type") == "array":
            return _level([DatasetRef(name=name, level=0, path=name)], name, level)
        entries = multiscales(doc.get("attributes") or {})
        if not entries:
            raise ResultsError(
                f"Marker {name}: {name}/zarr.json is a group without multiscales metadata", marker=name
            )
        return _level(entry_datasets(entries[0], name=name, prefix=name), name, level)

    def _all_levels(self, name: str) -> list[DatasetRef]:
        refs: list[DatasetRef] = []
        while (ref := self._find_quiet(name, len(refs))) is not None:
            refs.append(ref)
        return refs

    def _find_quiet(self, name: str, level: int) -> DatasetRef | None:
        try:
            return self._find(name, level)
        except ResultsError:
            return None

    def _open_array(self, ref: DatasetRef, *, role: str, marker: str | None = None) -> zarr.Array:
        marker = marker or ref.name
        meta = self._doc(f"{ref.path}/zarr.json")
        if meta is None:
            raise ResultsError(
                f"Marker {marker}: the {role} at {ref.path} (level {ref.level}) is named in the results "
                "but the store does not have it",
                marker=marker,
                path=ref.path,
            )
        if meta.get("node_type") != "array" or meta.get("zarr_format") != 3:
            raise ResultsError(
                f"Marker {marker}: {ref.path} is not a zarr v3 array", marker=marker, path=ref.path
            )
        try:
            array = zarr.open_array(store=self.store, path=ref.path, mode="r", zarr_format=3)
        except StrandError:
            raise
        except Exception as exc:  # zarr rejects unknown codecs or dtypes with assorted exception types
            raise ResultsError(
                f"Marker {marker}: the {role} at {ref.path} cannot be opened ({type(exc).__name__}: {exc})",
                marker=marker,
                path=ref.path,
            ) from exc
        shape = tuple(int(v) for v in array.shape)
        if len(shape) < 2 or any(v != 1 for v in shape[:-2]):
            raise ResultsError(
                f"Marker {marker}: the {role} at {ref.path} has shape {list(shape)}; "
                "expected [H, W] or [1, H, W]",
                marker=marker,
                path=ref.path,
            )
        if np.dtype(array.dtype).kind not in "fuib":
            raise ResultsError(
                f"Marker {marker}: the {role} at {ref.path} holds {array.dtype}, not numbers",
                marker=marker,
                path=ref.path,
            )
        return array

    def _downsample(self, name: str, ref: DatasetRef, width: int) -> float:
        """Level-0 width over this level's width (1 at level 0; 2**level when level 0 is unreadable)."""
        if ref.level == 0:
            return 1.0
        base = self._find_quiet(name, 0)
        meta = self._doc(f"{base.path}/zarr.json") if base is not None else None
        shape = meta.get("shape") if meta is not None else None
        if isinstance(shape, list) and shape and width > 0:
            return float(shape[-1]) / width
        return float(2**ref.level)

    def _raw(self, key: str) -> bytes | bytearray | None:
        if key not in self._raw_docs:
            body = sync(self._fetcher.get(key))
            self._raw_docs[key] = None if body is None else as_bytes(body)
        return self._raw_docs[key]

    def _doc(self, key: str) -> dict[str, Any] | None:
        raw = self._raw(key)
        if raw is None:
            return None
        try:
            doc = json.loads(raw)
        except ValueError as exc:
            raise ResultsError(f"The results document {key} is not valid JSON", path=key) from exc
        if not isinstance(doc, dict):
            raise ResultsError(f"The results document {key} is not a JSON object", path=key)
        return doc

    def _prefetch_docs(self, keys: Sequence[str]) -> None:
        """Fetch uncached metadata documents concurrently (one round trip instead of one per marker)."""
        todo = sorted({key for key in keys if key not in self._raw_docs})

        async def fetch_all() -> list[bytes | bytearray | None]:
            bodies = await asyncio.gather(*(self._fetcher.get(key) for key in todo))
            return [None if body is None else as_bytes(body) for body in bodies]

        if todo:
            self._raw_docs.update(zip(todo, sync(fetch_all()), strict=True))

    async def _download_all(self, out: Path, keys: Sequence[str]) -> None:
        for key in keys:
            _inside(out, key)
        await asyncio.gather(*(self._fetcher.download(key, out / key) for key in keys))


def _same(block: MapBlock) -> MapBlock:
    return block


def _level(refs: list[DatasetRef], name: str, level: int) -> DatasetRef:
    if not 0 <= level < len(refs):
        raise ResultsError(
            f"Marker {name}: level {level} was asked for but the results list {len(refs)} level(s)",
            marker=name,
        )
    return refs[level]


def _inside(root: Path, key: str) -> Path:
    """`root/key`, refusing keys (from server metadata) that would escape `root`."""
    target = (root / key).resolve()
    if not target.is_relative_to(root):
        raise ResultsError(f"The results name a file outside the store ({key!r}); refusing to write it")
    return target


def _write_inside(root: Path, key: str, data: bytes | bytearray) -> None:
    target = _inside(root, key)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)


def _without_datasets(root_raw: bytes | bytearray, missing: Sequence[str]) -> bytes:
    """The root document with the missing datasets taken out of every multiscales entry."""
    doc = json.loads(root_raw)
    for entry in multiscales(doc.get("attributes") or {}):
        datasets = entry.get("datasets")
        if isinstance(datasets, list):
            entry["datasets"] = [
                d
                for d in datasets
                if not (isinstance(d, dict) and str(d.get("path", "")).strip("/") in missing)
            ]
    return json.dumps(doc, indent=2).encode()
