"""Figures recomputed without the hotspots tagged Artefact, judged against the full-resolution truth.

Oracle: numpy over the fake Strand store's own `truth` and `tissue` arrays (map pixel =
slide pixel here), with every pixel inside an excluded box removed: positive fraction,
areas and mean straight from the definitions (DESIGN.md "Strand results": tissue is the
non-NaN pixels, positive is value >= threshold). `figures_without` sees only a grid
summed from the same arrays, so agreement says the cell-centre rule removes exactly the
box's pixels.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from sectra_adapter import AreaFigures, Hotspot, MarkerSummary
from strand_client.testing.zarr_results import build_results
from workers.grid import DensityGrid
from workers.review_math import EVERYTHING_EXCLUDED, NothingLeftError, excluded_cells, figures_without

THRESHOLD = 0.5
CELL = 16
PIXEL_MM2 = 0.5 * 0.5 / 1e6  # the fake's slide is 0.5 µm per pixel, one map pixel per slide pixel


@pytest.fixture(scope="module")
def fake() -> tuple[np.ndarray, np.ndarray]:
    """Truth (NaN off tissue) and tissue of a 500 x 630 map: not a whole number of cells either way."""
    fixture = build_results(["CD8"], 500, 630, seed=3)
    return fixture.truth["CD8"][:500, :630], fixture.tissue[:500, :630]


def _grid(truth: np.ndarray, tissue: np.ndarray, pixel_mm2: float = PIXEL_MM2) -> DensityGrid:
    """Per-cell sums of the arrays, written here with a plain loop over cells (cut short at the edge)."""
    height, width = truth.shape
    rows, cols = -(-height // CELL), -(-width // CELL)
    positive, tissue_px = np.zeros((rows, cols), np.int64), np.zeros((rows, cols), np.int64)
    value_sum = np.zeros((rows, cols))
    for i in range(rows):
        for j in range(cols):
            t = tissue[i * CELL : (i + 1) * CELL, j * CELL : (j + 1) * CELL]
            v = truth[i * CELL : (i + 1) * CELL, j * CELL : (j + 1) * CELL][t]
            tissue_px[i, j], positive[i, j], value_sum[i, j] = t.sum(), (v >= THRESHOLD).sum(), v.sum()
    return DensityGrid(
        "CD8", (0.0, 0.0), (CELL, CELL), (width, height), pixel_mm2, positive, tissue_px, value_sum
    )


def _oracle(truth: np.ndarray, tissue: np.ndarray, boxes: list[Hotspot]) -> tuple[float, float, float, float]:
    keep = tissue.copy()
    for b in boxes:
        keep[b.y : b.y + b.height, b.x : b.x + b.width] = False
    values = truth[keep]
    positive = int((values >= THRESHOLD).sum())
    return positive / values.size, positive * PIXEL_MM2, values.size * PIXEL_MM2, float(values.mean())


def _summary(
    truth: np.ndarray, tissue: np.ndarray, hotspots: list[Hotspot], **extra: object
) -> MarkerSummary:
    fraction, positive_mm2, tissue_mm2, mean = _oracle(truth, tissue, [])
    return MarkerSummary(
        marker="CD8", positive_fraction=fraction, positive_area_mm2=positive_mm2, tissue_area_mm2=tissue_mm2,
        mean=mean, p50=0.15, p90=0.31, p99=0.97, hotspots=hotspots, **extra,  # type: ignore[arg-type]
    )  # fmt: skip


def _box(col: int, row: int, cells_w: int, cells_h: int, fraction: float = 0.9) -> Hotspot:
    return Hotspot(
        x=col * CELL, y=row * CELL, width=cells_w * CELL, height=cells_h * CELL, positive_fraction=fraction
    )


def _dense_boxes(truth: np.ndarray, tissue: np.ndarray) -> list[Hotspot]:
    """Three non-overlapping 4 x 4-cell windows with the most positive pixels: the fake's hotspots."""
    grid = _grid(truth, tissue)
    rows, cols = grid.positive.shape
    scores = {
        (i, j): int(grid.positive[i : i + 4, j : j + 4].sum())
        for i in range(rows - 3)
        for j in range(cols - 3)
    }
    picked: list[tuple[int, int]] = []
    for (i, j), _ in sorted(scores.items(), key=lambda kv: -kv[1]):
        if all(abs(i - a) >= 4 or abs(j - b) >= 4 for a, b in picked):
            picked.append((i, j))
        if len(picked) == 3:
            break
    return [_box(j, i, 4, 4) for i, j in picked]


def test_excluding_hotspots_matches_the_full_resolution_truth(fake: tuple[np.ndarray, np.ndarray]) -> None:
    truth, tissue = fake
    hotspots = _dense_boxes(truth, tissue)
    summary = _summary(truth, tissue, hotspots)
    grid = _grid(truth, tissue)
    excluded = [hotspots[0], hotspots[2]]
    result = figures_without(summary, grid, excluded)
    fraction, positive_mm2, tissue_mm2, mean = _oracle(truth, tissue, excluded)
    assert result.positive_fraction == pytest.approx(fraction, rel=1e-12)
    assert result.positive_area_mm2 == pytest.approx(positive_mm2, rel=1e-12)
    assert result.tissue_area_mm2 == pytest.approx(tissue_mm2, rel=1e-12)
    assert result.mean == pytest.approx(mean, rel=1e-9)
    assert result.positive_fraction < summary.positive_fraction  # the dense windows went
    assert result.hotspots == [hotspots[1]]
    assert (result.p50, result.p90, result.p99) == (summary.p50, summary.p90, summary.p99)


