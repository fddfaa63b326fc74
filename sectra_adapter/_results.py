"""Sectra `Result`s the pathologist reads: the final marker summary, and the states before it.

Three layers of one result, each for a different glance: `displayResult` is the
single line in Sectra's annotation list; `displayProperties` the table behind
it, with units; `data.result` what is drawn on the slide (density bands, the
drawn regions with their figures, the hotspots). Every builder returns a
validated `sectra_client` `Result`, and `data.context` records which kind of
result it is so a later reader (a retried webhook, a resumed worker) can tell a
pending result from a final one.

Coordinates: level-0 slide pixels divided by the slide WIDTH, so x is in [0, 1]
and y in [0, height/width] (DESIGN.md "Sectra coordinates"). Rings are closed
implicitly: Sectra joins the last point to the first.
"""

from __future__ import annotations

import colorsys
import functools
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import numpy as np
import shapely
from pydantic_core import to_json
from sectra_client.schemas import (
    Label,
    Point,
    Polygon,
    Polyline,
    PrimitiveItem,
    PrimitiveResultContent,
    Result,
    ResultData,
    Style,
)

from sectra_adapter._summary import Hotspot, MarkerOverlay, Region, RunSummary

# Okabe-Ito: distinguishable with the common colour-vision deficiencies, and against H&E pink.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#D55E00", "#56B4E9", "#F0E442", "#000000")
DISPLAY_RESULT_CHARS = 200
LABEL_CHARS = 80
MAX_BODY_BYTES = 512 * 1024
_COORD_DIGITS = 6
_AREA_FIGURES = 3
GEOMETRY_MISMATCH_LINE = "Map scale from slide size; the results' metadata disagreed"
# Outlines (drawn regions, the frame while a run is under way) are a dark line under a light one,
# so they read on glass (white) and on tissue (pink, purple) alike and clash with no marker colour.
OUTLINE_DARK = Style(strokeStyle="#000000", size=3)
OUTLINE_LIGHT = Style(strokeStyle="#FFFFFF", size=1)
EXCLUDED_COLOUR = "#9E9E9E"
# Hex alpha of band fills, lowest level first: nested bands pile up, so the inside reads darker.
BAND_ALPHAS = ("40", "60", "80", "A0")
# Douglas-Peucker tolerances (normalised units) tried in turn when bands would break the body bound:
# 1e-5 of the slide width is about a pixel of a thumbnail-sized map, 1e-2 the coarsest worth drawing.
_SIMPLIFY_TOLERANCES = tuple(1e-5 * 2**step for step in range(11))

NormPoint = tuple[float, float]  # (x, y) in Sectra's coordinates
Frame = Sequence[Sequence[NormPoint]]
Table = dict[str, str | int | float]


