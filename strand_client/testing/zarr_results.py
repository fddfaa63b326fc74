"""Deterministic Strand result stores (OME-Zarr v3) with known ground truth, and a way to serve them.

Tests and benches need result stores shaped exactly like the live platform's
(and like the older layouts it still serves), with figures they can check
against. Everything here is written by zarr-python itself, so the codecs,
shard indexes and checksums are the real thing, not a hand-rolled imitation.

The synthetic slide is a function of pixel coordinates (an irregular tissue
blob with a hole, per-marker smooth expression plus Gaussian hotspots at known
places, plus noise seeded per 256 x 256 tile), so any region can be generated
on its own: `build_results` makes a small store in memory, `write_results`
writes a whole-slide-sized one to disk one shard at a time.

Geometry is written the way OME-Zarr writers write it (OME-NGFF 0.5): `axes`
with `"unit": "micrometer"` by default (or nanometer, millimeter, or none), a
`scale` that is the physical pixel size per axis (anisotropic if asked), an
optional `translation`, optionally split between the dataset and the
multiscale; pyramid levels whose sizes are ceil or floor of a halving; and,
like the platform, maps optionally padded to whole shards beyond the slide.

`results_files_app` serves a store (in memory or on disk) over HTTP the way the
platform's file proxy does, with bearer auth and `Range` support.
"""

from __future__ import annotations

import hmac
import math
import socket
import threading
import time
import zlib
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import uvicorn
import zarr
import zarr.codecs
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route
from zarr.storage import LocalStore, MemoryStore

Layout = Literal["sharded", "unsharded", "unsharded-zstd", "flat", "ome-ngff"]
TissueMode = Literal["nan", "node", "none"]

LAYOUTS: tuple[str, ...] = ("sharded", "unsharded", "unsharded-zstd", "flat", "ome-ngff")
HE_NAME = "H&E"
TISSUE_NAME = "tissue"
_NOISE_TILE = 256  # noise is seeded per tile of this size, so any region regenerates identically
_NOISE_SIGMA = 0.05
# µm per unit for the units this fake writes: its own small table, not the reader's.
_UNIT_MICRONS = {"micrometer": 1.0, "nanometer": 0.001, "millimeter": 1000.0}
ROUNDINGS = ("ceil", "floor")


@dataclass(frozen=True, slots=True)
class _Hotspot:
    v: float  # centre row, as a fraction of the height
    u: float  # centre column, as a fraction of the width
    sigma: float  # as a fraction of the shorter side
    height: float


@dataclass(frozen=True, slots=True)
class _MarkerModel:
    """The analytic expression field of one marker; every term is separable in (y, x) so it is cheap."""

    key: int
    base: float
    wave_amp: float
    wave_fu: float
    wave_fv: float
    wave_pu: float
    wave_pv: float
    hotspots: tuple[_Hotspot, ...]


@dataclass(frozen=True, slots=True)
class _TissueModel:
    cu: float
    cv: float
    ru: float
    rv: float
    wobble: tuple[tuple[int, float, float], ...]  # (harmonic, amplitude, phase) of the outline
    hole_u: float
    hole_v: float
    hole_r: float


