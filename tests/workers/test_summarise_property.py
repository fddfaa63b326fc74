"""Property: on any store the fake can write, the summary equals a whole-array numpy computation.

Hypothesis draws result stores over every convention we read (sharded
manifest, unsharded, flat, OME-NGFF image groups; float maps with NaN, integer
maps with or without a `tissue` node; micrometre, nanometre, millimetre or
unit-less axes; anisotropic pixels; a translation; split transformations;
padding to whole shards; odd-sized pyramid levels rounded either way;
non-square slides; and metadata written for the wrong slide pixel size).

The oracle is written here from the rules, not from our code: it reads the
stored array with zarr-python directly, takes the pixel size from the stored
`axes`/`coordinateTransformations` with its own unit table (OME-NGFF 0.5),
converts with the slide's µm per pixel, crops to the map pixels over the
slide, and counts with plain numpy on the whole array. Geometry is computed in
exact fractions so rounding ties cannot differ by accident.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np
import pytest
import zarr
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from zarr.core.buffer import cpu
from zarr.storage import MemoryStore

from sectra_adapter._summary import MarkerSummary
from strand_client._results import JobResults
from strand_client._retry import RetryPolicy
from strand_client.testing.zarr_results import build_results, results_files_app, serve_app
from workers.summarise import summarise_job

API_KEY = "sk-strand-property"
MARKER = "CD8"
EXAMPLES = 100
# µm per unit (OME-NGFF 0.5 space units, UDUNITS-2), typed here from the spec.
UNIT_MICRONS = {"micrometer": Fraction(1), "nanometer": Fraction(1, 1000), "millimeter": Fraction(1000)}
FLOAT_PERCENTILE_ERROR = 2.0**-17 + 1e-12
SCALES = [Fraction(1), Fraction(3, 2), Fraction(2), Fraction(5, 2), Fraction(3), Fraction(4)]


@dataclass(frozen=True)
class Case:
    layout: str
    dtype: str
    tissue_mode: str
    units: str | None
    scale: tuple[Fraction, Fraction]  # slide px per level-0 map px, as written
    translation: tuple[Fraction, Fraction]  # slide px
    height: int
    width: int
    levels: int
    level: int
    rounding: str
    pad: bool
    split: bool
    ndim: int
    slide_mpp: Fraction
    lie: int  # the metadata was written for slide pixels `lie` times bigger (1: the truth)
    root_mpp: bool  # flat only: the root states strand.micronsPerPixel
    threshold: float
    window_cells: int  # the hotspot window, in level-0 map pixels along x
    seed: int


@st.composite
def cases(draw: st.DrawFn) -> Case:
    layout = draw(st.sampled_from(["sharded", "unsharded", "unsharded-zstd", "flat", "ome-ngff"]))
    dtype = draw(st.sampled_from(["float32", "float64", "uint8", "uint16"]))
    modes = ["nan", "node", "none"] if dtype.startswith("float") else ["node", "none"]
    flat = layout == "flat"
    square = draw(st.booleans())
    scale_y = draw(st.sampled_from(SCALES))
    scale_x = scale_y if square or flat else draw(st.sampled_from(SCALES))
    moved = not flat and draw(st.booleans())
    level = 0 if flat else draw(st.sampled_from([0, 1, 2]))
    levels = 1 if flat else draw(st.integers(level + 1, 3))
    units = None if flat else draw(st.sampled_from(["micrometer", "nanometer", "millimeter", None]))
    # A physical scale written for the wrong slide pixel size (the bug this test guards against).
    lie = 1 if units is None else draw(st.sampled_from([1, 1, 1, 4]))
    return Case(
        layout=layout,
        dtype=dtype,
        tissue_mode=draw(st.sampled_from(modes)),
        units=units,
        scale=(scale_y, scale_x),
        translation=(
            (Fraction(draw(st.integers(0, 20)), 2), Fraction(draw(st.integers(0, 20)), 2))
            if moved
            else (Fraction(0), Fraction(0))
        ),
        height=draw(st.integers(24, 80)),
        width=draw(st.integers(24, 80)),
        levels=levels,
        level=level,
        rounding=draw(st.sampled_from(["ceil", "floor"])),
        pad=not flat and lie == 1 and draw(st.booleans()),
        split=draw(st.booleans()),
        ndim=draw(st.sampled_from([2, 3])),
        slide_mpp=draw(st.sampled_from([Fraction(1, 4), Fraction(1, 2), Fraction(1, 5)])),
        lie=lie,
        root_mpp=flat and square and draw(st.booleans()),
        threshold=draw(st.sampled_from([0.3, 0.45, 0.6])),
        # Windows whose quarter (the cell) and cells-per-window never round a .5 along x.
        window_cells=draw(st.sampled_from([5, 11, 13, 17, 19, 23])),
        seed=draw(st.integers(0, 3)),
    )


@contextmanager
def server() -> Iterator[tuple[str, dict[str, bytes]]]:
    """One file server for every example; each example swaps in its own store."""
    files: dict[str, bytes] = {}
    with serve_app(results_files_app(files, api_key=API_KEY)) as url:
        yield url, files


@pytest.fixture(scope="module")
def files_server() -> Iterator[tuple[str, dict[str, bytes]]]:
    with server() as served:
        yield served


# ---------- the oracle ----------


def array_path(case: Case, name: str, level: int) -> str:
    if case.layout == "flat":
        return name
    if case.layout == "ome-ngff" or name == "tissue":
        return f"{name}/{level}"
    return f"markers/{name}/{level}"


Pair = tuple[Fraction, Fraction]
Box = tuple[float, float, float, float, float]  # left, top, right, bottom (slide px), positive fraction


def stated_geometry(root: dict[str, Any], case: Case) -> tuple[Pair, Pair]:
    """(scale, translation) of y and x in level-0 slide pixels, read from the stored metadata by the rules."""
    entries = root.get("multiscales") or root.get("ome", {}).get("multiscales") or []
    entry = next(e for e in entries if e["name"] == MARKER)
    dataset = entry["datasets"][case.level]
    scale, shift = [Fraction(1), Fraction(1)], [Fraction(0), Fraction(0)]
    # OME-NGFF 0.5: the dataset's transformations first, then the multiscale's, in order.
    for transform in [*dataset["coordinateTransformations"], *entry.get("coordinateTransformations", [])]:
        # JSON holds binary floats; the rationals they were written from have small denominators.
        values = [Fraction(v).limit_denominator(10**9) for v in transform[transform["type"]][-2:]]
        if transform["type"] == "scale":
            scale = [scale[i] * values[i] for i in (0, 1)]
            shift = [shift[i] * values[i] for i in (0, 1)]
        else:
            shift = [shift[i] + values[i] for i in (0, 1)]
    units = [axis.get("unit") for axis in entry["axes"][-2:]]
    if units[0] is None:  # unit-less: level-0 slide pixels already
        return (scale[0], scale[1]), (shift[0], shift[1])
    per_px = [UNIT_MICRONS[u] / case.slide_mpp for u in units]
    return (scale[0] * per_px[0], scale[1] * per_px[1]), (shift[0] * per_px[0], shift[1] * per_px[1])


@dataclass
class Expected:
    summary: MarkerSummary  # its hotspots left empty: `boxes` holds them unrounded
    boxes: list[Box]
    mismatch: bool
    scale: tuple[float, float]


def oracle(case: Case, files: dict[str, bytes], slide: tuple[int, int], window_um: Fraction) -> Expected:
    store = MemoryStore({key: cpu.Buffer.from_bytes(value) for key, value in files.items()})
    array = zarr.open_array(store, path=array_path(case, MARKER, case.level), mode="r")
    values = np.asarray(array[...]).reshape(array.shape[-2:])
    rows, cols = values.shape
    if case.dtype.startswith("uint"):
        normalised = values.astype(np.float64) / np.iinfo(values.dtype).max
        tissue = np.ones(values.shape, dtype=bool)
    else:
        normalised = values.astype(np.float64)
        tissue = ~np.isnan(normalised)
    if case.tissue_mode == "node":
        node = zarr.open_array(store, path=array_path(case, "tissue", case.level), mode="r")
        tissue &= np.asarray(node[...]).reshape(node.shape[-2:]) != 0

    root = json.loads(files["zarr.json"])["attributes"] if "zarr.json" in files else {}
    from_sizes = (Fraction(slide[0], rows), Fraction(slide[1], cols))
    stated: tuple[Pair, Pair] | None = None
    if case.layout == "flat":
        if case.root_mpp:  # strand.micronsPerPixel describes level 0 (flat stores have one level)
            mpp = Fraction(root["strand"]["micronsPerPixel"]).limit_denominator(10**9) / case.slide_mpp
            stated = ((mpp, mpp), (Fraction(0), Fraction(0)))
    else:
        stated = stated_geometry(root, case)
    if stated is not None:
        intended = tuple(case.scale[i] * 2**case.level * case.lie for i in (0, 1))
        assert stated[0] == intended, "the fake wrote a scale other than the one asked for"
    mismatch = case.lie != 1
    scale, offset = (
        stated if stated is not None and not mismatch else (from_sizes, (Fraction(0), Fraction(0)))
    )
    if (
        stated is not None and mismatch
    ):  # the lie must be visible: the slide ends over a map pixel off the map
        assert any(abs((slide[i] - stated[1][i]) / stated[0][i] - values.shape[i]) > 1 for i in (0, 1))
    # Map pixels over the slide: pixel i spans [i * scale + offset, (i + 1) * scale + offset).
    r0, c0 = (max(0, math.floor(-offset[i] / scale[i])) for i in (0, 1))
    r1, c1 = (min(values.shape[i], math.ceil((slide[i] - offset[i]) / scale[i])) for i in (0, 1))
    inside = np.zeros(values.shape, dtype=bool)
    inside[r0:r1, c0:c1] = True
    tissue &= inside
    positive = tissue & (normalised >= case.threshold)
    n = int(tissue.sum())
    pixel_um = [case.slide_mpp * scale[i] for i in (0, 1)]
    pixel_mm2 = float(pixel_um[0] * pixel_um[1]) / 1e6
    ordered = np.sort(normalised[tissue])
    p50, p90, p99 = (float(ordered[math.ceil(q * n / 100) - 1]) for q in (50, 90, 99))
    boxes = brute_force_hotspots(
        positive[r0:r1, c0:c1], tissue[r0:r1, c0:c1], (r0, c0), pixel_um, scale, offset, window_um, slide
    )
    summary = MarkerSummary(
        marker=MARKER,
        positive_fraction=int(positive.sum()) / n,
        positive_area_mm2=int(positive.sum()) * pixel_mm2,
        tissue_area_mm2=n * pixel_mm2,
        mean=float(normalised[tissue].mean()),
        p50=p50,
        p90=p90,
        p99=p99,
    )
    return Expected(summary, boxes, mismatch, (float(scale[0]), float(scale[1])))


def window_grid(window_um: Fraction, pixel_um: Fraction, extent: int) -> tuple[int, int]:
    """The summariser's documented grid: quarter-window cells, whole cells per window, <= 4096 cells."""
    window_px = max(Fraction(1), window_um / pixel_um)
    for ratio in (window_px / 4,):
        assume(abs(ratio - math.floor(ratio) - Fraction(1, 2)) > Fraction(1, 10**6))  # no rounding tie
    cell = max(1, round(window_px / 4), -(-extent // 4096))
    per_window = window_px / cell
    assume(abs(per_window - math.floor(per_window) - Fraction(1, 2)) > Fraction(1, 10**6))
    return cell, max(1, round(per_window))


def brute_force_hotspots(
    positive: np.ndarray,
    tissue: np.ndarray,
    origin: tuple[int, int],
    pixel_um: list[Fraction],
    scale: tuple[Fraction, Fraction],
    offset: tuple[Fraction, Fraction],
    window_um: Fraction,
    slide: tuple[int, int],
    top: int = 5,
) -> list[Box]:
    """Every window slid cell by cell over the map pixels on the slide, densest first, none overlapping."""
    height, width = positive.shape
    cell_h, k_y = window_grid(window_um, pixel_um[0], height)
    cell_w, k_x = window_grid(window_um, pixel_um[1], width)
    cells_y, cells_x = -(-height // cell_h), -(-width // cell_w)
    k_y, k_x = min(k_y, cells_y), min(k_x, cells_x)
    candidates = []
    for i in range(cells_y - k_y + 1):
        for j in range(cells_x - k_x + 1):
            y0, x0 = i * cell_h, j * cell_w
            y1, x1 = min(y0 + k_y * cell_h, height), min(x0 + k_x * cell_w, width)
            count = int(positive[y0:y1, x0:x1].sum())
            if count:
                fraction = count / int(tissue[y0:y1, x0:x1].sum())
                candidates.append((-count / ((y1 - y0) * (x1 - x0)), i, j, fraction, y0, y1, x0, x1))
    candidates.sort()
    chosen: list[tuple[Any, ...]] = []
    for candidate in candidates:
        if len(chosen) == top:
            break
        if all(abs(candidate[1] - c[1]) >= k_y or abs(candidate[2] - c[2]) >= k_x for c in chosen):
            chosen.append(candidate)
    boxes = []
    for _, _, _, fraction, y0, y1, x0, x1 in chosen:
        # Slide pixels of the window's corners, clipped to the slide.
        top_ = min(max(float((origin[0] + y0) * scale[0] + offset[0]), 0.0), slide[0])
        bottom = min(max(float((origin[0] + y1) * scale[0] + offset[0]), 0.0), slide[0])
        left = min(max(float((origin[1] + x0) * scale[1] + offset[1]), 0.0), slide[1])
        right = min(max(float((origin[1] + x1) * scale[1] + offset[1]), 0.0), slide[1])
        boxes.append((left, top_, right, bottom, fraction))
    return boxes


# ---------- the property ----------


@settings(
    max_examples=EXAMPLES,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(case=cases())
def test_the_summary_equals_plain_numpy_on_the_whole_array(
    case: Case, files_server: tuple[str, dict[str, bytes]]
) -> None:
    url, served_files = files_server
    for label in (
        f"layout={case.layout}", f"dtype={case.dtype}/{case.tissue_mode}", f"units={case.units}",
        f"level={case.level}/{case.rounding}", f"padded={case.pad}", f"lie={case.lie}",
        f"anisotropic={case.scale[0] != case.scale[1]}", f"translated={case.translation != (0, 0)}",
        f"split={case.split}", f"root_mpp={case.root_mpp}",
    ):  # fmt: skip
        event(label)
    fixture = build_results(
        [MARKER], case.height, case.width,
        layout=case.layout, seed=case.seed, dtype=case.dtype, tissue_mode=case.tissue_mode,
        microns_per_pixel=float(case.slide_mpp * case.scale[0]) if case.root_mpp else None,
        ndim=case.ndim, levels=case.levels, slide_scale=(float(case.scale[0]), float(case.scale[1])),
        chunk=16, chunks_per_shard=2, with_he=False, units=case.units,
        slide_mpp=float(case.slide_mpp * case.lie),
        translation=(float(case.translation[0]), float(case.translation[1])),
        pad_to_shards=case.pad, level_rounding=case.rounding, split_transforms=case.split,
    )  # fmt: skip
    slide = tuple(round(case.translation[i] + (case.height, case.width)[i] * case.scale[i]) for i in (0, 1))
    assert isinstance(slide, tuple)
    window_um = case.window_cells * case.slide_mpp * case.scale[1]
    want = oracle(case, fixture.files, (slide[0], slide[1]), window_um)
    assume(want.summary.tissue_area_mm2 > 0)
    served_files.clear()
    served_files.update(fixture.files)
    with JobResults(
        api_root=f"{url}/api/v1",
        api_key=API_KEY,
        job_id="job-p",
        retry_policy=RetryPolicy(max_retries=2, base_delay=0.01, max_delay=0.02),
    ) as results:
        summaries, missing, _ = summarise_job(
            results,
            [MARKER],
            threshold=case.threshold,
            slide_width=slide[1],
            slide_height=slide[0],
            microns_per_pixel=float(case.slide_mpp),
            hotspot_window_um=float(window_um),
            level=case.level,
        )
    assert missing == {}, missing
    (got,) = summaries
    exp = want.summary
    assert (got.geometry_mismatch is not None) is want.mismatch, got.geometry_mismatch
    assert got.positive_fraction == pytest.approx(exp.positive_fraction, abs=1e-9)
    assert got.mean == pytest.approx(exp.mean, rel=1e-9, abs=1e-12)
    assert got.tissue_area_mm2 == pytest.approx(exp.tissue_area_mm2, rel=1e-3)
    assert got.positive_area_mm2 == pytest.approx(exp.positive_area_mm2, rel=1e-3, abs=1e-12)
    tolerance = 1e-12 if case.dtype.startswith("uint") else FLOAT_PERCENTILE_ERROR
    for name in ("p50", "p90", "p99"):
        assert abs(getattr(got, name) - getattr(exp, name)) <= tolerance, name
    assert len(got.hotspots) == len(want.boxes)
    scale_y, scale_x = want.scale
    for spot, (left, top, right, bottom, fraction) in zip(got.hotspots, want.boxes, strict=True):
        # Within one map pixel (in slide pixels) on every edge.
        assert abs(spot.x - left) <= scale_x and abs(spot.x + spot.width - right) <= scale_x, (
            spot,
            left,
            right,
        )
        assert abs(spot.y - top) <= scale_y and abs(spot.y + spot.height - bottom) <= scale_y, (
            spot,
            top,
            bottom,
        )
        assert spot.positive_fraction == pytest.approx(fraction, abs=1e-9)