def build_final_result(
    summary: RunSummary,
    *,
    max_primitives: int = 200,
    context: Mapping[str, Any] | None = None,
    max_body_bytes: int = MAX_BODY_BYTES,
) -> Result:
    """The result that replaces the pending one when a run succeeds (fully or for some markers).

    Drawn, bottom to top: each marker's density bands and threshold line (as `summary.overlay`
    allows), the drawn regions' outlines with their figures at the top point, then the hotspots.
    At most `max_primitives` hotspots are drawn (each a rectangle with its label), shared
    round-robin so every marker shows its best hotspots first; hotspots the review tagged Artefact
    are drawn grey instead. The JSON body stays within `max_body_bytes`: band detail gives way
    first (highest levels first, see `_fit_bands`), and the property table says so.
    """
    if summary.slide_width <= 0 or summary.slide_height <= 0:
        raise ValueError("slide width and height must be positive to place hotspots")
    show_hotspots = summary.overlay in ("hotspots", "both")
    drawn = _allocate_hotspots(summary, max_primitives if show_hotspots else 0)
    hotspot_items = [
        _primitive(marker.marker, colour_for(index), spots)
        for index, marker in enumerate(summary.markers)
        if (spots := drawn[marker.marker])
    ]
    if show_hotspots:
        hotspot_items += _excluded_items(summary, max_primitives)
    fixed_items = [*_region_items(summary), *hotspot_items]
    table = _properties(summary, {m: len(h) for m, h in drawn.items()} if show_hotspots else None)
    layers, legend = _overlay_layers(summary) if summary.overlay in ("bands", "both") else ([], {})

    def assemble(overlay: Sequence[_Layer], note: str | None) -> Result:
        drawn_overlay = [layer.item() for layer in overlay if layer.rings]
        notes: Table = {"Band detail": note} if note else {}
        return Result(
            slideId=summary.slide_id,
            displayResult=_display_line(summary),
            applicationVersion=summary.app_version,
            data=ResultData(
                context={**(context or {}), "kind": "final", "jobId": summary.job_id},
                result=PrimitiveResultContent(content=[*drawn_overlay, *fixed_items]),
            ),
            displayProperties=_before("Positivity threshold", table, {**legend, **notes}),
        )

    if not layers:
        return assemble([], None)
    # Measured without the overlay (cheap), which is then counted layer by layer.
    placeholder = "x" * 160  # room for the note a thinned result carries
    base = body_bytes(assemble([], placeholder))
    if base + sum(layer.json_bytes() for layer in layers) <= max_body_bytes:
        result = assemble(layers, None)
        if body_bytes(result) <= max_body_bytes:
            return result
    fitted, note = _fit_overlay(layers, max_body_bytes - base)
    result = assemble(fitted, note)
    if body_bytes(result) <= max_body_bytes:
        return result
    return assemble([], "Bands and threshold lines left out to keep the result within Sectra's size limit")


def body_bytes(result: Result) -> int:
    """The size of `result` as a request body, counted generously (ASCII-escaped, spaced JSON)."""
    return len(json.dumps(result.model_dump(mode="json")).encode("ascii"))


def slide_frame(width: int, height: int) -> list[list[NormPoint]]:
    """The whole slide as one ring in Sectra's coordinates, for the frame of a whole-slide run."""
    if width <= 0 or height <= 0:
        raise ValueError("slide width and height must be positive to draw a frame")
    bottom = round(height / width, _COORD_DIGITS)
    return [[(0.0, 0.0), (1.0, 0.0), (1.0, bottom), (0.0, bottom)]]


def region_frames(regions: Sequence[Region], width: int) -> list[list[NormPoint]]:
    """The drawn regions' outlines in Sectra's coordinates (one ring each; fewer than 3 points: left out)."""
    if width <= 0:
        raise ValueError("slide width must be positive to draw a frame")
    rings = [
        _open_ring([(_round(x / width), _round(y / width)) for x, y in region.points]) for region in regions
    ]
    return [ring for ring in rings if len(ring) >= 3]


def pending_result(
    slide_id: str,
    app_version: str,
    message: str = "Queued for Strand analysis",
    *,
    context: Mapping[str, Any] | None = None,
    frame: Frame | None = None,
) -> Result:
    """What the webhook stores at once, so the pathologist sees the request was taken.

    `frame` (rings in Sectra's coordinates: `slide_frame`, `region_frames`) is outlined with the
    message at its top point, so the pathologist sees where the work is under way.
    """
    return _status_result(slide_id, app_version, message, "Queued", "pending", context, frame)


def pending_result_json(slide_id: str, app_version: str, *, frame: Frame | None = None) -> bytes:
    """`pending_result(slide_id, app_version, frame=frame).model_dump_json()`, as bytes to POST.

    A whole-slide run's pending result (no frame) differs from slide to slide only in its
    `slideId`, so its JSON is made once per app version and the id, encoded by pydantic's own
    serializer, is set in front (the webhook posts one per `create`).
    """
    if frame:
        return pending_result(slide_id, app_version, frame=frame).model_dump_json().encode()
    return b'{"slideId":' + to_json(slide_id) + _unframed_pending_tail(app_version)