@dataclass
class ResultsFixture:
    """A result store as `{key: object bytes}` plus the figures a reader must recover from it.

    `truth[m]` is marker `m` at full resolution exactly as stored (float64, ints
    divided by their dtype maximum), NaN outside `tissue` and in any padding
    beyond the slide. `hotspots[m]` are the centres (row, column) of the dense
    regions placed in marker `m`, strongest first. The geometry fields say what
    the metadata was written from: `slide_scale` (y, x) level-0 slide pixels per
    level-0 map pixel, `translation` (y, x) the slide pixel where the map
    starts, `slide_mpp` the slide's µm per pixel, `units` the axes' unit.
    `height` x `width` is the map over the slide; `level_shapes` the stored
    array shapes (padded when `padded`), `data_shapes` the part holding data.
    """

    files: dict[str, bytes]
    truth: dict[str, np.ndarray]
    tissue: np.ndarray
    layout: str
    dataset_paths: dict[str, str]
    hotspots: dict[str, list[tuple[int, int]]] = field(default_factory=dict)
    slide_scale: tuple[float, float] = (1.0, 1.0)
    microns_per_pixel: float | None = None
    dtype: str = "float32"
    tissue_mode: str = "nan"
    units: str | None = "micrometer"
    slide_mpp: float = 0.5
    translation: tuple[float, float] = (0.0, 0.0)
    height: int = 0
    width: int = 0
    level_shapes: list[tuple[int, int]] = field(default_factory=list)
    data_shapes: list[tuple[int, int]] = field(default_factory=list)
    padded: bool = False

    def level_truth(self, marker: str, level: int) -> np.ndarray:
        """The expected map at pyramid `level`: every 2**level-th pixel of level 0, cut to its size."""
        return self._level(self.truth[marker][: self.height, : self.width], level, np.nan)

    def level_tissue(self, level: int) -> np.ndarray:
        return self._level(self.tissue[: self.height, : self.width], level, False)

    def _level(self, full: np.ndarray, level: int, pad: Any) -> np.ndarray:
        step = 2**level
        data_h, data_w = self.data_shapes[level]
        out = np.full(self.level_shapes[level], pad, dtype=full.dtype)
        out[:data_h, :data_w] = full[::step, ::step][:data_h, :data_w]
        return out


def build_results(
    markers: Sequence[str],
    height: int,
    width: int,
    *,
    layout: str = "sharded",
    seed: int = 0,
    dtype: str = "float32",
    tissue_mode: str = "nan",
    microns_per_pixel: float | None = None,
    missing_datasets: Sequence[str] = (),
    ndim: int = 3,
    levels: int = 2,
    slide_scale: float | tuple[float, float] = 1.0,
    chunk: int = 256,
    chunks_per_shard: int = 8,
    with_he: bool = True,
    units: str | None = "micrometer",
    slide_mpp: float = 0.5,
    translation: tuple[float, float] = (0.0, 0.0),
    pad_to_shards: bool = False,
    level_rounding: str = "ceil",
    split_transforms: bool = False,
) -> ResultsFixture:
    """Build a complete result store in memory.

    `ndim` 3 gives the platform's `[1, H, W]` marker arrays, 2 gives plain `[H, W]`.
    `height` x `width` map pixels cover the slide; `slide_scale` is how many
    slide pixels one level-0 map pixel covers (y, x; one number for square
    pixels) and `translation` the slide pixel (y, x) where the map starts. They
    are written into `coordinateTransformations` in `units` (None: unit-less,
    i.e. level-0 slide pixels), using `slide_mpp` µm per slide pixel; with
    `split_transforms` the pixel size and translation sit on the multiscale
    and each dataset carries only its level's factor. `pad_to_shards` rounds
    every array up to whole storage objects (the platform does), the padding
    left as fill. Level l is every 2**l-th pixel, `level_rounding` "ceil" or
    "floor" of the halved size. `missing_datasets` are named in the manifest
    but their objects are left out, as the platform did for results written
    before its level-count fix.
    """
    spec = _Spec.make(
        markers, height, width, layout, seed, dtype, tissue_mode, microns_per_pixel, ndim, levels,
        slide_scale, chunk, chunks_per_shard, with_he, units, slide_mpp, translation, pad_to_shards,
        level_rounding, split_transforms,
    )  # fmt: skip
    store_dict: dict[str, Any] = {}
    store = MemoryStore(store_dict)
    arrays = _create_nodes(store, spec)
    ys, xs = np.arange(height), np.arange(width)
    tissue = _tissue_mask(spec.tissue_model, height, width, ys, xs)
    truth: dict[str, np.ndarray] = {}
    padded_shape = spec.level_shape(0)
    for name, model in spec.marker_models.items():
        stored = _stored_values(spec, model, tissue, ys, xs)
        truth[name] = _pad(_as_truth(spec, stored, tissue), padded_shape, np.nan)
        for level, array in enumerate(arrays.get(name, [])):
            _write_region(array, spec.level_data(stored, level), 0, 0, spec.ndim)
    if spec.tissue_mode == "node":
        for level, array in enumerate(arrays.get(TISSUE_NAME, [])):
            _write_region(array, spec.level_data(tissue.astype(np.uint8), level), 0, 0, spec.ndim)
    for level, array in enumerate(arrays.get(HE_NAME, [])):
        rgb = _he_rgb(spec.level_data(tissue, level), spec.seed)
        array[:, : rgb.shape[1], : rgb.shape[2]] = rgb
    files = {key: buffer.to_bytes() for key, buffer in store_dict.items()}
    _drop_datasets(files, missing_datasets)
    return ResultsFixture(
        files=files,
        truth=truth,
        tissue=_pad(
            tissue if spec.tissue_mode != "none" else np.ones((height, width), dtype=bool),
            padded_shape,
            False,
        ),
        layout=layout,
        dataset_paths={name: spec.dataset_path(name, 0) for name in markers},
        hotspots={
            name: [(round(h.v * height), round(h.u * width)) for h in model.hotspots]
            for name, model in spec.marker_models.items()
        },
        slide_scale=spec.slide_scale,
        microns_per_pixel=microns_per_pixel,
        dtype=dtype,
        tissue_mode=tissue_mode,
        units=units,
        slide_mpp=slide_mpp,
        translation=spec.translation,
        height=height,
        width=width,
        level_shapes=[spec.level_shape(level) for level in range(spec.levels)],
        data_shapes=[spec.data_shape(level) for level in range(spec.levels)],
        padded=pad_to_shards,
    )


