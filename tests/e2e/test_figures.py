"""The figures on the slide, end to end, against the fake Strand's ground truth on every results layout.

Webhook, a real worker process, MockSectraServer and the fake Strand, whose
maps carry OME-NGFF axes in micrometres (its default). The slide is not
square and the map's aspect differs from it, so map pixels are anisotropic.
What reaches Sectra (the percentages, the areas in the property table, the
boxes drawn) is compared with figures computed here with plain numpy from the
fake's ground-truth map and the geometry it was asked to write, never from
our reader or summariser.
"""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np
import pytest

from tests.e2e.conftest import Bridge
from workers.runstore import RunStatus

SLIDE_W, SLIDE_H = 4096, 3072  # 2 x 1.5 mm at 0.5 µm/px: room for several 500 µm hotspot windows
SLIDE_MPP = 0.5  # what MockSectraServer reports for the slide (tests/e2e/conftest.py)
MAP_SHAPE = (192, 320)  # 16 x 12.8 slide pixels per map pixel: anisotropic
THRESHOLD = 0.5  # strand-default's positivity threshold
WINDOW_UM = 500.0  # the summariser's default hotspot window
MARKERS = ("CD8", "PanCK", "Ki67")
AREA = re.compile(r"^(\S+)% \((\S+) mm² of (\S+) mm²\)$")


def run_figures(bridge: Bridge, slide_id: str, **options: Any) -> tuple[Any, Any, Any]:
    for name, value in {"results_shape": MAP_SHAPE, **options}.items():
        setattr(bridge.strand.options, name, value)
    bridge.add_slide(slide_id, width=SLIDE_W, height=SLIDE_H)
    record = bridge.wait_final(bridge.start_run(slide_id).run_id, timeout=120)
    assert record.status == RunStatus.completed, record.error
    (result,) = bridge.results(slide_id)
    assert record.job_id is not None
    return record, result, bridge.strand.results_fixture(record.job_id)


def truth_geometry(fixture: Any) -> tuple[tuple[float, float], tuple[float, float]]:
    """(scale, offset) per axis (y, x), slide pixels: what the fake was asked to write, from its inputs."""
    return fixture.slide_scale, fixture.translation


def truth_figures(fixture: Any, marker: str) -> dict[str, float]:
    values = fixture.truth[marker]
    (scale_y, scale_x), _ = truth_geometry(fixture)
    tissue = ~np.isnan(values)
    positive = tissue & (np.nan_to_num(values, nan=0.0) >= THRESHOLD)
    pixel_mm2 = (SLIDE_MPP * scale_y) * (SLIDE_MPP * scale_x) / 1e6
    return {
        "fraction": int(positive.sum()) / int(tissue.sum()),
        "positive_mm2": int(positive.sum()) * pixel_mm2,
        "tissue_mm2": int(tissue.sum()) * pixel_mm2,
    }