@functools.lru_cache(maxsize=64)
def _unframed_pending_tail(app_version: str) -> bytes:
    whole = pending_result(_SLIDE_PLACEHOLDER, app_version).model_dump_json().encode()
    head = b'{"slideId":' + to_json(_SLIDE_PLACEHOLDER) + b","
    if not whole.startswith(head) or _SLIDE_PLACEHOLDER.encode() in whole[len(head) :]:
        raise AssertionError("a pending result's JSON no longer starts with its slideId alone")
    return whole[len(head) - 1 :]


_SLIDE_PLACEHOLDER = "@@slide-id@@"


def progress_result(
    slide_id: str,
    app_version: str,
    message: str,
    *,
    context: Mapping[str, Any] | None = None,
    frame: Frame | None = None,
) -> Result:
    """A progress update such as "Uploading 40 %" or "Strand: running 62 %" (framed like `pending_result`)."""
    return _status_result(slide_id, app_version, message, "Running", "progress", context, frame)


def failure_result(
    slide_id: str, app_version: str, message: str, *, context: Mapping[str, Any] | None = None
) -> Result:
    """A failed or refused run, in the caller's plain words ("Not enough Strand credits: ...")."""
    return _status_result(slide_id, app_version, message, "Failed", "failed", context, None)


def cancelled_result(
    slide_id: str,
    app_version: str,
    message: str = "Analysis cancelled",
    *,
    context: Mapping[str, Any] | None = None,
) -> Result:
    """A run cancelled from Sectra or by an operator; no Strand figures are shown."""
    return _status_result(slide_id, app_version, message, "Cancelled", "cancelled", context, None)


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
    table: Table = {"Status": "Complete" if complete else "Running", "Case": line}
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
    """`12.4%`; a tiny non-zero share reads `<0.1%` rather than a misleading `0.0%`.

    A share of no tissue at all (NaN: a drawn region that holds none, beside others that do)
    reads `no tissue`, never `nan%`.
    """
    if not math.isfinite(fraction):
        return "no tissue"
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


def format_level(fraction: float) -> str:
    """A band level as the pathologist reads it: `≥5%`, `≥12.5%`."""
    return f"≥{f'{fraction * 100:.1f}'.removesuffix('.0')}%"


def top_point(rings: Sequence[Sequence[NormPoint]]) -> NormPoint:
    """Where a label goes: the uppermost point (least y; the leftmost of equals), as Sectra's examples do."""
    return min((point for ring in rings for point in ring), key=lambda p: (p[1], p[0]))


def _status_result(
    slide_id: str,
    app_version: str,
    message: str,
    status: str,
    kind: str,
    context: Mapping[str, Any] | None,
    frame: Frame | None,
) -> Result:
    line = _one_line(message)
    rings = [
        ring
        for ring in (_open_ring([(_round(x), _round(y)) for x, y in r]) for r in frame or ())
        if len(ring) >= 3
    ]
    items = _outline_items(rings, [(top_point(rings), _short(line))]) if rings else []
    return Result(
        slideId=slide_id,
        displayResult=line,
        applicationVersion=app_version,
        data=ResultData(
            context={**(context or {}), "kind": kind}, result=PrimitiveResultContent(content=items)
        ),
        displayProperties={"Status": status, "Details": line, "App version": app_version},
    )


def _display_line(summary: RunSummary) -> str:
    shown = [f"{m.marker} {format_percent(m.positive_fraction)}" for m in summary.markers]
    present = {m.marker for m in summary.markers}
    missing = [name for name in summary.missing_markers if name not in present]
    if not shown:
        return _one_line("No marker results" + (f": {', '.join(missing)} not available" if missing else ""))
    return _one_line(_area_prefix(summary) + " | ".join(shown + [f"{name} n/a" for name in missing]))


def _area_prefix(summary: RunSummary) -> str:
    """Names the area the figures are over: nothing for the whole slide, else the drawn region(s)."""
    regions = summary.regions
    if not regions:
        return ""
    if len(regions) == 1:
        return f"{regions[0].tag} region: " if regions[0].tag else "Drawn region: "
    return f"{len(regions)} regions: "


