"""Sectra `Result`s the pathologist reads: the final marker summary, and the states before it.

Three layers of one result, each for a different glance: `displayResult` is the
single line in Sectra's annotation list; `displayProperties` the table behind
it, with units; `data.result` the hotspots drawn on the slide. Every builder
returns a validated `sectra_client` `Result`, and `data.context` records which
kind of result it is so a later reader (a retried webhook, a resumed worker)
can tell a pending result from a final one.
"""

from __future__ import annotations

import colorsys
import math
from collections.abc import Mapping
from typing import Any

from sectra_client.schemas import (
    Label,
    Point,
    Polygon,
    PrimitiveItem,
    PrimitiveResultContent,
    Result,
    ResultData,
    Style,
)

from sectra_adapter._summary import Hotspot, RunSummary

# Okabe-Ito: distinguishable with the common colour-vision deficiencies, and against H&E pink.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#D55E00", "#56B4E9", "#F0E442", "#000000")
DISPLAY_RESULT_CHARS = 200
_COORD_DIGITS = 6
_AREA_FIGURES = 3
GEOMETRY_MISMATCH_LINE = "Map scale from slide size; the results' metadata disagreed"


def build_final_result(
    summary: RunSummary, *, max_primitives: int = 200, context: Mapping[str, Any] | None = None
) -> Result:
    """The result that replaces the pending one when a run succeeds (fully or for some markers).

    At most `max_primitives` hotspots are drawn (each a rectangle with its label),
    shared round-robin so every marker shows its best hotspots first.
    """
    if summary.slide_width <= 0 or summary.slide_height <= 0:
        raise ValueError("slide width and height must be positive to place hotspots")
    drawn = _allocate_hotspots(summary, max_primitives)
    items = [
        _primitive(marker.marker, colour_for(index), spots)
        for index, marker in enumerate(summary.markers)
        if (spots := drawn[marker.marker])
    ]
    return Result(
        slideId=summary.slide_id,
        displayResult=_display_line(summary),
        applicationVersion=summary.app_version,
        data=ResultData(
            context={**(context or {}), "kind": "final", "jobId": summary.job_id},
            result=PrimitiveResultContent(content=items),
        ),
        displayProperties=_properties(summary, {m: len(h) for m, h in drawn.items()}),
    )


def pending_result(
    slide_id: str,
    app_version: str,
    message: str = "Queued for Strand analysis",
    *,
    context: Mapping[str, Any] | None = None,
) -> Result:
    """What the webhook stores at once, so the pathologist sees the request was taken."""
    return _status_result(slide_id, app_version, message, "Queued", "pending", context)


def progress_result(
    slide_id: str, app_version: str, message: str, *, context: Mapping[str, Any] | None = None
) -> Result:
    """A progress update such as "Uploading 40 %" or "Strand: running 62 %"."""
    return _status_result(slide_id, app_version, message, "Running", "progress", context)


def failure_result(
    slide_id: str, app_version: str, message: str, *, context: Mapping[str, Any] | None = None
) -> Result:
    """A failed or refused run, in the caller's plain words ("Not enough Strand credits: ...")."""
    return _status_result(slide_id, app_version, message, "Failed", "failed", context)


def cancelled_result(
    slide_id: str,
    app_version: str,
    message: str = "Analysis cancelled",
    *,
    context: Mapping[str, Any] | None = None,
) -> Result:
    """A run cancelled from Sectra or by an operator; no Strand figures are shown."""
    return _status_result(slide_id, app_version, message, "Cancelled", "cancelled", context)


def case_summary_result(
    slide_id: str,
    app_version: str,
    headline: str,
    rows: Mapping[str, str],
    *,
    complete: bool,
    context: Mapping[str, Any] | None = None,
) -> Result:
    """The case summary on the invoked slide: `headline` in the annotation list, one table row
    per slide of the case (its block, its place in the case, what was found), nothing drawn."""
    line = _one_line(headline)
    table: dict[str, str | int | float] = {"Status": "Complete" if complete else "Running", "Case": line}
    table.update({name: _one_line(value) for name, value in rows.items()})
    table["App version"] = app_version
    return Result(
        slideId=slide_id,
        displayResult=line,
        applicationVersion=app_version,
        data=ResultData(
            context={**(context or {}), "kind": "case-summary"}, result=PrimitiveResultContent(content=[])
        ),
        displayProperties=table,
    )


def colour_for(index: int) -> str:
    """A distinct colour for the marker at `index`: the palette, then evenly spread hues."""
    if index < len(PALETTE):
        return PALETTE[index]
    hue = ((index - len(PALETTE)) * 0.618033988749895) % 1.0  # golden-ratio steps stay apart
    red, green, blue = colorsys.hls_to_rgb(hue, 0.45, 0.85)
    return f"#{round(red * 255):02X}{round(green * 255):02X}{round(blue * 255):02X}"


def format_percent(fraction: float) -> str:
    """`12.4%`; a tiny non-zero share reads `<0.1%` rather than a misleading `0.0%`."""
    percent = fraction * 100
    if 0 < percent < 0.05:
        return "<0.1%"
    return f"{percent:.1f}%"


