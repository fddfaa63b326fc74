"""`workers.geojson`: hotspots as an RFC 7946 FeatureCollection QuPath imports as annotations.

Oracles, none of them ours:
- the official GeoJSON FeatureCollection JSON Schema (tests/fixtures/geojson-FeatureCollection.schema.json,
  verbatim from github.com/geojson/schema, MIT, gh-pages commit f2bc6e8, the file served at
  https://geojson.org/schema/FeatureCollection.json), checked with jsonschema's Draft 7 validator;
- what the schema cannot say (its readme: closed rings, the right-hand rule), written out here from
  RFC 7946 section 3.1.6: a linear ring has >= 4 positions, first = last, exterior counterclockwise
  (positive shoelace area in the coordinates' own plane);
- QuPath's reader (`qupath.lib.io.PathObjectTypeAdapters`, 0.4+): `properties.objectType`
  "annotation", `classification` {"name", "color": [r, g, b] of 0-255 ints}, `measurements` an object
  of name -> number; coordinates level-0 pixels, origin top-left (its "Exporting annotations" page);
- the boxes' corners and areas, computed here from the hotspots the test writes.
"""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sectra_adapter import Hotspot, MarkerSummary
from workers.geojson import feature_collection

SCHEMA = json.loads(
    (Path(__file__).parents[1] / "fixtures" / "geojson-FeatureCollection.schema.json").read_text()
)
jsonschema.Draft7Validator.check_schema(SCHEMA)
VALIDATOR = jsonschema.Draft7Validator(SCHEMA)
MPP = 0.25


def marker(name: str, *boxes: tuple[int, int, int, int, float]) -> MarkerSummary:
    return MarkerSummary(
        marker=name,
        positive_fraction=0.2,
        positive_area_mm2=1.0,
        tissue_area_mm2=5.0,
        mean=0.3,
        p50=0.3,
        p90=0.6,
        p99=0.9,
        hotspots=[Hotspot(x, y, w, h, fraction) for x, y, w, h, fraction in boxes],
    )


def signed_area(ring: list[list[float]]) -> float:
    """The shoelace formula: positive for a counterclockwise ring in the (x, y) plane."""
    return sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in itertools.pairwise(ring)) / 2


def assert_rfc7946_rings(collection: dict[str, Any]) -> None:
    """RFC 7946 section 3.1.6, the part JSON Schema cannot express."""
    for feature in collection["features"]:
        for ring in feature["geometry"]["coordinates"]:
            assert len(ring) >= 4 and ring[0] == ring[-1]
            assert signed_area(ring) > 0, "an exterior ring must be counterclockwise"


def strict_json(collection: dict[str, Any]) -> dict[str, Any]:
    """What a file holds: RFC 8259 JSON has no NaN, so a NaN anywhere fails here."""
    return json.loads(json.dumps(collection, allow_nan=False))


def test_hotspots_become_schema_valid_qupath_annotations_at_their_level0_corners() -> None:
    summaries = [
        marker("CD8", (1000, 2000, 400, 300, 0.75), (0, 0, 400, 400, 0.5)),
        marker("PanCK", (5000, 100, 200, 200, 0.9)),
    ]
    collection = strict_json(feature_collection(summaries, microns_per_pixel=MPP))

    VALIDATOR.validate(collection)
    assert_rfc7946_rings(collection)
    assert collection["type"] == "FeatureCollection" and len(collection["features"]) == 3
    first = collection["features"][0]
    # Level-0 pixels, y down: the box's top-left corner is (x, y), exactly as summarised.
    assert first["geometry"] == {
        "type": "Polygon",
        "coordinates": [[[1000, 2000], [1400, 2000], [1400, 2300], [1000, 2300], [1000, 2000]]],
    }
    props = first["properties"]
    assert props["objectType"] == "annotation"
    assert props["marker"] == "CD8" and props["rank"] == 1 and props["kind"] == "hotspot"
    assert props["positive_fraction"] == 0.75
    assert props["area_mm2"] == pytest.approx(400 * 300 * MPP**2 / 1e6)
    assert props["measurements"] == {"Positive fraction": 0.75, "Area mm^2": props["area_mm2"]}
    classes = {}
    for feature in collection["features"]:
        cls = feature["properties"]["classification"]
        assert set(cls) == {"name", "color"} and isinstance(cls["name"], str)
        assert len(cls["color"]) == 3 and all(isinstance(c, int) and 0 <= c <= 255 for c in cls["color"])
        assert all(isinstance(v, float | int) for v in feature["properties"]["measurements"].values())
        classes[cls["name"]] = tuple(cls["color"])
    assert set(classes) == {"CD8 hotspot", "PanCK hotspot"}
    assert classes["CD8 hotspot"] != classes["PanCK hotspot"], "markers must be told apart"
    assert [f["properties"]["rank"] for f in collection["features"]] == [1, 2, 1]


def test_unknown_pixel_size_leaves_areas_null_and_out_of_the_measurements() -> None:
    summaries = [marker("CD8", (10, 20, 30, 40, 0.5))]
    for mpp in (None, 0.0, math.nan):
        collection = strict_json(feature_collection(summaries, microns_per_pixel=mpp))
        VALIDATOR.validate(collection)
        props = collection["features"][0]["properties"]
        assert props["area_mm2"] is None
        assert props["measurements"] == {"Positive fraction": 0.5}


def test_a_box_without_area_is_no_feature_and_no_hotspots_is_an_empty_valid_collection() -> None:
    collection = feature_collection(
        [marker("CD8", (10, 20, 0, 40, 0.5), (10, 20, 30, 40, 0.5)), marker("Ki67")], microns_per_pixel=MPP
    )
    VALIDATOR.validate(collection)
    assert [f["properties"]["name"] for f in collection["features"]] == ["CD8 hotspot 2"]
    empty = feature_collection([], microns_per_pixel=MPP)
    VALIDATOR.validate(empty)
    assert empty == {"type": "FeatureCollection", "features": []}


def test_the_schema_oracle_rejects_what_rfc_7946_forbids() -> None:
    """The oracle has teeth: a collection our builder must never write fails it."""
    good = feature_collection([marker("CD8", (1, 2, 3, 4, 0.5))], microns_per_pixel=MPP)
    no_properties = json.loads(json.dumps(good))
    del no_properties["features"][0]["properties"]
    short_ring = json.loads(json.dumps(good))
    short_ring["features"][0]["geometry"]["coordinates"][0] = [[0, 0], [1, 0], [0, 0]]
    for broken in (no_properties, short_ring, {"type": "FeatureCollection"}):
        assert not VALIDATOR.is_valid(broken)


@settings(max_examples=200, derandomize=True, deadline=None)
@given(
    x=st.integers(0, 200_000),
    y=st.integers(0, 200_000),
    w=st.integers(1, 20_000),
    h=st.integers(1, 20_000),
    fraction=st.floats(0, 1),
)
def test_any_box_is_a_valid_ring_whose_bounds_and_area_are_the_box(
    x: int, y: int, w: int, h: int, fraction: float
) -> None:
    summaries = [marker("CD3", (x, y, w, h, fraction))]
    collection = strict_json(feature_collection(summaries, microns_per_pixel=MPP))
    VALIDATOR.validate(collection)
    assert_rfc7946_rings(collection)
    (ring,) = collection["features"][0]["geometry"]["coordinates"]
    xs, ys = [p[0] for p in ring], [p[1] for p in ring]
    assert (min(xs), min(ys), max(xs), max(ys)) == (x, y, x + w, y + h)
    assert signed_area(ring) == w * h