def _properties(summary: RunSummary, drawn: Mapping[str, int] | None) -> Table:
    table: Table = {}
    if summary.regions:
        table["Area analysed"] = _area_analysed(summary.regions)
    for m in summary.markers:
        table[f"{m.marker} positive tissue"] = _figures(
            m.positive_fraction, m.positive_area_mm2, m.tissue_area_mm2
        )
        table[f"{m.marker} expression (0-1)"] = (
            f"mean {m.mean:.2f}, median {m.p50:.2f}, P90 {m.p90:.2f}, P99 {m.p99:.2f}"
        )
        if drawn is not None:
            table[f"{m.marker} hotspots drawn"] = drawn.get(m.marker, 0)
    for index, region in enumerate(summary.regions):
        for m in summary.markers:
            if index < len(m.regions):
                area = m.regions[index]
                table[f"{_region_name(index, region)} {m.marker} positive tissue"] = _figures(
                    area.positive_fraction, area.positive_area_mm2, area.tissue_area_mm2
                )
    for name, reason in summary.missing_markers.items():
        table[f"{name} result"] = _one_line(f"Not available: {reason}")
    disagreed = [m.marker for m in summary.markers if m.geometry_mismatch]
    if disagreed:
        which = "" if len(disagreed) == len(summary.markers) else f" ({', '.join(disagreed)})"
        table["Map scale"] = GEOMETRY_MISMATCH_LINE + which
    if summary.excluded_hotspots:
        count = len(summary.excluded_hotspots)
        table["Hotspots excluded"] = (
            f"{count} hotspot{'s' if count != 1 else ''} tagged Artefact in the review, drawn grey; "
            f"the figures leave {'them' if count != 1 else 'it'} out "
            "(the percentiles are from before the review)"
        )
    table["Positivity threshold"] = f"{summary.threshold:.2f} (predicted expression, 0-1)"
    table["Strand job"] = summary.job_id
    if summary.reused_job is not None:
        day = datetime.fromtimestamp(summary.reused_job.completed_at, UTC).strftime("%Y-%m-%d")
        table["Strand results"] = f"from Strand job {summary.reused_job.job_id} of {day}"
        table["Strand credits used"] = "0 (results reused)"
    else:
        table["Strand credits used"] = summary.credits if summary.credits is not None else "not reported"
    table["Strand model"] = summary.model or "platform default"
    table["App version"] = summary.app_version
    return table


def _before(key: str, table: Table, extra: Table) -> Table:
    """`table` with `extra`'s rows inserted before `key` (the legend beside the figures it explains)."""
    if key not in table:
        return {**table, **extra}
    merged: Table = {}
    for name, value in table.items():
        if name == key:
            merged.update(extra)
        merged[name] = value
    return merged


def _figures(fraction: float, positive_mm2: float, tissue_mm2: float) -> str:
    return f"{format_percent(fraction)} ({format_area(positive_mm2)} of {format_area(tissue_mm2)})"


def _area_analysed(regions: Sequence[Region]) -> str:
    if len(regions) == 1:
        return f"The drawn region ({regions[0].tag})" if regions[0].tag else "The drawn region"
    return f"{len(regions)} drawn regions; the figures above are for all of them together"


def _region_name(index: int, region: Region) -> str:
    return f"Region {index + 1}" + (f" ({region.tag})" if region.tag else "")


# ---- what is drawn ------------------------------------------------------------------------


def _region_items(summary: RunSummary) -> list[PrimitiveItem]:
    """Each drawn region's outline, labelled at its top point with its own figures and tag."""
    rings: list[list[NormPoint]] = []
    labels: list[tuple[NormPoint, str]] = []
    for index, region in enumerate(summary.regions):
        ring = _normalised_ring(region.points, summary)
        if len(ring) < 3:
            continue
        rings.append(ring)
        figures = " | ".join(
            f"{m.marker} {format_percent(m.regions[index].positive_fraction)}"
            for m in summary.markers
            if index < len(m.regions)
        )
        text = figures + (f" ({region.tag})" if region.tag else "")
        if len(summary.regions) > 1:
            text = f"Region {index + 1}: {text}" if text else f"Region {index + 1}"
        labels.append((top_point([ring]), _short(text or "Drawn region")))
    return _outline_items(rings, labels) if rings else []