def format_area(mm2: float) -> str:
    """`0.0131 mm²`, `1.31 mm²`, `131 mm²`: three significant figures, never exponent notation.

    Two decimals would show a 0.013 mm² focus as `0.01` and pretend a 131.4 mm²
    section is known to the hundredth. An unknown area (the slide's pixel size
    was not given) reads `unknown`.
    """
    if not math.isfinite(mm2):
        return "unknown"
    if mm2 == 0:
        return "0 mm²"
    rounded = float(f"{mm2:.{_AREA_FIGURES}g}")
    decimals = _AREA_FIGURES - 1 - math.floor(math.log10(abs(rounded)))
    return f"{rounded:.{max(0, decimals)}f} mm²"


def _status_result(
    slide_id: str,
    app_version: str,
    message: str,
    status: str,
    kind: str,
    context: Mapping[str, Any] | None,
) -> Result:
    line = _one_line(message)
    return Result(
        slideId=slide_id,
        displayResult=line,
        applicationVersion=app_version,
        data=ResultData(context={**(context or {}), "kind": kind}, result=PrimitiveResultContent(content=[])),
        displayProperties={"Status": status, "Details": line, "App version": app_version},
    )


def _display_line(summary: RunSummary) -> str:
    shown = [f"{m.marker} {format_percent(m.positive_fraction)}" for m in summary.markers]
    present = {m.marker for m in summary.markers}
    missing = [name for name in summary.missing_markers if name not in present]
    if not shown:
        return _one_line("No marker results" + (f": {', '.join(missing)} not available" if missing else ""))
    return _one_line(" | ".join(shown + [f"{name} n/a" for name in missing]))


def _properties(summary: RunSummary, drawn: Mapping[str, int]) -> dict[str, str | int | float]:
    table: dict[str, str | int | float] = {}
    for m in summary.markers:
        table[f"{m.marker} positive tissue"] = (
            f"{format_percent(m.positive_fraction)} "
            f"({format_area(m.positive_area_mm2)} of {format_area(m.tissue_area_mm2)})"
        )
        table[f"{m.marker} expression (0-1)"] = (
            f"mean {m.mean:.2f}, median {m.p50:.2f}, P90 {m.p90:.2f}, P99 {m.p99:.2f}"
        )
        table[f"{m.marker} hotspots drawn"] = drawn.get(m.marker, 0)
    for name, reason in summary.missing_markers.items():
        table[f"{name} result"] = _one_line(f"Not available: {reason}")
    disagreed = [m.marker for m in summary.markers if m.geometry_mismatch]
    if disagreed:
        which = "" if len(disagreed) == len(summary.markers) else f" ({', '.join(disagreed)})"
        table["Map scale"] = GEOMETRY_MISMATCH_LINE + which
    table["Positivity threshold"] = f"{summary.threshold:.2f} (predicted expression, 0-1)"
    table["Strand job"] = summary.job_id
    table["Strand credits used"] = summary.credits if summary.credits is not None else "not reported"
    table["Strand model"] = summary.model or "platform default"
    table["App version"] = summary.app_version
    return table


Box = tuple[float, float, float, float]


def _allocate_hotspots(summary: RunSummary, budget: int) -> dict[str, list[tuple[Hotspot, Box]]]:
    """Each marker's strongest on-slide hotspots, taken in turns until `budget` is spent."""
    ranked = [
        sorted(
            ((spot, box) for spot in m.hotspots if (box := _box(spot, summary)) is not None),
            key=lambda pair: pair[0].positive_fraction,
            reverse=True,
        )
        for m in summary.markers
    ]
    chosen: dict[str, list[tuple[Hotspot, Box]]] = {m.marker: [] for m in summary.markers}
    budget = max(0, budget)
    rank = 0
    while budget > 0 and any(rank < len(r) for r in ranked):
        for marker, candidates in zip(summary.markers, ranked, strict=True):
            if rank < len(candidates) and budget > 0:
                chosen[marker.marker].append(candidates[rank])
                budget -= 1
        rank += 1
    return chosen


def _box(spot: Hotspot, summary: RunSummary) -> Box | None:
    """The hotspot normalised by slide width (x in [0, 1], y in [0, height/width]); None if off-slide."""
    width = summary.slide_width
    x_max, y_max = 1.0, summary.slide_height / width
    x0, x1 = (_clamp(v / width, x_max) for v in (spot.x, spot.x + spot.width))
    y0, y1 = (_clamp(v / width, y_max) for v in (spot.y, spot.y + spot.height))
    return (x0, y0, x1, y1) if x1 > x0 and y1 > y0 else None


def _primitive(marker: str, colour: str, spots: list[tuple[Hotspot, Box]]) -> PrimitiveItem:
    """One marker's hotspots as labelled rectangles in the marker's colour."""
    polygons: list[Polygon] = []
    labels: list[Label] = []
    for spot, (x0, y0, x1, y1) in spots:
        corners = [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
        polygons.append(Polygon(points=[Point(x=x, y=y) for x, y in corners]))
        label = f"{marker} {format_percent(spot.positive_fraction)}"
        labels.append(Label(location=Point(x=x0, y=y0), label=label))
    return PrimitiveItem(style=Style(strokeStyle=colour), polygons=polygons, labels=labels)


def _clamp(value: float, upper: float) -> float:
    return round(min(max(value, 0.0), upper), _COORD_DIGITS)


def _one_line(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= DISPLAY_RESULT_CHARS else text[: DISPLAY_RESULT_CHARS - 1] + "…"
