"""Result building: golden JSON, schema round trips, width-normalised coordinates, bounded primitives."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sectra_client.schemas import PrimitiveResultContent, Result

from sectra_adapter._results import (
    PALETTE,
    build_final_result,
    cancelled_result,
    colour_for,
    failure_result,
    format_percent,
    pending_result,
    progress_result,
)
from sectra_adapter._summary import Hotspot, MarkerSummary, RunSummary

GOLDEN = Path(__file__).parent / "golden" / "final_result.json"


def known_summary() -> RunSummary:
    """The summary behind golden/final_result.json (its coordinates were checked by hand)."""
    return RunSummary(
        slide_id="slide-42",
        slide_width=80_000,
        slide_height=40_000,
        markers=[
            MarkerSummary(
                "CD8",
                0.1244,
                3.21,
                25.87,
                0.312,
                0.28,
                0.62,
                0.88,
                [Hotspot(10_000, 5_000, 2_000, 2_000, 0.61), Hotspot(40_000, 30_000, 2_000, 2_000, 0.74)],
            ),
            MarkerSummary(
                "PanCK",
                0.481,
                12.44,
                25.87,
                0.55,
                0.58,
                0.91,
                0.99,
                [Hotspot(79_000, 39_500, 2_000, 2_000, 0.97)],
            ),
        ],
        job_id="job_8f2c",
        app_version="1.2.0",
        threshold=0.5,
        credits=120,
        model="v0.7",
        missing_markers={"Ki67": "the Strand job did not deliver this marker"},
    )


def marker(name: str, fraction: float, hotspots: list[Hotspot]) -> MarkerSummary:
    return MarkerSummary(name, fraction, 1.0, 10.0, 0.2, 0.2, 0.5, 0.9, hotspots)


def summary_of(
    markers: list[MarkerSummary], width: int = 1000, height: int = 1000, **extra: object
) -> RunSummary:
    return RunSummary("s", width, height, markers, "job", "1.0", 0.5, **extra)


def primitives(result: Result) -> PrimitiveResultContent:
    assert isinstance(result.data.result, PrimitiveResultContent)
    return result.data.result


def test_final_result_matches_the_golden_json() -> None:
    result = build_final_result(known_summary(), context={"runId": "run-1"})
    assert result.model_dump(mode="json") == json.loads(GOLDEN.read_text(encoding="utf-8"))


def test_final_result_round_trips_through_the_schema() -> None:
    result = build_final_result(known_summary())
    again = Result.model_validate_json(result.model_dump_json())
    assert again == result
    assert again.displayResult == "CD8 12.4% | PanCK 48.1% | Ki67 n/a"


def test_coordinates_are_normalised_by_width_on_a_non_square_slide() -> None:
    wide = summary_of(
        [marker("CD8", 0.1, [Hotspot(500, 250, 100, 500, 0.9), Hotspot(1900, 900, 500, 500, 0.8)])],
        width=2000,
        height=1000,
    )
    polygons = primitives(build_final_result(wide)).content[0].polygons
    first = [(p.x, p.y) for p in polygons[0].points]
    assert first == [(0.25, 0.125), (0.3, 0.125), (0.3, 0.375), (0.25, 0.375)]
    clipped = [(p.x, p.y) for p in polygons[1].points]
    assert clipped == [(0.95, 0.45), (1.0, 0.45), (1.0, 0.5), (0.95, 0.5)]  # y never exceeds height/width
    tall = summary_of([marker("CD8", 0.1, [Hotspot(0, 3000, 1000, 1000, 0.9)])], width=1000, height=4000)
    ys = [p.y for p in primitives(build_final_result(tall)).content[0].polygons[0].points]
    assert max(ys) == 4.0 and min(ys) == 3.0


def test_hotspots_off_the_slide_are_dropped() -> None:
    summary = summary_of([marker("CD8", 0.1, [Hotspot(5000, 5000, 10, 10, 0.9)])])
    result = build_final_result(summary)
    assert primitives(result).content == []
    assert result.displayProperties["CD8 hotspots drawn"] == 0


def test_primitive_count_is_bounded_and_shared_between_markers() -> None:
    markers = [
        marker(name, 0.1, [Hotspot(i * 10, i * 10, 5, 5, i / 100) for i in range(100)])
        for name in ("CD3", "CD8", "PanCK")
    ]
    result = build_final_result(summary_of(markers), max_primitives=10)
    items = primitives(result).content
    assert [len(item.polygons) for item in items] == [4, 3, 3]
    assert all(len(item.labels) == len(item.polygons) for item in items)
    # Each marker shows its strongest hotspots first.
    assert items[0].labels[0].label == "CD3 99.0%" and items[0].labels[1].label == "CD3 98.0%"
    assert primitives(build_final_result(summary_of(markers), max_primitives=0)).content == []


def test_each_marker_gets_a_distinct_colour() -> None:
    markers = [marker(f"M{i}", 0.1, [Hotspot(0, 0, 5, 5, 0.5)]) for i in range(14)]
    colours = [item.style.strokeStyle for item in primitives(build_final_result(summary_of(markers))).content]
    assert len(set(colours)) == 14 and colours[: len(PALETTE)] == list(PALETTE)
    assert all(c is not None and len(c) == 7 and c.startswith("#") for c in colours)
    assert colour_for(20) != colour_for(21)


def test_property_table_reads_plainly() -> None:
    result = build_final_result(summary_of([marker("CD8", 0.0002, [])], credits=None, model=None))
    props = result.displayProperties
    assert props["CD8 positive tissue"] == "<0.1% (1.00 mm² of 10.0 mm²)"
    assert props["Strand credits used"] == "not reported"
    assert props["Strand model"] == "platform default"
    assert result.displayResult == "CD8 <0.1%"


def test_a_run_with_no_marker_results_says_so() -> None:
    result = build_final_result(
        summary_of([], missing_markers={"CD8": "map unreadable", "Ki67": "job failed"})
    )
    assert result.displayResult == "No marker results: CD8, Ki67 not available"
    assert result.displayProperties["CD8 result"] == "Not available: map unreadable"


@pytest.mark.parametrize(
    ("fraction", "text"),
    [
        (0.0, "0.0%"),
        (0.0004, "<0.1%"),
        (0.0005, "0.1%"),
        (0.124, "12.4%"),
        (1.0, "100.0%"),
        (float("nan"), "no tissue"),
    ],
)
def test_format_percent(fraction: float, text: str) -> None:
    assert format_percent(fraction) == text


def test_status_results_validate_and_carry_their_kind() -> None:
    pending = pending_result("s", "1.0", context={"runId": "r1"})
    progress = progress_result("s", "1.0", "Strand: running 62 %")
    failed = failure_result("s", "1.0", "Not enough Strand credits: 120 required, 80 available")
    cancelled = cancelled_result("s", "1.0")
    for result, kind, status in (
        (pending, "pending", "Queued"),
        (progress, "progress", "Running"),
        (failed, "failed", "Failed"),
        (cancelled, "cancelled", "Cancelled"),
    ):
        assert Result.model_validate_json(result.model_dump_json()) == result
        assert result.data.context["kind"] == kind and result.displayProperties["Status"] == status
        assert primitives(result).content == []
    assert pending.displayResult == "Queued for Strand analysis" and pending.data.context["runId"] == "r1"
    assert failed.displayResult == "Not enough Strand credits: 120 required, 80 available"
    assert cancelled.displayResult == "Analysis cancelled"


def test_display_result_is_one_short_line() -> None:
    result = failure_result("s", "1.0", "line one\nline two " + "x" * 500)
    assert "\n" not in result.displayResult and len(result.displayResult) == 200
    assert result.displayResult.startswith("line one line two") and result.displayResult.endswith("…")


def test_an_empty_slide_size_is_refused() -> None:
    with pytest.raises(ValueError, match="slide width and height"):
        build_final_result(summary_of([], width=0))