def _outline_items(
    rings: Sequence[Sequence[NormPoint]], labels: Sequence[tuple[NormPoint, str]]
) -> list[PrimitiveItem]:
    polygons = [Polygon(points=[Point(x=x, y=y) for x, y in ring]) for ring in rings]
    return [
        PrimitiveItem(style=OUTLINE_DARK, polygons=polygons),
        PrimitiveItem(
            style=OUTLINE_LIGHT,
            polygons=polygons,
            labels=[Label(location=Point(x=x, y=y), label=text) for (x, y), text in labels],
        ),
    ]


@dataclass(frozen=True, slots=True)
class _Layer:
    """One marker's band at one level, or its threshold lines, in Sectra's coordinates.

    Kept apart from the models so the body bound can thin it (`_fit_overlay`) before it is drawn.
    """

    marker: str
    rank: int  # 0 = the marker's lowest band; -1 = its threshold lines (thinned and dropped last)
    level: float
    colour: str
    rings: tuple[tuple[NormPoint, ...], ...]  # closed implicitly for a band; open for lines

    @property
    def is_line(self) -> bool:
        return self.rank < 0

    def item(self) -> PrimitiveItem:
        if self.is_line:
            return PrimitiveItem(
                style=Style(strokeStyle=self.colour),
                polylines=[Polyline(points=[Point(x=x, y=y) for x, y in line]) for line in self.rings],
            )
        alpha = BAND_ALPHAS[min(self.rank, len(BAND_ALPHAS) - 1)]
        return PrimitiveItem(
            style=Style(fillStyle=self.colour + alpha, strokeStyle=self.colour),
            polygons=[Polygon(points=[Point(x=x, y=y) for x, y in ring]) for ring in self.rings],
        )

    def json_bytes(self) -> int:
        """At least the bytes this layer adds to the body as `body_bytes` counts them.

        An estimate from the point count, never below the truth: a coordinate rounded to six
        decimals is at most nine characters (`12.345678`), and `{"x": , "y": }, ` adds 16 more.
        Serialising every trial exactly would take seconds for a large overlay.
        """
        points = sum(len(ring) for ring in self.rings)
        return 120 + 16 * len(self.rings) + (16 + 2 * 9) * points

    def thinned(self, tolerance: float) -> tuple[tuple[NormPoint, ...], ...]:
        """The rings (or lines) simplified by Douglas-Peucker; those left degenerate are dropped."""
        if not self.rings:
            return ()
        if self.is_line:
            paths = shapely.linestrings([list(line) for line in self.rings])
        else:
            paths = shapely.linestrings([[*ring, ring[0]] for ring in self.rings])
        kept = []
        for path in shapely.simplify(paths, tolerance, preserve_topology=False):
            points = [(_round(x), _round(y)) for x, y in shapely.get_coordinates(path)]
            ring = _dedupe(points if self.is_line else points[:-1])
            if len(ring) >= (2 if self.is_line else 3):
                kept.append(tuple(ring))
        return tuple(kept)


def _overlay_layers(summary: RunSummary) -> tuple[list[_Layer], Table]:
    """Bands (every marker's lowest level first, so higher ones paint over them), lines, the legend."""
    colours = {m.marker: colour_for(index) for index, m in enumerate(summary.markers)}
    bands: list[_Layer] = []
    lines: list[_Layer] = []
    legend: Table = {}
    for overlay in summary.overlays:
        colour = colours.get(overlay.marker)
        if colour is None:
            continue  # no figures for this marker: drawing its field would explain nothing
        marker_bands = _marker_bands(overlay, colour, summary)
        bands += marker_bands
        if marker_bands:
            levels = " / ".join(format_level(layer.level) for layer in marker_bands)
            legend[f"{overlay.marker} bands"] = f"{levels} positive tissue, shaded lighter to darker"
        paths = tuple(
            tuple(path)
            for path in (_dedupe(_normalised(points, summary)) for points in overlay.threshold_lines)
            if len(path) >= 2
        )
        if paths:
            lines.append(_Layer(overlay.marker, -1, summary.threshold, colour, paths))
            legend[f"{overlay.marker} line"] = f"mean expression = {summary.threshold:.2f}"
    bands.sort(key=lambda layer: layer.rank)  # nesting reads darker inside, whatever the marker
    return [*bands, *lines], legend