def write_results(
    path: str | Path,
    markers: Sequence[str],
    height: int,
    width: int,
    *,
    layout: str = "sharded",
    seed: int = 0,
    dtype: str = "float32",
    tissue_mode: str = "nan",
    microns_per_pixel: float | None = None,
    ndim: int = 3,
    levels: int = 1,
    slide_scale: float | tuple[float, float] = 1.0,
    chunk: int = 256,
    chunks_per_shard: int = 8,
    with_he: bool = False,
    units: str | None = "micrometer",
    slide_mpp: float = 0.5,
) -> Path:
    """Write the same store as `build_results` to a directory, one storage object's region at a time.

    Memory stays at a few copies of one shard whatever the map size, which is
    what lets benches make 20000 x 20000 maps. No ground truth is kept: a
    reader's figures on a map this size are checked by the benches' own passes.
    """
    spec = _Spec.make(
        markers, height, width, layout, seed, dtype, tissue_mode, microns_per_pixel, ndim, levels,
        slide_scale, chunk, chunks_per_shard, with_he, units, slide_mpp, (0.0, 0.0), False, "ceil", False,
    )  # fmt: skip
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    arrays = _create_nodes(LocalStore(out), spec)
    for name, level_arrays in arrays.items():
        for level, array in enumerate(level_arrays):
            step = 2**level
            region_h, region_w = (int(v) for v in (array.shards or array.chunks)[-2:])
            for y0 in range(0, int(array.shape[-2]), region_h):
                for x0 in range(0, int(array.shape[-1]), region_w):
                    ys = np.arange(y0, min(y0 + region_h, int(array.shape[-2]))) * step
                    xs = np.arange(x0, min(x0 + region_w, int(array.shape[-1]))) * step
                    tissue = _tissue_mask(spec.tissue_model, height, width, ys, xs)
                    if name == HE_NAME:
                        array[:, y0 : y0 + len(ys), x0 : x0 + len(xs)] = _he_rgb(tissue, spec.seed)
                    elif name == TISSUE_NAME:
                        _write_region(array, tissue.astype(np.uint8), y0, x0, spec.ndim)
                    else:
                        values = _stored_values(spec, spec.marker_models[name], tissue, ys, xs)
                        _write_region(array, values, y0, x0, spec.ndim)
    return out