def truth_hotspots(fixture: Any, marker: str) -> list[tuple[float, float, float, float]]:
    """The densest non-overlapping 500 µm windows, by brute force on the whole truth map (slide pixels).

    Windows slide in quarter-window cells over the map pixels on the slide
    (the summariser's documented definition), ranked by positive pixels per
    window area; boxes are (left, top, right, bottom) on the slide.
    """
    (scale_y, scale_x), (off_y, off_x) = truth_geometry(fixture)
    rows, cols = fixture.height, fixture.width  # the map pixels over the slide (any padding is beyond)
    values = fixture.truth[marker][:rows, :cols]
    positive = ~np.isnan(values) & (np.nan_to_num(values, nan=0.0) >= THRESHOLD)
    grid = []
    for extent, pixel_um in ((rows, SLIDE_MPP * scale_y), (cols, SLIDE_MPP * scale_x)):
        window_px = max(1.0, WINDOW_UM / pixel_um)
        cell = max(1, round(window_px / 4), -(-extent // 4096))
        cells = -(-extent // cell)
        grid.append((cell, min(max(1, round(window_px / cell)), cells), cells))
    (cell_h, k_y, cells_y), (cell_w, k_x, cells_x) = grid
    candidates = []
    for i in range(cells_y - k_y + 1):
        for j in range(cells_x - k_x + 1):
            y0, x0 = i * cell_h, j * cell_w
            y1, x1 = min(y0 + k_y * cell_h, rows), min(x0 + k_x * cell_w, cols)
            count = int(positive[y0:y1, x0:x1].sum())
            if count:
                candidates.append((-count / ((y1 - y0) * (x1 - x0)), i, j, y0, y1, x0, x1))
    candidates.sort()
    chosen: list[tuple[Any, ...]] = []
    for candidate in candidates:
        if len(chosen) < 5 and all(
            abs(candidate[1] - c[1]) >= k_y or abs(candidate[2] - c[2]) >= k_x for c in chosen
        ):
            chosen.append(candidate)
    return [
        (
            min(max(x0 * scale_x + off_x, 0), SLIDE_W),
            min(max(y0 * scale_y + off_y, 0), SLIDE_H),
            min(max(x1 * scale_x + off_x, 0), SLIDE_W),
            min(max(y1 * scale_y + off_y, 0), SLIDE_H),
        )
        for _, _, _, y0, y1, x0, x1 in chosen
    ]


def drawn_boxes(result: Any) -> dict[str, list[tuple[float, float, float, float]]]:
    """Each marker's drawn rectangles back in slide pixels (Sectra coordinates are normalised by width)."""
    boxes: dict[str, list[tuple[float, float, float, float]]] = {}
    for item in result.data.result.content:
        if not item.labels:  # a density band (drawn with `overlay: both`, the default) is no box
            continue
        marker = item.labels[0].label.split(" ")[0]
        for polygon in item.polygons:
            xs = [p.x * SLIDE_W for p in polygon.points]
            ys = [p.y * SLIDE_W for p in polygon.points]
            boxes.setdefault(marker, []).append((min(xs), min(ys), max(xs), max(ys)))
    return boxes


def check_figures(bridge: Bridge, record: Any, result: Any, fixture: Any, layout: str) -> list[str]:
    """Assert every shown figure against the truth; returns one line per marker for the report."""
    (scale_y, scale_x), (off_y, off_x) = truth_geometry(fixture)
    drawn = drawn_boxes(result)
    report = []
    for marker in MARKERS:
        truth = truth_figures(fixture, marker)
        assert f"{marker} {truth['fraction'] * 100:.1f}%" in result.displayResult
        shown = AREA.match(result.displayProperties[f"{marker} positive tissue"])
        assert shown is not None, result.displayProperties
        percent, positive_mm2, tissue_mm2 = (float(v) for v in shown.groups())
        assert percent == pytest.approx(truth["fraction"] * 100, abs=0.05)
        # Three significant figures shown: within half a unit of the third figure.
        assert positive_mm2 == pytest.approx(truth["positive_mm2"], rel=5e-3)
        assert tissue_mm2 == pytest.approx(truth["tissue_mm2"], rel=5e-3)
        stored = next(m for m in record.summary["markers"] if m["marker"] == marker)
        assert stored["positive_fraction"] == pytest.approx(truth["fraction"], abs=1e-9)
        assert stored["positive_area_mm2"] == pytest.approx(truth["positive_mm2"], rel=1e-3)
        assert stored["tissue_area_mm2"] == pytest.approx(truth["tissue_mm2"], rel=1e-3)
        assert stored["geometry_mismatch"] is None
        want = truth_hotspots(fixture, marker)
        got = drawn.get(marker, [])
        assert len(got) == len(want) > 0
        for box in got:  # each drawn box is one of the truth's, within one map pixel on every edge
            assert any(
                all(abs(box[k] - w[k]) <= (scale_x if k % 2 == 0 else scale_y) + 1e-6 for k in range(4))
                for w in want
            ), (marker, box, want)
        # And the strongest truth window holds one of the hotspots the fake placed.
        centres = [
            ((c + 0.5) * scale_x + off_x, (r + 0.5) * scale_y + off_y) for r, c in fixture.hotspots[marker]
        ]
        left, top, right, bottom = want[0]
        assert any(left <= x <= right and top <= y <= bottom for x, y in centres), (marker, want[0], centres)
        report.append(
            f"{layout:9} {marker:5} shown {result.displayProperties[f'{marker} positive tissue']:32} "
            f"truth {truth['fraction'] * 100:.2f}% "
            f"({truth['positive_mm2']:.4g} of {truth['tissue_mm2']:.4g} mm²), "
            f"{len(got)} boxes, first {tuple(round(v) for v in want[0])}"
        )
    events = [e["event"] for e in bridge.store.events(record.run_id)]
    assert "geometry_mismatch" not in events and "summarised" in events
    assert "Map scale" not in result.displayProperties
    return report


@pytest.mark.parametrize(
    ("layout", "options"),
    [
        # The live platform: sharded, maps padded to whole shards beyond the slide.
        ("sharded", {"results_pad_to_shards": True, "results_chunk": 64, "results_chunks_per_shard": 2}),
        # OME-NGFF image groups, the pixel size on the multiscale and a translated origin.
        ("ome-ngff", {"results_split_transforms": True, "results_translation": (24.0, 32.0)}),
        # The reference's flat arrays: no transformations, so slide size / map size.
        ("flat", {}),
    ],
)
def test_every_figure_matches_ground_truth(bridge: Bridge, layout: str, options: dict[str, Any]) -> None:
    record, result, fixture = run_figures(bridge, f"slide-fig-{layout}", results_layout=layout, **options)
    if layout == "sharded":
        assert fixture.level_shapes[0] == (256, 384), "the map is padded beyond the slide"
    if layout == "ome-ngff":
        assert fixture.translation == (24.0, 32.0)
    assert fixture.units == "micrometer"
    for line in check_figures(bridge, record, result, fixture, layout):
        print(line)


def test_metadata_that_contradicts_the_slide_is_overruled_audited_and_said(bridge: Bridge) -> None:
    # The fake writes pixel sizes for 0.25 µm slide pixels; Sectra says 0.5: the metadata puts each
    # map pixel on half the slide it really covers.
    record, result, fixture = run_figures(bridge, "slide-fig-wrong", results_slide_mpp=0.25)
    assert (
        result.displayProperties["Map scale"] == "Map scale from slide size; the results' metadata disagreed"
    )
    events = [e for e in bridge.store.events(record.run_id) if e["event"] == "geometry_mismatch"]
    assert sorted(e["data"]["marker"] for e in events) == sorted(MARKERS)
    for event in events:  # both figures, named
        detail = event["data"]["detail"]
        assert "puts 8 x 6.4 slide pixels" in detail and "gives 16 x 12.8" in detail, detail
    for marker in MARKERS:  # slide size / map size is right here, so the figures still are
        truth = truth_figures(fixture, marker)
        stored = next(m for m in record.summary["markers"] if m["marker"] == marker)
        assert stored["positive_area_mm2"] == pytest.approx(truth["positive_mm2"], rel=1e-3)
        assert math.isclose(stored["positive_fraction"], truth["fraction"], abs_tol=1e-9)