def _marker_bands(overlay: MarkerOverlay, colour: str, summary: RunSummary) -> list[_Layer]:
    layers: list[_Layer] = []
    for band in sorted(overlay.bands, key=lambda b: b.level):
        rings = tuple(
            tuple(ring)
            for ring in (_normalised_ring(points, summary) for points in band.polygons)
            if len(ring) >= 3
        )
        if rings:
            layers.append(_Layer(overlay.marker, len(layers), band.level, colour, rings))
    return layers


_SIMPLIFIED_NOTE = "Band outlines simplified to keep the result within Sectra's size limit"


def _fit_overlay(layers: Sequence[_Layer], budget: int) -> tuple[list[_Layer], str]:
    """Thin the overlay until its JSON fits `budget` bytes; says in plain words what was given up.

    Outlines are simplified (Douglas-Peucker, coarser in steps), the highest band levels first at
    each step, since they are the smallest, most detailed areas and matter least to the overall
    picture, the threshold lines last; when even the coarsest outlines are too big, whole levels
    are left out, highest first, then the lines.
    """
    current = list(layers)
    sizes = [layer.json_bytes() for layer in current]
    order = sorted(range(len(current)), key=lambda i: -current[i].rank)  # lines (rank -1) last
    for tolerance in _SIMPLIFY_TOLERANCES:
        for i in order:
            if sum(sizes) <= budget:
                return current, _SIMPLIFIED_NOTE
            current[i] = replace(current[i], rings=layers[i].thinned(tolerance))
            sizes[i] = current[i].json_bytes()
    dropped: list[_Layer] = []
    for i in order:
        if sum(sizes) <= budget:
            break
        dropped.append(current[i])
        current[i] = replace(current[i], rings=())
        sizes[i] = 0
    if sum(sizes) > budget or all(not layer.rings for layer in current):
        return [], "Bands and threshold lines left out to keep the result within Sectra's size limit"
    if not dropped:
        return current, _SIMPLIFIED_NOTE
    levels = sorted({layer.level for layer in dropped if not layer.is_line})
    what = [f"Bands {' / '.join(format_level(level) for level in levels)}"] if levels else []
    what += ["threshold lines"] if any(layer.is_line for layer in dropped) else []
    return (
        current,
        f"{' and '.join(what)} left out, outlines simplified, to keep the result within Sectra's size limit",
    )


Box = tuple[float, float, float, float]


def _excluded_keys(summary: RunSummary) -> set[tuple[int, int, int, int]]:
    return {(h.x, h.y, h.width, h.height) for h in summary.excluded_hotspots}