def _pad(values: np.ndarray, shape: tuple[int, int], fill: Any) -> np.ndarray:
    if values.shape == shape:
        return values
    out = np.full(shape, fill, dtype=values.dtype)
    out[: values.shape[0], : values.shape[1]] = values
    return out


# ---------- serving ----------


def results_files_app(
    source: Mapping[str, bytes] | str | Path,
    *,
    api_key: str,
    honour_range: bool = True,
) -> Starlette:
    """An ASGI app serving a store at `/api/v1/jobs/{job_id}/results/files/{path}` like the platform.

    Bearer auth (401 otherwise), 404 for absent objects, `Range` answered with 206
    unless `honour_range` is off (then the whole object comes back with 200, as
    some proxies do). Any job id is accepted: one app serves one store.
    """
    root = Path(source).resolve() if isinstance(source, str | Path) else None
    files = source if isinstance(source, Mapping) else None
    expected = f"Bearer {api_key}".encode()

    async def serve(request: Request) -> Response:
        supplied = request.headers.get("authorization", "").encode()
        if not hmac.compare_digest(supplied, expected):
            return JSONResponse({"error": "unauthorized", "message": "Invalid API key"}, status_code=401)
        key = request.path_params["path"]
        range_header = request.headers.get("range") if honour_range else None
        if root is not None:
            target = (root / key).resolve()
            if not target.is_relative_to(root) or not target.is_file():
                return _not_found(key)
            if range_header is None:
                return FileResponse(target, media_type="application/octet-stream")
            data = target.read_bytes()
        else:
            assert files is not None
            if key not in files:
                return _not_found(key)
            data = files[key]
        return _bytes_response(data, range_header)

    return Starlette(routes=[Route("/api/v1/jobs/{job_id}/results/files/{path:path}", serve)])


@contextmanager
def serve_app(app: Starlette, *, timeout: float = 10.0) -> Iterator[str]:
    """Run `app` under uvicorn on a free 127.0.0.1 port in a thread; yields its base URL."""
    # proto=IPPROTO_TCP matters: asyncio only sets TCP_NODELAY on accepted sockets whose proto says TCP,
    # and without it every keep-alive response after the first waits ~40 ms for a delayed ACK.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the results file server did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout)
        sock.close()


def _not_found(key: str) -> JSONResponse:
    return JSONResponse({"error": "not_found", "message": f"No result file {key}"}, status_code=404)


def _bytes_response(data: bytes, range_header: str | None) -> Response:
    if range_header is None:
        return Response(data, media_type="application/octet-stream")
    span = _parse_range(range_header, len(data))
    if span is None:
        return Response(status_code=416, headers={"Content-Range": f"bytes */{len(data)}"})
    start, end = span
    return Response(
        data[start:end],
        status_code=206,
        media_type="application/octet-stream",
        headers={"Content-Range": f"bytes {start}-{end - 1}/{len(data)}"},
    )


def _parse_range(header: str, size: int) -> tuple[int, int] | None:
    """One `bytes=` range as a half-open span, or None when unsatisfiable."""
    unit, _, spec = header.partition("=")
    first, _, last = spec.strip().partition("-")
    if unit.strip() != "bytes" or "," in spec:
        return None
    if first == "":
        start, end = max(0, size - int(last)), size
    else:
        start = int(first)
        end = size if last == "" else min(size, int(last) + 1)
    return (start, end) if start < end else None


# ---------- what gets written where ----------


