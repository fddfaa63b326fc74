"""A run's hotspots as a GeoJSON FeatureCollection (RFC 7946) that QuPath imports as annotations.

Researchers take the bridge's figures into QuPath (File > Import objects from
file). What QuPath reads, from its own reader (`qupath.lib.io.PathObjectTypeAdapters` and
`GsonTools.PathClassTypeAdapter`, QuPath 0.4+) and its "Exporting annotations" documentation:
- coordinates are pixels of the full-resolution image (level 0), origin at its
  top-left corner, y pointing down: exactly the summary's hotspot boxes, so no
  conversion (Sectra's width-normalised coordinates are never used here);
- `properties.objectType` `"annotation"` makes an annotation (not a detection);
- `properties.classification` `{"name": ..., "color": [r, g, b]}` is its class (QuPath
  takes this object form only with both keys present, so `color` is always written);
- `properties.name` is the object's name; `properties.measurements`, an object of
  name -> number, fills its measurement table (non-numbers are not allowed there).
Other properties (`marker`, `kind`, `rank`, `positive_fraction`, `area_mm2`) are
kept for other GeoJSON readers; QuPath ignores what it does not know.

RFC 7946 rules followed: section 3.1.6, a Polygon's exterior ring is closed (first
position = last), has at least four positions and is counterclockwise in the
coordinates' own plane (positive shoelace area; on a y-down screen it is drawn
clockwise); section 3.2, every Feature has `geometry` and `properties`. Regions and contour bands are
not in the summary yet; when they are, they join here as further features.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from sectra_adapter import Hotspot, MarkerSummary, colour_for

OBJECT_TYPE = "annotation"  # QuPath's name for an annotation object
HOTSPOT = "hotspot"


def feature_collection(
    markers: Sequence[MarkerSummary], *, microns_per_pixel: float | None
) -> dict[str, Any]:
    """Every marker's hotspots, best first, as one FeatureCollection in level-0 slide pixels.

    `microns_per_pixel` is the slide's (level 0); unknown (None or 0) leaves the
    areas null. Each marker keeps the colour its Sectra drawing has (its index
    in the summary picks it), so QuPath and Sectra show one marker alike.
    """
    features: list[dict[str, Any]] = []
    for index, summary in enumerate(markers):
        colour = rgb(colour_for(index))
        for rank, hotspot in enumerate(summary.hotspots, start=1):
            if hotspot.width > 0 and hotspot.height > 0:  # a box without area is no annotation
                features.append(hotspot_feature(summary.marker, rank, hotspot, colour, microns_per_pixel))
    return {"type": "FeatureCollection", "features": features}


def hotspot_feature(
    marker: str, rank: int, hotspot: Hotspot, colour: tuple[int, int, int], microns_per_pixel: float | None
) -> dict[str, Any]:
    """One hotspot box as a Polygon Feature with the properties QuPath reads (see the module's notes)."""
    area_mm2 = box_area_mm2(hotspot, microns_per_pixel)
    fraction = hotspot.positive_fraction if math.isfinite(hotspot.positive_fraction) else None
    measurements = {"Positive fraction": fraction, "Area mm^2": area_mm2}
    return {
        "type": "Feature",
        "geometry": {"type": "Polygon", "coordinates": [box_ring(hotspot)]},
        "properties": {
            "objectType": OBJECT_TYPE,
            "name": f"{marker} {HOTSPOT} {rank}",
            "classification": {"name": f"{marker} {HOTSPOT}", "color": list(colour)},
            "measurements": {name: value for name, value in measurements.items() if value is not None},
            "marker": marker,
            "kind": HOTSPOT,
            "rank": rank,
            "positive_fraction": fraction,
            "area_mm2": area_mm2,
        },
    }


def box_ring(box: Hotspot) -> list[list[int]]:
    """The box's closed exterior ring, counterclockwise in (x, y) (RFC 7946 section 3.1.6)."""
    left, top, right, bottom = box.x, box.y, box.x + box.width, box.y + box.height
    return [[left, top], [right, top], [right, bottom], [left, bottom], [left, top]]


def box_area_mm2(box: Hotspot, microns_per_pixel: float | None) -> float | None:
    """The box's area on the slide in mm², or None when the slide's pixel size is unknown."""
    if microns_per_pixel is None or not math.isfinite(microns_per_pixel) or microns_per_pixel <= 0:
        return None
    return box.width * box.height * microns_per_pixel**2 / 1e6


def rgb(colour: str) -> tuple[int, int, int]:
    """`#RRGGBB` as the `[r, g, b]` integers (0-255) QuPath's `color` takes."""
    value = colour.removeprefix("#")
    if len(value) != 6:
        raise ValueError(f"not a #RRGGBB colour: {colour!r}")
    return int(value[0:2], 16), int(value[2:4], 16), int(value[4:6], 16)