def test_no_box_gives_back_the_figures_and_overlapping_boxes_count_once(
    fake: tuple[np.ndarray, np.ndarray],
) -> None:
    truth, tissue = fake
    summary = _summary(truth, tissue, [])
    grid = _grid(truth, tissue)
    same = figures_without(summary, grid, [])
    assert same.positive_fraction == pytest.approx(summary.positive_fraction, rel=1e-12)
    assert same.tissue_area_mm2 == pytest.approx(summary.tissue_area_mm2, rel=1e-12)
    boxes = [_box(10, 10, 6, 6), _box(13, 12, 6, 6)]
    result = figures_without(summary, grid, boxes)
    assert result.tissue_area_mm2 == pytest.approx(_oracle(truth, tissue, boxes)[2], rel=1e-12)


def test_a_box_clipped_at_the_slide_edge_takes_the_cut_short_cells(
    fake: tuple[np.ndarray, np.ndarray],
) -> None:
    truth, tissue = fake
    tissue, truth = tissue.copy(), truth.copy()
    tissue[:, 600:], truth[:, 600:] = True, 0.8  # tissue up to the slide's right edge
    # The summariser clips boxes to the slide: 630 wide, the last cell covers columns 624-629 only.
    edge = Hotspot(x=36 * CELL, y=5 * CELL, width=630 - 36 * CELL, height=4 * CELL, positive_fraction=1.0)
    grid = _grid(truth, tissue)
    assert excluded_cells(grid, [edge])[5:9, 36:40].all()
    result = figures_without(_summary(truth, tissue, [edge]), grid, [edge])
    assert result.tissue_area_mm2 == pytest.approx(_oracle(truth, tissue, [edge])[2], rel=1e-12)
    assert result.positive_fraction == pytest.approx(_oracle(truth, tissue, [edge])[0], rel=1e-12)
    assert result.hotspots == []


def test_every_cell_excluded_is_refused_in_plain_words(fake: tuple[np.ndarray, np.ndarray]) -> None:
    truth, tissue = fake
    whole = Hotspot(x=0, y=0, width=630, height=500, positive_fraction=0.1)
    with pytest.raises(NothingLeftError) as caught:
        figures_without(_summary(truth, tissue, [whole]), _grid(truth, tissue), [whole])
    assert isinstance(caught.value, ValueError)
    assert str(caught.value) == EVERYTHING_EXCLUDED and "artefact" in str(caught.value)


def test_unknown_pixel_size_takes_the_summary_area_or_stays_unknown(
    fake: tuple[np.ndarray, np.ndarray],
) -> None:
    truth, tissue = fake
    box = [_box(12, 8, 4, 4)]
    grid = _grid(truth, tissue, pixel_mm2=math.nan)
    result = figures_without(_summary(truth, tissue, box), grid, box)
    assert result.tissue_area_mm2 == pytest.approx(_oracle(truth, tissue, box)[2], rel=1e-12)
    unknown = _summary(truth, tissue, box)
    unknown = MarkerSummary(
        **{**{f: getattr(unknown, f) for f in unknown.__slots__}, "tissue_area_mm2": math.nan}
    )
    result = figures_without(unknown, grid, box)
    assert math.isnan(result.tissue_area_mm2) and math.isnan(result.positive_area_mm2)
    assert result.positive_fraction == pytest.approx(_oracle(truth, tissue, box)[0], rel=1e-12)


def test_regions_are_recomputed_for_one_region_and_kept_for_several(
    fake: tuple[np.ndarray, np.ndarray],
) -> None:
    truth, tissue = fake
    box = [_box(12, 8, 4, 4)]
    grid = _grid(truth, tissue)
    before = AreaFigures(positive_fraction=0.5, positive_area_mm2=1.0, tissue_area_mm2=2.0)
    one = figures_without(_summary(truth, tissue, box, regions=[before]), grid, box)
    fraction, positive_mm2, tissue_mm2, _ = _oracle(truth, tissue, box)
    assert one.regions[0].positive_fraction == pytest.approx(fraction, rel=1e-12)
    assert one.regions[0].tissue_area_mm2 == pytest.approx(tissue_mm2, rel=1e-12)
    assert one.regions[0].positive_area_mm2 == pytest.approx(positive_mm2, rel=1e-12)
    several = figures_without(_summary(truth, tissue, box, regions=[before, before]), grid, box)
    assert several.regions == [before, before]


def test_a_grid_of_another_marker_is_refused(fake: tuple[np.ndarray, np.ndarray]) -> None:
    truth, tissue = fake
    grid = DensityGrid(**{**_grid(truth, tissue).__dict__, "marker": "Ki67"})
    with pytest.raises(ValueError, match="Ki67"):
        figures_without(_summary(truth, tissue, []), grid, [])