@dataclass(frozen=True)
class _Spec:
    markers: tuple[str, ...]
    height: int
    width: int
    layout: str
    seed: int
    dtype: np.dtype[Any]
    tissue_mode: str
    microns_per_pixel: float | None
    ndim: int
    levels: int
    slide_scale: tuple[float, float]
    chunk: int
    chunks_per_shard: int
    with_he: bool
    units: str | None
    slide_mpp: float
    translation: tuple[float, float]
    pad_to_shards: bool
    level_rounding: str
    split_transforms: bool
    tissue_model: _TissueModel
    marker_models: dict[str, _MarkerModel]

    @classmethod
    def make(
        cls,
        markers: Sequence[str],
        height: int,
        width: int,
        layout: str,
        seed: int,
        dtype: str,
        tissue_mode: str,
        microns_per_pixel: float | None,
        ndim: int,
        levels: int,
        slide_scale: float | tuple[float, float],
        chunk: int,
        chunks_per_shard: int,
        with_he: bool,
        units: str | None,
        slide_mpp: float,
        translation: tuple[float, float],
        pad_to_shards: bool,
        level_rounding: str,
        split_transforms: bool,
    ) -> _Spec:
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, not {layout!r}")
        np_dtype = np.dtype(dtype)
        if np_dtype.kind not in "fu":
            raise ValueError(f"dtype must be float32/float64 or an unsigned integer, not {dtype}")
        if tissue_mode not in ("nan", "node", "none"):
            raise ValueError(f"tissue_mode must be 'nan', 'node' or 'none', not {tissue_mode!r}")
        if tissue_mode == "nan" and np_dtype.kind != "f":
            raise ValueError("integer maps cannot mark background with NaN; use tissue_mode 'node' or 'none'")
        if ndim not in (2, 3):
            raise ValueError("ndim must be 2 or 3")
        if len(set(markers)) != len(markers) or {HE_NAME, TISSUE_NAME} & set(markers):
            raise ValueError(f"marker names must be distinct and not {HE_NAME!r} or {TISSUE_NAME!r}")
        if units is not None and units not in _UNIT_MICRONS:
            raise ValueError(f"units must be one of {sorted(_UNIT_MICRONS)} or None, not {units!r}")
        if level_rounding not in ROUNDINGS:
            raise ValueError(f"level_rounding must be one of {ROUNDINGS}, not {level_rounding!r}")
        scale = (slide_scale, slide_scale) if isinstance(slide_scale, int | float) else slide_scale
        return cls(
            markers=tuple(markers),
            height=height,
            width=width,
            layout=layout,
            seed=seed,
            dtype=np_dtype,
            tissue_mode=tissue_mode,
            microns_per_pixel=microns_per_pixel,
            ndim=ndim,
            levels=1 if layout == "flat" else max(1, levels),
            slide_scale=(float(scale[0]), float(scale[1])),
            chunk=chunk,
            chunks_per_shard=chunks_per_shard,
            with_he=with_he and layout != "flat",
            units=units,
            slide_mpp=slide_mpp,
            translation=(float(translation[0]), float(translation[1])),
            pad_to_shards=pad_to_shards,
            level_rounding=level_rounding,
            split_transforms=split_transforms,
            tissue_model=_make_tissue_model(seed),
            marker_models={name: _make_marker_model(name, seed) for name in markers},
        )

    @property
    def storage_side(self) -> int:
        """Side of one storage object: a shard when sharded, else a chunk."""
        return self.chunk * self.chunks_per_shard if self.layout == "sharded" else self.chunk

    def data_shape(self, level: int) -> tuple[int, int]:
        """Rows and columns holding data at `level`: the level-0 size halved `level` times, ceil or floor."""
        step = 2**level
        rounding = math.ceil if self.level_rounding == "ceil" else math.floor
        return max(1, rounding(self.height / step)), max(1, rounding(self.width / step))

    def level_shape(self, level: int) -> tuple[int, int]:
        """The array's stored shape at `level`: the data, padded to whole storage objects if asked."""
        rows, cols = self.data_shape(level)
        if not self.pad_to_shards:
            return rows, cols
        side = self.storage_side
        return -(-rows // side) * side, -(-cols // side) * side

    def level_data(self, full: np.ndarray, level: int) -> np.ndarray:
        step = 2**level
        rows, cols = self.data_shape(level)
        return full[::step, ::step][:rows, :cols]

    def dataset_path(self, name: str, level: int) -> str:
        if self.layout == "flat":
            return name
        if self.layout == "ome-ngff":
            return f"{'he' if name == HE_NAME else name}/{level}"
        if name == HE_NAME:
            return f"he/{level}"
        if name == TISSUE_NAME:
            return f"{TISSUE_NAME}/{level}"
        return f"markers/{name}/{level}"

    def node_names(self) -> list[str]:
        names = [HE_NAME] if self.with_he else []
        names += list(self.markers)
        if self.tissue_mode == "node":
            names.append(TISSUE_NAME)
        return names

    def _physical(self, slide_px: float) -> float:
        """A length in slide pixels, in the axes' unit (slide pixels themselves when unit-less)."""
        if self.units is None:
            return slide_px
        return slide_px * self.slide_mpp / _UNIT_MICRONS[self.units]

    def multiscale(self, name: str, *, relative: bool = False) -> dict[str, Any]:
        """One `multiscales` entry (OME-NGFF 0.5); `relative` paths for an image group's own metadata."""
        unit = {"unit": self.units} if self.units is not None else {}
        spatial = [{"name": "y", "type": "space", **unit}, {"name": "x", "type": "space", **unit}]
        three_d = name == HE_NAME or self.ndim == 3
        axes = [{"name": "c", "type": "channel"}, *spatial] if three_d else spatial
        lead = [1.0] if three_d else []
        lead_shift = [0.0] if three_d else []
        pixel = [self._physical(self.slide_scale[0]), self._physical(self.slide_scale[1])]
        shift = [self._physical(self.translation[0]), self._physical(self.translation[1])]
        moved = shift != [0.0, 0.0]
        datasets = []
        for level in range(self.levels):
            factor = float(2**level)
            path = self.dataset_path(name, level)
            if self.split_transforms:
                transforms: list[dict[str, Any]] = [{"type": "scale", "scale": [*lead, factor, factor]}]
            else:
                transforms = [{"type": "scale", "scale": [*lead, pixel[0] * factor, pixel[1] * factor]}]
                if moved:
                    transforms.append({"type": "translation", "translation": [*lead_shift, *shift]})
            datasets.append(
                {
                    "path": path.rsplit("/", 1)[-1] if relative else path,
                    "coordinateTransformations": transforms,
                }
            )
        entry: dict[str, Any] = {"name": name, "axes": axes, "datasets": datasets}
        if self.split_transforms:
            entry["coordinateTransformations"] = [{"type": "scale", "scale": [*lead, *pixel]}] + (
                [{"type": "translation", "translation": [*lead_shift, *shift]}] if moved else []
            )
        return entry

    def root_attributes(self) -> dict[str, Any]:
        attrs: dict[str, Any] = {}
        if self.microns_per_pixel is not None:
            attrs["strand"] = {"micronsPerPixel": self.microns_per_pixel}
        if self.layout == "flat":
            return attrs
        entries = [self.multiscale(name) for name in self.node_names()]
        if self.layout == "ome-ngff":
            attrs["ome"] = {"version": "0.5", "multiscales": entries}
        else:
            attrs["multiscales"] = entries
        return attrs


def _create_nodes(store: MemoryStore | LocalStore, spec: _Spec) -> dict[str, list[zarr.Array]]:
    """Create the root group, any OME image groups and every (empty) array; returns name -> levels."""
    root = zarr.open_group(store, mode="w", attributes=spec.root_attributes())
    sharded = spec.layout == "sharded"
    compressed = spec.layout != "unsharded"
    arrays: dict[str, list[zarr.Array]] = {}
    for name in spec.node_names():
        if spec.layout == "ome-ngff":
            root.create_group(
                spec.dataset_path(name, 0).split("/")[0],
                attributes={"ome": {"version": "0.5", "multiscales": [spec.multiscale(name, relative=True)]}},
            )
        is_he = name == HE_NAME
        levels: list[zarr.Array] = []
        for level in range(spec.levels):
            h, w = spec.level_shape(level)
            lead: tuple[int, ...] = (3,) if is_he else ((1,) if spec.ndim == 3 else ())
            dtype = np.dtype("uint8") if is_he or name == TISSUE_NAME else spec.dtype
            fill: float | int = math.nan if dtype.kind == "f" and spec.tissue_mode == "nan" else 0
            inner = (*lead, spec.chunk, spec.chunk)
            shard = (*lead, spec.chunk * spec.chunks_per_shard, spec.chunk * spec.chunks_per_shard)
            levels.append(
                root.create_array(
                    spec.dataset_path(name, level),
                    shape=(*lead, h, w),
                    dtype=dtype,
                    chunks=inner,
                    shards=shard if sharded else None,
                    compressors=zarr.codecs.ZstdCodec(level=3) if compressed else None,
                    fill_value=fill,
                    dimension_names=(("c",) if lead else ()) + ("y", "x"),
                )
            )
        arrays[name] = levels
    return arrays


def _write_region(array: zarr.Array, values: np.ndarray, y0: int, x0: int, ndim: int) -> None:
    rows, cols = slice(y0, y0 + values.shape[0]), slice(x0, x0 + values.shape[1])
    if ndim == 3:
        array[0, rows, cols] = values
    else:
        array[rows, cols] = values


def _drop_datasets(files: dict[str, bytes], paths: Sequence[str]) -> None:
    for path in paths:
        doomed = [key for key in files if key.startswith(f"{path}/")]
        if not doomed:
            raise ValueError(f"missing_datasets names {path!r}, which this layout does not write")
        for key in doomed:
            del files[key]


# ---------- the synthetic slide ----------


def _make_tissue_model(seed: int) -> _TissueModel:
    rng = np.random.default_rng([seed, 7])
    return _TissueModel(
        cu=0.5 + rng.uniform(-0.04, 0.04),
        cv=0.5 + rng.uniform(-0.04, 0.04),
        ru=rng.uniform(0.36, 0.42),
        rv=rng.uniform(0.34, 0.40),
        wobble=tuple((k, rng.uniform(0.03, 0.07), rng.uniform(0, 2 * np.pi)) for k in (2, 3, 5)),
        hole_u=0.5 + rng.uniform(-0.12, 0.12),
        hole_v=0.5 + rng.uniform(0.12, 0.2),
        hole_r=rng.uniform(0.04, 0.07),
    )


def _make_marker_model(name: str, seed: int) -> _MarkerModel:
    """Per-marker parameters, derived from the name so a marker looks the same in any panel."""
    key = zlib.crc32(name.encode())
    rng = np.random.default_rng([seed, key])
    hotspots: list[_Hotspot] = []
    for _ in range(int(rng.integers(2, 5))):
        # Polar placement well inside the outline (which never dips below 0.83 of the radius),
        # avoiding the band where the hole sits.
        angle = rng.uniform(0, 2 * np.pi)
        if 0.25 * np.pi < angle < 0.75 * np.pi:
            angle += np.pi
        radius = rng.uniform(0.1, 0.6)
        hotspots.append(
            _Hotspot(
                v=0.5 + 0.36 * radius * np.sin(angle),
                u=0.5 + 0.38 * radius * np.cos(angle),
                sigma=rng.uniform(0.025, 0.05),
                height=rng.uniform(0.45, 0.8),
            )
        )
    hotspots.sort(key=lambda h: -h.height)
    return _MarkerModel(
        key=key,
        base=rng.uniform(0.08, 0.32),
        wave_amp=rng.uniform(0.05, 0.15),
        wave_fu=rng.uniform(1.0, 4.0),
        wave_fv=rng.uniform(1.0, 4.0),
        wave_pu=rng.uniform(0, 2 * np.pi),
        wave_pv=rng.uniform(0, 2 * np.pi),
        hotspots=tuple(hotspots),
    )


def _tissue_mask(model: _TissueModel, height: int, width: int, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Tissue at level-0 rows `ys` x columns `xs`: a wobbly ellipse with a round hole (a lumen)."""
    v = ((ys + 0.5) / height)[:, None]
    u = ((xs + 0.5) / width)[None, :]
    dv, du = (v - model.cv) / model.rv, (u - model.cu) / model.ru
    theta = np.arctan2(dv, du)
    outline = 1.0 + sum(a * np.sin(k * theta + p) for k, a, p in model.wobble)
    inside: np.ndarray = (du * du + dv * dv) < outline * outline
    hole = ((u - model.hole_u) ** 2 + (v - model.hole_v) ** 2) < model.hole_r**2
    return inside & ~hole


def _expression(
    model: _MarkerModel, seed: int, height: int, width: int, ys: np.ndarray, xs: np.ndarray
) -> np.ndarray:
    """Float64 expression in [0, 1] at level-0 rows `ys` x columns `xs` (ascending)."""
    v = (ys + 0.5) / height
    u = (xs + 0.5) / width
    field = np.full((len(ys), len(xs)), model.base)
    field += model.wave_amp * np.outer(
        np.cos(2 * np.pi * model.wave_fv * v + model.wave_pv),
        np.sin(2 * np.pi * model.wave_fu * u + model.wave_pu),
    )
    aspect = width / height
    for spot in model.hotspots:
        sigma_v = spot.sigma * min(1.0, aspect)
        sigma_u = spot.sigma * min(1.0, 1 / aspect)
        field += spot.height * np.outer(
            np.exp(-((v - spot.v) ** 2) / (2 * sigma_v**2)),
            np.exp(-((u - spot.u) ** 2) / (2 * sigma_u**2)),
        )
    field += _noise(model.key, seed, ys, xs)
    return np.clip(field, 0.0, 1.0, out=field)


def _noise(key: int, seed: int, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Per-pixel noise, seeded per level-0 tile so a region's noise never depends on how it was cut."""
    out = np.empty((len(ys), len(xs)))
    for row_tile, row_sel in _tile_groups(ys):
        for col_tile, col_sel in _tile_groups(xs):
            rng = np.random.default_rng([seed, key, int(row_tile), int(col_tile)])
            tile = rng.normal(0.0, _NOISE_SIGMA, (_NOISE_TILE, _NOISE_TILE))
            out[np.ix_(row_sel, col_sel)] = tile[np.ix_(ys[row_sel] % _NOISE_TILE, xs[col_sel] % _NOISE_TILE)]
    return out


def _tile_groups(coords: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
    tiles = coords // _NOISE_TILE
    for tile in np.unique(tiles):
        yield int(tile), np.flatnonzero(tiles == tile)


def _stored_values(
    spec: _Spec, model: _MarkerModel, tissue: np.ndarray, ys: np.ndarray, xs: np.ndarray
) -> np.ndarray:
    """What the store holds for a region, in the store's dtype and background convention."""
    values = _expression(model, spec.seed, spec.height, spec.width, ys, xs)
    if spec.dtype.kind == "u":
        stored = np.rint(values * np.iinfo(spec.dtype).max).astype(spec.dtype)
    else:
        stored = values.astype(spec.dtype)
    if spec.tissue_mode == "nan":
        stored[~tissue] = np.nan
    elif spec.tissue_mode == "node":
        stored[~tissue] = 0
    return stored


def _as_truth(spec: _Spec, stored: np.ndarray, tissue: np.ndarray) -> np.ndarray:
    truth = stored.astype(np.float64)
    if spec.dtype.kind == "u":
        truth /= np.iinfo(spec.dtype).max
    if spec.tissue_mode != "none":
        truth[~tissue] = np.nan
    return truth


def _he_rgb(tissue: np.ndarray, seed: int) -> np.ndarray:
    """A flat pink-on-white stand-in for the H&E image: readers only need it present and valid."""
    rgb = np.empty((3, *tissue.shape), dtype=np.uint8)
    for channel, (stain, glass) in enumerate(((222, 246), (146, 245), (188, 247))):
        rgb[channel] = np.where(tissue, stain - seed % 8, glass)
    return rgb
