"""The hotspot review: a Sectra patch gallery of every drawn hotspot, and reading the pathologist's tags back.

Sectra shows a `patchCollection` result as a gallery: one tile per `Patch`, centred on `position`
(Sectra's coordinates, normalised by slide width), `patchSize` screen pixels wide, read at
`magnification` (the objective power, 10 = 10x), ordered by `sortKeyValue`. Each patch carries
`tag`, an index into `tags`, which the pathologist changes; an `Action` is a button whose `state`
Sectra sets to 1 when it is pressed; `statuses["allowVerify"]` decides whether the result may be
signed off. A retag or a button press comes back as a `modify` whose `input` is the stored result
with the new tags (Sectra's `dpat_imageanalysisapi_sdk`, `examples/python/ia_app_basic`).

The gallery's `data.context` lists, by patch index, the marker and level-0 box of each patch, so a
`modify` maps each tag back to its hotspot without the bridge's database.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from sectra_client.schemas import (
    Patch,
    PatchContent,
    PatchResultContent,
    Point,
    Polygon,
    Result,
    ResultData,
    Status,
)
from sectra_client.schemas.results import Action

from sectra_adapter._results import _allocate_hotspots, _corners, _one_line, format_percent
from sectra_adapter._summary import Hotspot, RunSummary

REVIEW_KIND = "hotspot-review"
REVIEW_TAGS = ("Hotspot", "Agree", "Artefact")
RECOMPUTE_ACTION = "recompute-without-artefacts"
PATCH_SIZE = 256  # screen pixels per gallery tile
_PRESSED = 1  # Action.state Sectra sends for a pressed button
_POSITION_TOLERANCE = 1e-6  # normalised units: a patch's centre as we wrote it, after a JSON round trip

Verdict = Literal["untouched", "agree", "artefact"]
_VERDICTS: dict[str, Verdict] = {"Hotspot": "untouched", "Agree": "agree", "Artefact": "artefact"}


@dataclass(frozen=True, slots=True)
class ReviewedPatch:
    """One gallery patch as the pathologist left it."""

    index: int
    marker: str
    hotspot: Hotspot  # level-0 box and positive fraction, as the gallery was built from
    verdict: Verdict


@dataclass(frozen=True, slots=True)
class HotspotReview:
    """What the pathologist said about each hotspot, read from a gallery result Sectra sent back."""

    patches: tuple[ReviewedPatch, ...]
    recompute_requested: bool  # the "Recompute without artefacts" button was pressed

    @property
    def agreed(self) -> tuple[ReviewedPatch, ...]:
        return tuple(p for p in self.patches if p.verdict == "agree")

    @property
    def artefacts(self) -> tuple[ReviewedPatch, ...]:
        return tuple(p for p in self.patches if p.verdict == "artefact")

    @property
    def untouched(self) -> tuple[ReviewedPatch, ...]:
        return tuple(p for p in self.patches if p.verdict == "untouched")

    @property
    def artefact_boxes(self) -> tuple[Hotspot, ...]:
        """The boxes tagged Artefact, each once (a box two markers share is one area of tissue)."""
        unique: dict[tuple[int, int, int, int], Hotspot] = {}
        for patch in self.artefacts:
            spot = patch.hotspot
            unique.setdefault((spot.x, spot.y, spot.width, spot.height), spot)
        return tuple(unique.values())


def hotspot_review_result(
    summary: RunSummary,
    *,
    context: Mapping[str, Any] | None = None,
    max_patches: int = 200,
    microns_per_pixel: float | None = None,
) -> Result:
    """The gallery of every hotspot `build_final_result` draws (same `max_patches` budget), strongest first.

    Every patch starts tagged "Hotspot"; verifying is blocked until the review is answered.
    `microns_per_pixel` (level 0) sets the magnification so the largest box fills a tile; without
    it 0.25 µm/px (a 40x scan) is assumed. A summary without drawn hotspots (none found, or
    `overlay="bands"`) gives an empty gallery: the caller decides whether to post it.
    """
    if summary.slide_width <= 0 or summary.slide_height <= 0:
        raise ValueError("slide width and height must be positive to place hotspots")
    # The hotspots `build_final_result` draws: none when the app draws bands only.
    drawn = _allocate_hotspots(summary, max_patches if summary.overlay != "bands" else 0)
    entries = sorted(
        ((marker, spot, box) for marker, spots in drawn.items() for spot, box in spots),
        key=lambda entry: entry[1].positive_fraction,
        reverse=True,
    )
    patches = [
        Patch(
            tag=0,
            position=Point(x=round((x0 + x1) / 2, 6), y=round((y0 + y1) / 2, 6)),
            sortKeyValue=spot.positive_fraction,
        )
        for _, spot, (x0, y0, x1, y1) in entries
    ]
    polygons = [Polygon(points=[Point(x=x, y=y) for x, y in _corners(box)]) for _, _, box in entries]
    markers = sorted({marker for marker, _, _ in entries}, key=[m.marker for m in summary.markers].index)
    largest = max((max(spot.width, spot.height) for _, spot, _ in entries), default=PATCH_SIZE)
    content = PatchContent(
        description=(
            f"Hotspots of {', '.join(markers) or 'no marker'}: tag each Agree or Artefact, "
            "then press Recompute without artefacts"
        ),
        polygons=polygons,
        patches=patches,
        actions=[
            Action(
                id=RECOMPUTE_ACTION,
                state=0,
                name="Recompute without artefacts",
                tooltip="Recompute the figures leaving out the hotspots tagged Artefact",
            )
        ],
        tags=list(REVIEW_TAGS),
        patchSize=PATCH_SIZE,
        magnification=_magnification(largest, microns_per_pixel),
        statuses={"allowVerify": Status(value=False, message="Review the hotspots first")},
    )
    index = [
        {
            "marker": marker,
            "x": spot.x,
            "y": spot.y,
            "width": spot.width,
            "height": spot.height,
            "fraction": spot.positive_fraction,
            "at": [patch.position.x, patch.position.y],
        }
        for (marker, spot, _), patch in zip(entries, patches, strict=True)
    ]
    count = len(entries)
    table: dict[str, str | int | float] = {"Status": "Awaiting review", "Hotspots to review": count}
    for marker in markers:
        table[f"{marker} hotspots"] = sum(1 for m, _, _ in entries if m == marker)
    table["How to review"] = "Tag each hotspot Agree or Artefact, then press Recompute without artefacts"
    table["Strand job"] = summary.job_id
    table["App version"] = summary.app_version
    return Result(
        slideId=summary.slide_id,
        displayResult=f"Hotspot review: {count} hotspot{'s' if count != 1 else ''} to review",
        applicationVersion=summary.app_version,
        data=ResultData(
            context={**(context or {}), "kind": REVIEW_KIND, "jobId": summary.job_id, "patches": index},
            result=PatchResultContent(content=content),
        ),
        displayProperties=table,
    )


def read_review(result: Result) -> HotspotReview:
    """Decode a gallery Sectra sent back (a `modify`'s `input`, a `ResultResponse`, or a `Result`).

    Each patch is matched to the hotspot at the same index of `data.context["patches"]`; if Sectra
    reordered the patches, by its centre instead. Raises ValueError, naming the problem, for a
    result that is not one of our galleries or whose patches no longer match it.
    """
    content = result.data.result
    if not isinstance(content, PatchResultContent):
        raise ValueError("not a hotspot review: the result is not a patch gallery")
    context = result.data.context
    if context.get("kind") != REVIEW_KIND:
        raise ValueError(f"not a hotspot review: its context kind is {context.get('kind')!r}")
    spots = _context_hotspots(context.get("patches"))
    gallery = content.content
    if len(gallery.patches) != len(spots):
        raise ValueError(f"the gallery has {len(gallery.patches)} patches but was built with {len(spots)}")
    unused = set(range(len(spots)))
    reviewed: list[ReviewedPatch] = []
    for position, patch in enumerate(gallery.patches):
        index = _match(patch, position, spots, unused)
        unused.discard(index)
        entry = spots[index]
        reviewed.append(
            ReviewedPatch(index, entry.marker, entry.hotspot, _verdict(patch, position, gallery.tags))
        )
    reviewed.sort(key=lambda p: p.index)
    pressed = any(a.id == RECOMPUTE_ACTION and a.state == _PRESSED for a in gallery.actions)
    return HotspotReview(tuple(reviewed), pressed)


def reviewed_result(previous: Result, review: HotspotReview, *, message: str | None = None) -> Result:
    """The gallery after a review: the pathologist's tags kept, the button released, verifying allowed.

    `message` (default: "3 kept, 1 artefact: figures recomputed") is the status shown beside the
    verify button and in the annotation list. Returns a `Result`: the caller adds the current
    `versionId` to update it (`AdaptedResult(**result.model_dump(), versionId=...)`).
    """
    content = previous.data.result
    if not isinstance(content, PatchResultContent):
        raise ValueError("not a hotspot review: the result is not a patch gallery")
    kept = len(review.patches) - len(review.artefacts)
    rejected = len(review.artefacts)
    if message is None:
        message = (
            f"{kept} kept, {rejected} artefact{'s' if rejected != 1 else ''}: figures recomputed"
            if rejected
            else f"All {kept} hotspot{'s' if kept != 1 else ''} kept: figures unchanged"
        )
    gallery = content.content.model_copy(
        update={
            "actions": [a.model_copy(update={"state": 0}) for a in content.content.actions],
            "statuses": {**content.content.statuses, "allowVerify": Status(value=True, message=message)},
        },
        deep=True,
    )
    table = dict(previous.displayProperties)
    table["Status"] = "Reviewed"
    table["Review"] = (
        f"{len(review.agreed)} agreed, {rejected} tagged Artefact, {len(review.untouched)} not reviewed"
    )
    table.pop("How to review", None)
    excluded = [f"{p.marker} {format_percent(p.hotspot.positive_fraction)}" for p in review.artefacts]
    if excluded:
        table["Excluded as artefact"] = ", ".join(excluded)[:200]
    return Result(
        slideId=previous.slideId,
        displayResult=_one_line(f"Hotspots reviewed, {message}"),
        applicationVersion=previous.applicationVersion,
        attachments=list(previous.attachments),
        data=ResultData(
            context={**previous.data.context, "review": _review_counts(review)},
            result=PatchResultContent(content=gallery),
        ),
        displayProperties=table,
    )


def _review_counts(review: HotspotReview) -> dict[str, int]:
    return {
        "agreed": len(review.agreed),
        "artefacts": len(review.artefacts),
        "untouched": len(review.untouched),
    }


def _magnification(largest_px: int, microns_per_pixel: float | None) -> float:
    """Objective power at which a box `largest_px` level-0 pixels wide fills one `PATCH_SIZE` tile."""
    mpp = microns_per_pixel if microns_per_pixel and microns_per_pixel > 0 else 0.25
    scan_power = 10.0 / mpp  # the convention scanners follow: 40x is about 0.25 µm per pixel
    power = scan_power * PATCH_SIZE / max(1, largest_px)
    return round(min(max(power, 0.5), scan_power), 2)


@dataclass(frozen=True, slots=True)
class _Entry:
    """One line of the gallery's context: which hotspot a patch shows, and where we centred it."""

    marker: str
    hotspot: Hotspot
    at: tuple[float, float] | None


def _context_hotspots(entries: object) -> list[_Entry]:
    if not isinstance(entries, Sequence) or isinstance(entries, str):
        raise ValueError("not a hotspot review: its context lists no patches")
    spots: list[_Entry] = []
    for number, entry in enumerate(entries):
        try:
            if not isinstance(entry, Mapping) or not isinstance(entry["marker"], str):
                raise TypeError
            x, y, width, height = (entry[key] for key in ("x", "y", "width", "height"))
            if not all(isinstance(v, int) and not isinstance(v, bool) for v in (x, y, width, height)):
                raise TypeError
            fraction = float(entry.get("fraction", math.nan))
            at = entry.get("at")
            centre = (float(at[0]), float(at[1])) if at is not None else None
        except (KeyError, TypeError, ValueError, IndexError):
            raise ValueError(f"the gallery's context entry {number} is not a marker and a box") from None
        spots.append(_Entry(entry["marker"], Hotspot(x, y, width, height, fraction), centre))
    return spots


def _match(patch: Patch, position: int, spots: Sequence[_Entry], unused: set[int]) -> int:
    """The context entry a returned patch shows: the same index if it agrees, else by centre and sort key."""

    def shows(index: int) -> bool:
        entry = spots[index]
        if entry.at is None:
            return True  # a context without centres: trust the order
        same_place = (
            abs(patch.position.x - entry.at[0]) <= _POSITION_TOLERANCE
            and abs(patch.position.y - entry.at[1]) <= _POSITION_TOLERANCE
        )
        # Two markers may share a box; the sort key (the marker's fraction there) tells them apart.
        fraction = entry.hotspot.positive_fraction
        return same_place and (math.isnan(fraction) or abs(patch.sortKeyValue - fraction) <= 1e-9)

    if position in unused and shows(position):
        return position
    for index in sorted(unused):
        if shows(index):
            return index
    raise ValueError(
        f"patch {position} at ({patch.position.x}, {patch.position.y}) is not one of the gallery's hotspots"
    )


def _verdict(patch: Patch, position: int, tags: Sequence[str]) -> Verdict:
    if not 0 <= patch.tag < len(tags):
        raise ValueError(f"patch {position} has tag {patch.tag}, but the gallery offers {len(tags)} tags")
    name = tags[patch.tag]
    if name not in _VERDICTS:
        raise ValueError(f"patch {position} is tagged {name!r}, which the review does not offer")
    return _VERDICTS[name]