def _allocate_hotspots(summary: RunSummary, budget: int) -> dict[str, list[tuple[Hotspot, Box]]]:
    """Each marker's strongest on-slide hotspots, taken in turns until `budget` is spent.

    Hotspots the review tagged Artefact (`summary.excluded_hotspots`, matched by box) are not among them.
    """
    excluded = _excluded_keys(summary)
    ranked = [
        sorted(
            (
                (spot, box)
                for spot in m.hotspots
                if (spot.x, spot.y, spot.width, spot.height) not in excluded
                and (box := _box(spot, summary)) is not None
            ),
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


def _excluded_items(summary: RunSummary, budget: int) -> list[PrimitiveItem]:
    """The hotspots the review tagged Artefact, grey, so the pathologist sees what the figures leave out."""
    unique = {(h.x, h.y, h.width, h.height): h for h in summary.excluded_hotspots}
    boxes = [box for spot in unique.values() if (box := _box(spot, summary)) is not None][: max(0, budget)]
    if not boxes:
        return []
    polygons = [Polygon(points=[Point(x=x, y=y) for x, y in _corners(box)]) for box in boxes]
    labels = [Label(location=Point(x=box[0], y=box[1]), label="Artefact (excluded)") for box in boxes]
    return [PrimitiveItem(style=Style(strokeStyle=EXCLUDED_COLOUR), polygons=polygons, labels=labels)]


def _box(spot: Hotspot, summary: RunSummary) -> Box | None:
    """The hotspot normalised by slide width (x in [0, 1], y in [0, height/width]); None if off-slide."""
    width = summary.slide_width
    x_max, y_max = 1.0, summary.slide_height / width
    x0, x1 = (_clamp(v / width, x_max) for v in (spot.x, spot.x + spot.width))
    y0, y1 = (_clamp(v / width, y_max) for v in (spot.y, spot.y + spot.height))
    return (x0, y0, x1, y1) if x1 > x0 and y1 > y0 else None


def _corners(box: Box) -> list[NormPoint]:
    x0, y0, x1, y1 = box
    return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]


def _primitive(marker: str, colour: str, spots: list[tuple[Hotspot, Box]]) -> PrimitiveItem:
    """One marker's hotspots as labelled rectangles in the marker's colour."""
    polygons: list[Polygon] = []
    labels: list[Label] = []
    for spot, box in spots:
        polygons.append(Polygon(points=[Point(x=x, y=y) for x, y in _corners(box)]))
        label = f"{marker} {format_percent(spot.positive_fraction)}"
        labels.append(Label(location=Point(x=box[0], y=box[1]), label=label))
    return PrimitiveItem(style=Style(strokeStyle=colour), polygons=polygons, labels=labels)


def _normalised(points: Sequence[tuple[float, float]], summary: RunSummary) -> list[NormPoint]:
    """Level-0 pixels to Sectra's coordinates, clamped to the slide (numpy: a band has many points)."""
    if len(points) == 0:
        return []
    width = summary.slide_width
    scaled = np.asarray(points, dtype=np.float64).reshape(-1, 2) / width
    scaled = np.clip(scaled, 0.0, [1.0, summary.slide_height / width]).round(_COORD_DIGITS)
    return [(float(x), float(y)) for x, y in scaled.tolist()]


def _normalised_ring(points: Sequence[tuple[float, float]], summary: RunSummary) -> list[NormPoint]:
    """A ring in Sectra's coordinates without repeated points (nor a closing copy of the first)."""
    if len(points) == 0:
        return []
    width = summary.slide_width
    scaled = np.asarray(points, dtype=np.float64).reshape(-1, 2) / width
    scaled = np.clip(scaled, 0.0, [1.0, summary.slide_height / width]).round(_COORD_DIGITS)
    keep = np.ones(len(scaled), dtype=bool)
    keep[1:] = np.any(scaled[1:] != scaled[:-1], axis=1)
    scaled = scaled[keep]
    if len(scaled) > 1 and np.array_equal(scaled[0], scaled[-1]):
        scaled = scaled[:-1]  # a ring given closed: Sectra closes it itself
    return [(float(x), float(y)) for x, y in scaled.tolist()]


def _dedupe(points: Sequence[NormPoint]) -> list[NormPoint]:
    """Drops points equal to the one before (rounding merges neighbours of a fine outline)."""
    kept: list[NormPoint] = []
    for point in points:
        if not kept or point != kept[-1]:
            kept.append(point)
    return kept


def _open_ring(points: Sequence[NormPoint]) -> list[NormPoint]:
    """A ring as Sectra draws it: no repeated neighbours, no closing copy of the first point."""
    ring = _dedupe(points)
    if len(ring) > 1 and ring[0] == ring[-1]:
        ring.pop()
    return ring


def _round(value: float) -> float:
    return round(float(value), _COORD_DIGITS)


def _clamp(value: float, upper: float) -> float:
    return round(min(max(value, 0.0), upper), _COORD_DIGITS)


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= LABEL_CHARS else text[: LABEL_CHARS - 1] + "…"


def _one_line(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= DISPLAY_RESULT_CHARS else text[: DISPLAY_RESULT_CHARS - 1] + "…"
