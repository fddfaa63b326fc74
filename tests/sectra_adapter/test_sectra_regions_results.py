"""What results draw beyond hotspots: regions, density bands, frames, reuse, and the body bound.

Oracles: the level-0 inputs divided by the slide width, written out here; shapely areas of the input
polygons against the drawn ones; the request body httpx actually builds; MockSectraServer storing and
returning each result (create, then update with its versionId).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import httpx
import pytest
import shapely
from sectra_client.mock_server import MockSectraServer
from sectra_client.schemas import AdaptedResult, PrimitiveItem, PrimitiveResultContent, Result

from sectra_adapter import (
    AreaFigures,
    Band,
    Hotspot,
    MarkerOverlay,
    MarkerSummary,
    Region,
    ReusedJob,
    RunSummary,
    SectraAdapter,
    body_bytes,
    build_final_result,
    colour_for,
    pending_result,
    progress_result,
    region_frames,
    slide_frame,
)

WIDTH, HEIGHT = 40_000, 20_000  # a non-square slide: y runs to HEIGHT / WIDTH = 0.5


def marker(
    name: str, fraction: float, hotspots: list[Hotspot] | None = None, **extra: object
) -> MarkerSummary:
    return MarkerSummary(name, fraction, 0.5, 5.0, 0.3, 0.2, 0.6, 0.9, hotspots or [], **extra)  # type: ignore[arg-type]


def summary(markers: list[MarkerSummary], **extra: object) -> RunSummary:
    return RunSummary("slide-7", WIDTH, HEIGHT, markers, "job_1", "2.0.0", 0.5, **extra)  # type: ignore[arg-type]


def items(result: Result) -> list[PrimitiveItem]:
    assert isinstance(result.data.result, PrimitiveResultContent)
    return result.data.result.content


def ring_points(item: PrimitiveItem, index: int = 0) -> list[tuple[float, float]]:
    return [(p.x, p.y) for p in item.polygons[index].points]


TUMOUR = Region(
    ((8_000.0, 6_000.0), (12_000.0, 4_000.0), (16_000.0, 6_000.0), (12_000.0, 10_000.0)), "Tumour"
)
STROMA = Region(((20_000.0, 12_000.0), (26_000.0, 12_000.0), (26_000.0, 16_000.0), (20_000.0, 16_000.0)))


def region_summary(**extra: object) -> RunSummary:
    return summary(
        [
            marker("CD8", 0.05, regions=[AreaFigures(0.043, 0.0632, 1.47), AreaFigures(0.061, 0.2, 3.28)]),
            marker("Ki67", 0.15, regions=[AreaFigures(0.142, 0.209, 1.47), AreaFigures(0.161, 0.528, 3.28)]),
        ],
        regions=[TUMOUR, STROMA],
        **extra,
    )


def test_region_outlines_are_width_normalised_and_labelled_at_their_top_point() -> None:
    result = build_final_result(region_summary())
    dark, light = items(result)[:2]
    assert dark.polygons == light.polygons and dark.style and light.style
    assert {dark.style.strokeStyle, light.style.strokeStyle} == {"#000000", "#FFFFFF"}
    expected = [[(x / WIDTH, y / WIDTH) for x, y in region.points] for region in (TUMOUR, STROMA)]
    assert [ring_points(light, i) for i in range(2)] == expected
    # Top point: least y (the Tumour diamond's apex; the Stroma square's upper-left corner).
    assert [(label.location.x, label.location.y) for label in light.labels] == [(0.3, 0.1), (0.5, 0.3)]
    assert [label.label for label in light.labels] == [
        "Region 1: CD8 4.3% | Ki67 14.2% (Tumour)",
        "Region 2: CD8 6.1% | Ki67 16.1%",
    ]


def test_a_single_tagged_region_reads_like_the_issue_says() -> None:
    one = summary(
        [marker("Ki67", 0.142, regions=[AreaFigures(0.142, 0.209, 1.47)])],
        regions=[TUMOUR],
        overlay="hotspots",
    )
    result = build_final_result(one)
    assert items(result)[1].labels[0].label == "Ki67 14.2% (Tumour)"
    assert result.displayResult == "Tumour region: Ki67 14.2%"
    assert result.displayProperties["Area analysed"] == "The drawn region (Tumour)"


def test_region_figures_fill_the_property_table_per_region_and_together() -> None:
    table = build_final_result(region_summary()).displayProperties
    assert table["Region 1 (Tumour) CD8 positive tissue"] == "4.3% (0.0632 mm² of 1.47 mm²)"
    assert table["Region 2 Ki67 positive tissue"] == "16.1% (0.528 mm² of 3.28 mm²)"
    assert table["CD8 positive tissue"] == "5.0% (0.500 mm² of 5.00 mm²)"  # all regions together
    assert table["Area analysed"] == "2 drawn regions; the figures above are for all of them together"
    assert build_final_result(region_summary()).displayResult == "2 regions: CD8 5.0% | Ki67 15.0%"


def test_a_region_without_tissue_beside_one_with_tissue_reads_no_tissue_not_nan() -> None:
    empty = AreaFigures(float("nan"), 0.0, 0.0)  # what the summariser gives a region holding no tissue
    result = build_final_result(
        summary(
            [marker("CD8", 0.043, regions=[AreaFigures(0.043, 0.0632, 1.47), empty])],
            regions=[TUMOUR, STROMA],
        )
    )
    assert result.displayProperties["Region 2 CD8 positive tissue"] == "no tissue (0 mm² of 0 mm²)"
    labels = [label.label for item in items(result) for label in item.labels]
    assert "Region 2: CD8 no tissue" in labels and not any("nan" in label for label in labels)


def test_no_overlays_keeps_the_whole_slide_result_as_it_was() -> None:
    plain = summary([marker("CD8", 0.1, [Hotspot(400, 400, 400, 400, 0.7)])])
    result = build_final_result(plain)
    assert len(items(result)) == 1 and items(result)[0].style == items(result)[0].style
    assert not any(
        "bands" in key or "line" in key or key == "Area analysed" for key in result.displayProperties
    )


def nested_bands() -> MarkerOverlay:
    """Three nested squares around (20 000, 10 000) and a threshold line across them."""

    def square(half: float) -> tuple[tuple[float, float], ...]:
        cx, cy = 20_000.0, 10_000.0
        return (
            (cx - half, cy - half),
            (cx + half, cy - half),
            (cx + half, cy + half),
            (cx - half, cy + half),
        )

    return MarkerOverlay(
        "CD8",
        bands=(Band(0.25, (square(1_000),)), Band(0.05, (square(4_000),)), Band(0.10, (square(2_000),))),
        threshold_lines=(((12_000.0, 10_000.0), (28_000.0, 10_000.0)),),
    )


def test_bands_are_filled_in_the_marker_colour_darker_inside_with_a_legend() -> None:
    run = summary([marker("Ki67", 0.2), marker("CD8", 0.1)], overlays=[nested_bands()])
    result = build_final_result(run)
    colour = colour_for(1)  # CD8 is the second marker
    bands = [item for item in items(result) if item.style and item.style.fillStyle]
    assert [item.style.fillStyle for item in bands if item.style] == [
        colour + "40",
        colour + "60",
        colour + "80",
    ]
    assert all(item.style and item.style.strokeStyle == colour for item in bands)
    # Each ring: the input square / width, not closed by a repeated point, inside the slide.
    for item, half in zip(bands, (4_000, 2_000, 1_000), strict=True):
        points = ring_points(item)
        assert len(points) == 4 and points[0] != points[-1]
        assert all(0 <= x <= 1 and 0 <= y <= HEIGHT / WIDTH for x, y in points)
        assert shapely.Polygon(points).area == pytest.approx((2 * half / WIDTH) ** 2)
    inner, outer = shapely.Polygon(ring_points(bands[2])), shapely.Polygon(ring_points(bands[0]))
    assert outer.contains(inner)
    line = next(item for item in items(result) if item.polylines)
    assert line.style and line.style.strokeStyle == colour and not line.polygons
    assert [(p.x, p.y) for p in line.polylines[0].points] == [(0.3, 0.25), (0.7, 0.25)]
    table = result.displayProperties
    assert table["CD8 bands"] == "≥5% / ≥10% / ≥25% positive tissue, shaded lighter to darker"
    assert table["CD8 line"] == "mean expression = 0.50"


def test_overlay_chooses_hotspots_bands_or_both() -> None:
    spot = Hotspot(19_000, 9_000, 2_000, 2_000, 0.8)
    for overlay, fills, boxes in (("both", 3, 1), ("bands", 3, 0), ("hotspots", 0, 1)):
        run = summary([marker("CD8", 0.1, [spot])], overlays=[nested_bands()], overlay=overlay)
        result = build_final_result(run)
        assert sum(1 for item in items(result) if item.style and item.style.fillStyle) == fills
        assert sum(len(item.labels) for item in items(result) if item.labels) == boxes
        assert ("CD8 hotspots drawn" in result.displayProperties) == (overlay != "bands")
        assert ("CD8 bands" in result.displayProperties) == (overlay != "hotspots")


def test_a_ring_off_the_slide_is_clamped_and_a_degenerate_one_left_out() -> None:
    overlay = MarkerOverlay(
        "CD8",
        bands=(
            Band(0.05, (((39_000.0, 19_000.0), (45_000.0, 19_000.0), (45_000.0, 25_000.0)),)),
            Band(0.10, (((1.0, 1.0), (1.0, 1.0), (1.0000001, 1.0)),)),  # collapses when rounded
        ),
    )
    result = build_final_result(summary([marker("CD8", 0.1)], overlays=[overlay]))
    bands = [item for item in items(result) if item.style and item.style.fillStyle]
    assert len(bands) == 1 and ring_points(bands[0]) == [(0.975, 0.475), (1.0, 0.475), (1.0, 0.5)]
    assert result.displayProperties["CD8 bands"].startswith("≥5% positive")


def wobbly_ring(cx: float, cy: float, radius: float, points: int) -> tuple[tuple[float, float], ...]:
    return tuple(
        (
            cx
            + radius * (1 + 0.05 * math.sin(40 * math.pi * i / points)) * math.cos(2 * math.pi * i / points),
            cy
            + radius * (1 + 0.05 * math.sin(40 * math.pi * i / points)) * math.sin(2 * math.pi * i / points),
        )
        for i in range(points)
    )


def huge_overlay(name: str) -> MarkerOverlay:
    """Three levels of 20 rings of 2 000 points each: a few MB of JSON if drawn as given."""
    return MarkerOverlay(
        name,
        bands=tuple(
            Band(
                level,
                tuple(
                    wobbly_ring(4_000 + 3_500 * j, 4_000 + 3_000 * (j % 4), 1_500 * shrink, 2_000)
                    for j in range(10)
                ),
            )
            for level, shrink in ((0.05, 1.0), (0.10, 0.7), (0.25, 0.4))
        ),
    )


def test_a_huge_overlay_is_thinned_to_the_body_bound_highest_levels_first() -> None:
    run = summary(
        [marker("CD8", 0.1), marker("Ki67", 0.2)], overlays=[huge_overlay("CD8"), huge_overlay("Ki67")]
    )
    given = sum(len(ring) for overlay in run.overlays for band in overlay.bands for ring in band.polygons)
    bound = 256 * 1024
    result = build_final_result(run, max_body_bytes=bound)
    body = httpx.Request("POST", "http://sectra.invalid/", json=result.model_dump(mode="json")).content
    assert len(body) <= bound and body_bytes(result) <= bound
    assert "simplified" in str(result.displayProperties["Band detail"])
    bands = [item for item in items(result) if item.style and item.style.fillStyle]
    drawn = [sum(len(p.points) for p in item.polygons) for item in bands]
    assert 0 < sum(drawn) < given
    lowest = [
        n for item, n in zip(bands, drawn, strict=True) if item.style and item.style.fillStyle.endswith("40")
    ]
    highest = [
        n for item, n in zip(bands, drawn, strict=True) if item.style and item.style.fillStyle.endswith("80")
    ]
    assert min(lowest) > 0 and max(highest, default=0) <= max(lowest)
    # Thinned outlines still cover the drawn area: each stays close to the ring it came from.
    original = shapely.Polygon([(x / WIDTH, y / WIDTH) for x, y in run.overlays[0].bands[0].polygons[0]])
    thinned = shapely.Polygon(ring_points(bands[0]))
    assert thinned.symmetric_difference(original).area < 0.1 * original.area


def test_a_long_threshold_line_is_thinned_not_dropped() -> None:
    wavy = tuple((i * 2.0, 10_000 + 3_000 * math.sin(i / 400)) for i in range(20_000))
    run = summary([marker("CD8", 0.1)], overlays=[MarkerOverlay("CD8", threshold_lines=(wavy,))])
    result = build_final_result(run, max_body_bytes=64 * 1024)
    assert body_bytes(result) <= 64 * 1024
    (line,) = [item for item in items(result) if item.polylines]
    points = [(p.x, p.y) for p in line.polylines[0].points]
    assert 2 <= len(points) < len(wavy)
    assert points[0] == (0.0, 0.25) and points[-1] == (
        round(39_998 / WIDTH, 6),
        pytest.approx(0.25 + 0.075 * math.sin(19_999 / 400), abs=1e-6),
    )
    assert result.displayProperties["CD8 line"] == "mean expression = 0.50"


def test_a_bound_too_small_for_any_band_leaves_them_out_and_never_fails() -> None:
    run = summary([marker("CD8", 0.1, [Hotspot(100, 100, 400, 400, 0.9)])], overlays=[huge_overlay("CD8")])
    result = build_final_result(run, max_body_bytes=4_000)
    assert body_bytes(result) <= 4_000
    assert not any(item.style and item.style.fillStyle for item in items(result))
    assert "left out" in str(result.displayProperties["Band detail"])
    assert sum(len(item.polygons) for item in items(result)) == 1  # the hotspot is still drawn


def test_reused_results_name_the_job_and_cost_nothing() -> None:
    reused = ReusedJob("job_old", completed_at=1_764_547_200.0)  # 2025-12-01 00:00 UTC
    table = build_final_result(summary([marker("CD8", 0.1)], reused_job=reused, credits=7)).displayProperties
    assert table["Strand results"] == "from Strand job job_old of 2025-12-01"
    assert table["Strand credits used"] == "0 (results reused)"


def test_excluded_hotspots_are_drawn_grey_and_said() -> None:
    kept, artefact = Hotspot(100, 100, 400, 400, 0.6), Hotspot(2_000, 2_000, 400, 400, 0.9)
    run = summary([marker("CD8", 0.1, [kept, artefact])], excluded_hotspots=[artefact])
    result = build_final_result(run)
    by_colour = {item.style.strokeStyle: item for item in items(result) if item.style}
    assert ring_points(by_colour[colour_for(0)]) == [
        (0.0025, 0.0025),
        (0.0125, 0.0025),
        (0.0125, 0.0125),
        (0.0025, 0.0125),
    ]
    assert len(by_colour[colour_for(0)].polygons) == 1
    grey = by_colour["#9E9E9E"]
    assert ring_points(grey)[0] == (0.05, 0.05) and grey.labels[0].label == "Artefact (excluded)"
    assert result.displayProperties["CD8 hotspots drawn"] == 1
    assert result.displayProperties["Hotspots excluded"] == (
        "1 hotspot tagged Artefact in the review, drawn grey; the figures leave it out "
        "(the percentiles are from before the review)"
    )


def test_frames_for_the_slide_and_for_regions() -> None:
    assert slide_frame(WIDTH, HEIGHT) == [[(0.0, 0.0), (1.0, 0.0), (1.0, 0.5), (0.0, 0.5)]]
    assert region_frames([TUMOUR, Region(((0.0, 0.0), (10.0, 10.0)))], WIDTH) == [
        [(0.2, 0.15), (0.3, 0.1), (0.4, 0.15), (0.3, 0.25)]
    ]
    closed = Region(((0.0, 0.0), (4_000.0, 0.0), (4_000.0, 4_000.0), (0.0, 0.0)))  # first point repeated
    assert region_frames([closed], WIDTH) == [[(0.0, 0.0), (0.1, 0.0), (0.1, 0.1)]]
    with pytest.raises(ValueError, match="positive"):
        slide_frame(0, 10)


def test_pending_and_progress_results_draw_the_frame_with_the_status_at_its_top() -> None:
    pending = pending_result("s", "1.0", "Queued", frame=slide_frame(WIDTH, HEIGHT))
    outline = items(pending)
    assert len(outline) == 2 and ring_points(outline[1]) == [(0.0, 0.0), (1.0, 0.0), (1.0, 0.5), (0.0, 0.5)]
    assert [(label.label, label.location.x, label.location.y) for label in outline[1].labels] == [
        ("Queued", 0, 0)
    ]
    running = progress_result(
        "s", "1.0", "Strand: running 40 %", frame=region_frames([TUMOUR, STROMA], WIDTH)
    )
    light = items(running)[1]
    assert len(light.polygons) == 2
    assert [(label.label, label.location.x, label.location.y) for label in light.labels] == [
        ("Strand: running 40 %", 0.3, 0.1)
    ]
    assert running.data.context["kind"] == "progress" and running.displayProperties["Status"] == "Running"
    assert items(progress_result("s", "1.0", "Uploading 5 %")) == []  # callers without a frame
    open_ring = pending_result(
        "s", "1.0", frame=[[(0.1, 0.1), (0.2, 0.1), (0.2, 0.2), (0.1, 0.1)], [(0.5, 0.5)]]
    )
    assert [len(polygon.points) for polygon in items(open_ring)[1].polygons] == [3]


def test_every_new_result_round_trips_through_mock_sectra(mock_sectra: MockSectraServer, token: str) -> None:
    results = [
        build_final_result(region_summary(overlays=[nested_bands()])),
        build_final_result(
            summary([marker("CD8", 0.1)], overlays=[huge_overlay("CD8")]), max_body_bytes=128 * 1024
        ),
        pending_result("slide-7", "2.0.0", frame=slide_frame(WIDTH, HEIGHT)),
        progress_result("slide-7", "2.0.0", "Strand: running 40 %", frame=region_frames([TUMOUR], WIDTH)),
    ]
    with SectraAdapter(mock_sectra.url, token, allow_http=True) as sectra:
        pending = sectra.create_results("app", results[2])
        for result in (results[0], results[1], results[3]):
            stored = sectra.create_results("app", result)
            assert Result.model_validate(stored.model_dump()) == result
        final = sectra.update_results(
            "app", pending.id, AdaptedResult(**results[0].model_dump(), versionId=pending.versionId)
        )
        assert final.versionId != pending.versionId
        again = sectra.get_result("app", pending.id)
    assert json.loads(again.model_dump_json())["data"] == json.loads(results[0].model_dump_json())["data"]
    assert [r.id for r in mock_sectra.get_results("app", "slide-7")] == [1, 2, 3, 4]


REGION_GOLDEN = Path(__file__).parent / "golden" / "region_bands_result.json"


def test_a_region_run_with_bands_matches_its_golden_json() -> None:
    """Regions, bands, a threshold line, a hotspot, reuse and an exclusion together, checked by hand once."""
    run = region_summary(
        overlays=[nested_bands()],
        reused_job=ReusedJob("job_old", completed_at=1_764_547_200.0),
        excluded_hotspots=[Hotspot(30_000, 2_000, 800, 800, 0.5)],
    )
    result = build_final_result(run, context={"runId": "run-9"})
    assert result.model_dump(mode="json") == json.loads(REGION_GOLDEN.read_text(encoding="utf-8"))
