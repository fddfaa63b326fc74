"""Areas read to three significant figures, and a geometry the slide contradicted is said out loud."""

from __future__ import annotations

import math

import pytest

from sectra_adapter._results import GEOMETRY_MISMATCH_LINE, build_final_result, format_area
from sectra_adapter._summary import Hotspot, MarkerSummary, RunSummary


@pytest.mark.parametrize(
    ("mm2", "shown"),
    [
        (0.013149, "0.0131 mm²"),
        (1.3149, "1.31 mm²"),
        (131.4, "131 mm²"),
        (0.5, "0.500 mm²"),
        (9.996, "10.0 mm²"),  # rounding up adds a digit before the point, not a fourth figure
        (0.00099951, "0.00100 mm²"),
        (1314.0, "1310 mm²"),  # never 1.31e+03
        (0.0, "0 mm²"),
        (math.nan, "unknown"),
    ],
)
def test_areas_have_three_significant_figures(mm2: float, shown: str) -> None:
    assert format_area(mm2) == shown


def marker(name: str, mismatch: str | None = None) -> MarkerSummary:
    return MarkerSummary(
        name,
        0.25,
        0.0131,
        131.4,
        0.3,
        0.2,
        0.6,
        0.9,
        [Hotspot(10, 10, 50, 50, 0.5)],
        geometry_mismatch=mismatch,
    )


def run(*markers: MarkerSummary) -> RunSummary:
    return RunSummary("s", 1000, 800, list(markers), "job-1", "1.0.0", 0.5)


def test_the_property_table_shows_areas_in_three_figures() -> None:
    table = build_final_result(run(marker("CD8"))).displayProperties
    assert table["CD8 positive tissue"] == "25.0% (0.0131 mm² of 131 mm²)"
    assert "Map scale" not in table


def test_a_geometry_the_slide_contradicted_adds_one_line_naming_the_markers() -> None:
    table = build_final_result(
        run(marker("CD8", "metadata 4 x 4, slide 1 x 1"), marker("Ki67"))
    ).displayProperties
    assert table["Map scale"] == f"{GEOMETRY_MISMATCH_LINE} (CD8)"
    assert GEOMETRY_MISMATCH_LINE == "Map scale from slide size; the results' metadata disagreed"
    everyone = build_final_result(run(marker("CD8", "x"), marker("Ki67", "y"))).displayProperties
    assert everyone["Map scale"] == GEOMETRY_MISMATCH_LINE
    assert sum(GEOMETRY_MISMATCH_LINE in str(v) for v in everyone.values()) == 1
