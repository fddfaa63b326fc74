"""Where a marker map's pixels lie on the slide, from OME-NGFF 0.5 metadata, checked against the slide.

OME-NGFF 0.5 ("multiscales" and "coordinateTransformations" metadata): each
dataset's transformations map array indices to the physical space the
multiscale's `axes` define; a `scale` there is the pixel size in the axis's
`unit` (micrometer, nanometer, ...), not a count of slide pixels. Dataset
transformations apply first, then the multiscale's own, in list order, each
`translation` after its `scale`. Only where the axes name no unit is a scale
read as level-0 slide pixels per map pixel (the spec's fallback: a factor
relative to full resolution).

OME-NGFF 0.5 does not say where inside a pixel its coordinate lies; here an
index is the pixel's top-left corner, so an untranslated map starts at the
slide's origin (the centre convention would move everything by half a map
pixel).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# Micrometres per unit, for every unit OME-NGFF 0.5 lists for "space" axes (UDUNITS-2 names).
SPACE_UNIT_MICRONS: dict[str, float] = {
    "angstrom": 1e-4,
    "attometer": 1e-12,
    "centimeter": 1e4,
    "decimeter": 1e5,
    "exameter": 1e24,
    "femtometer": 1e-9,
    "foot": 304_800.0,
    "gigameter": 1e15,
    "hectometer": 1e8,
    "inch": 25_400.0,
    "kilometer": 1e9,
    "megameter": 1e12,
    "meter": 1e6,
    "micrometer": 1.0,
    "mile": 1_609_344_000.0,
    "millimeter": 1e3,
    "nanometer": 1e-3,
    "parsec": 3.0856775814913673e22,
    "petameter": 1e21,
    "picometer": 1e-6,
    "terameter": 1e18,
    "yard": 914_400.0,
    "yoctometer": 1e-18,
    "yottameter": 1e30,
    "zeptometer": 1e-15,
    "zettameter": 1e27,
}

_ONE_PIXEL = 1.0  # how far (in map pixels, across the slide) two geometries may disagree
_EDGE_FUZZ = 1e-6  # map pixels: float noise when deciding which pixels overlap the slide


class GeometryError(ValueError):
    """The metadata contradicts itself (a non-positive scale, an unknown unit, axes that do not fit)."""


@dataclass(frozen=True, slots=True)
class MapTransform:
    """Array index -> position, per spatial axis (y, x): position = index * scale + translation.

    `units` are the OME-NGFF unit names of y and x, or None when the axes name
    none (then positions are level-0 slide pixels). `text` says what the
    metadata stated, for messages a person reads.
    """

    scale: tuple[float, float]
    translation: tuple[float, float]
    units: tuple[str, str] | None
    text: str

    def pixel_microns(self) -> tuple[float, float] | None:
        """The map pixel's size in µm (y, x), when the axes give a unit."""
        if self.units is None:
            return None
        return (
            self.scale[0] * SPACE_UNIT_MICRONS[self.units[0]],
            self.scale[1] * SPACE_UNIT_MICRONS[self.units[1]],
        )

    def origin_microns(self) -> tuple[float, float] | None:
        if self.units is None:
            return None
        return (
            self.translation[0] * SPACE_UNIT_MICRONS[self.units[0]],
            self.translation[1] * SPACE_UNIT_MICRONS[self.units[1]],
        )


def parse_transform(entry: Mapping[str, Any], dataset: Mapping[str, Any]) -> MapTransform | None:
    """The composed transform of one dataset of one multiscale; None when no `scale` is stated.

    Raises `GeometryError` in plain words when the metadata cannot be right.
    """
    axes = entry.get("axes")
    ndim, names, units = _axes(axes)
    steps = [
        *_transforms(dataset.get("coordinateTransformations"), ndim, "the dataset's"),
        *_transforms(entry.get("coordinateTransformations"), ndim, "the multiscale's"),
    ]
    if not any(kind == "scale" for kind, _ in steps):
        return None
    scale, shift = [1.0, 1.0], [0.0, 0.0]
    for kind, (vy, vx) in steps:
        if kind == "scale":
            scale = [scale[0] * vy, scale[1] * vx]
            shift = [shift[0] * vy, shift[1] * vx]
        else:
            shift = [shift[0] + vy, shift[1] + vx]
    if units is None:
        unit_text = " (no unit)"
    elif units[0] == units[1]:
        unit_text = f" {units[0]}"
    else:
        unit_text = f" {units[0]} x {units[1]}"
    text = f"scale {_fmt(scale[0])} x {_fmt(scale[1])}{unit_text}"
    if shift != [0.0, 0.0]:
        text += f", translation {_fmt(shift[0])} x {_fmt(shift[1])}"
    return MapTransform((scale[0], scale[1]), (shift[0], shift[1]), units, f"{text} ({names})")


def _axes(axes: Any) -> tuple[int | None, str, tuple[str, str] | None]:
    """(number of axes, "y, x" names, (y unit, x unit) or None) of a multiscale's `axes`."""
    if axes is None:
        return None, "y, x", None
    if not isinstance(axes, list) or len(axes) < 2:
        raise GeometryError("its `axes` are not a list of at least two axes")
    spatial = axes[-2:]
    names: list[str] = []
    units: list[str | None] = []
    for axis in spatial:
        if isinstance(axis, str):
            names.append(axis)
            units.append(None)
            continue
        if not isinstance(axis, Mapping):
            raise GeometryError(f"its axis {axis!r} is neither a name nor an axis object")
        name = str(axis.get("name", "?"))
        kind = axis.get("type")
        if kind is not None and kind != "space":
            raise GeometryError(f"its last two axes must be spatial (y, x), but {name} is of type {kind!r}")
        unit = axis.get("unit")
        if unit is not None and unit not in SPACE_UNIT_MICRONS:
            raise GeometryError(
                f"its {name} axis has the unit {unit!r}, which is not an OME-NGFF unit of length"
            )
        names.append(name)
        units.append(unit)
    if (units[0] is None) != (units[1] is None):
        raise GeometryError(f"its {names[0]} and {names[1]} axes must both have a unit or both have none")
    pair = (units[0], units[1]) if units[0] is not None and units[1] is not None else None
    return len(axes), ", ".join(names), pair


def _transforms(raw: Any, ndim: int | None, whose: str) -> list[tuple[str, tuple[float, float]]]:
    """(kind, (y, x) values) of one `coordinateTransformations` list, validated."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise GeometryError(f"{whose} coordinateTransformations is not a list")
    steps: list[tuple[str, tuple[float, float]]] = []
    for transform in raw:
        kind = transform.get("type") if isinstance(transform, Mapping) else None
        if kind == "identity":
            continue
        if kind not in ("scale", "translation"):
            raise GeometryError(
                f"{whose} coordinateTransformations holds {transform!r}; "
                "only scale and translation are allowed"
            )
        assert isinstance(transform, Mapping)
        values = transform.get(kind)
        if values is None and "path" in transform:
            raise GeometryError(
                f"{whose} {kind} is stored as binary data at a path, which this reader does not support"
            )
        if not isinstance(values, list) or len(values) < 2:
            raise GeometryError(f"{whose} {kind} is {values!r}, not a list of numbers")
        if ndim is not None and len(values) != ndim:
            raise GeometryError(
                f"{whose} {kind} has {len(values)} values but the axes declare {ndim} dimensions"
            )
        try:
            vy, vx = float(values[-2]), float(values[-1])
        except (TypeError, ValueError):
            raise GeometryError(f"{whose} {kind} {values!r} holds something that is not a number") from None
        if not (math.isfinite(vy) and math.isfinite(vx)):
            raise GeometryError(f"{whose} {kind} {values!r} is not finite")
        if kind == "scale" and not (vy > 0 and vx > 0):
            raise GeometryError(
                f"{whose} scale {values!r} is zero or negative; a pixel size must be positive"
            )
        steps.append((kind, (vy, vx)))
    return steps


@dataclass(frozen=True, slots=True)
class SlideGeometry:
    """How one map lies on the slide, per axis (y, x), and where that came from.

    `scale` is level-0 slide pixels per map pixel, `offset` the slide pixel
    where the map's first pixel starts, `pixel_um` a map pixel's size in µm
    (NaN when nothing says). `mismatch` is set, in words naming both figures,
    when the results' metadata disagreed with the slide and slide size / map
    size was used instead. `padded` says the metadata was accepted only
    because the map may be padded past the slide: a reader that then finds
    data beyond the slide must ask again with `data_beyond_slide`.
    """

    scale: tuple[float, float]
    offset: tuple[float, float]
    pixel_um: tuple[float, float]
    source: str
    mismatch: str | None = None
    padded: bool = False

    def slide_window(
        self, map_shape: tuple[int, int], slide_size: tuple[int, int]
    ) -> tuple[int, int, int, int]:
        """(row0, row1, col0, col1): the map pixels over the slide (all of them when its size is unknown).

        A map padded beyond the slide (the platform pads to whole shards)
        holds no slide there, so those pixels are not tissue.
        """
        spans = []
        for axis in (0, 1):
            extent, size = map_shape[axis], slide_size[axis]
            if size <= 0:
                spans += [0, extent]
                continue
            scale, offset = self.scale[axis], self.offset[axis]
            first = math.floor(-offset / scale + _EDGE_FUZZ)
            last = math.ceil((size - offset) / scale - _EDGE_FUZZ)
            spans += [min(max(first, 0), extent), min(max(last, 0), extent)]
        return spans[0], spans[1], spans[2], spans[3]


def resolve_geometry(
    transform: MapTransform | None,
    *,
    map_shape: tuple[int, int],
    storage_block: tuple[int, int],
    downsample: float,
    root_mpp: float | None,
    slide_mpp: float,
    slide_size: tuple[int, int],
    data_beyond_slide: bool = False,
) -> SlideGeometry:
    """Choose the map's geometry (DESIGN.md "Strand results", Geometry) and cross-check it against the slide.

    Sources, first that applies: the map's `coordinateTransformations`
    (physical when the axes give a unit, divided by the slide's µm per pixel;
    else level-0 pixels); the root `strand.micronsPerPixel` (level 0, times
    `downsample`); slide size / map size. `slide_size` and `map_shape` are
    (height, width); 0 or a non-finite `slide_mpp` means unknown.
    `data_beyond_slide` (the map holds values past where the slide ends) rules
    out reading the excess as padding.
    """
    mpp = slide_mpp if slide_mpp > 0 and math.isfinite(slide_mpp) else math.nan
    candidate: tuple[tuple[float, float], tuple[float, float], str] | None = None
    stated_um: tuple[float, float] | None = None
    if transform is not None:
        stated_um = transform.pixel_microns()
        origin_um = transform.origin_microns()
        if stated_um is None:
            candidate = (
                transform.scale,
                transform.translation,
                f"coordinateTransformations {transform.text}",
            )
        elif origin_um is not None and math.isfinite(mpp):
            candidate = (
                (stated_um[0] / mpp, stated_um[1] / mpp),
                (origin_um[0] / mpp, origin_um[1] / mpp),
                f"coordinateTransformations {transform.text}",
            )
    elif root_mpp is not None:
        stated_um = (root_mpp * downsample, root_mpp * downsample)
        if math.isfinite(mpp):
            candidate = (
                (stated_um[0] / mpp, stated_um[1] / mpp),
                (0.0, 0.0),
                f"strand.micronsPerPixel {_fmt(root_mpp)} µm at level 0",
            )
    from_sizes = _from_sizes(map_shape, slide_size)
    if candidate is not None:
        scale, offset, source = candidate
        pixel_um = (mpp * scale[0], mpp * scale[1]) if math.isfinite(mpp) else (math.nan, math.nan)
        if from_sizes is None:
            return SlideGeometry(scale, offset, pixel_um, source)
        fit = _fit(scale, offset, map_shape, storage_block, slide_size)
        if fit == "exact" or (fit == "padded" and not data_beyond_slide):
            return SlideGeometry(scale, offset, pixel_um, source, padded=fit == "padded")
        why = "; the map holds data past the slide's edge, so that is no padding" if fit == "padded" else ""
        mismatch = (
            f"the results' {source} puts {_fmt(scale[0])} x {_fmt(scale[1])} slide pixels "
            f"in a map pixel{why}, "
            f"but slide size / map size ({slide_size[0]} x {slide_size[1]} px over {map_shape[0]} x "
            f"{map_shape[1]}) gives {_fmt(from_sizes[0])} x {_fmt(from_sizes[1])}"
        )
        return SlideGeometry(from_sizes, (0.0, 0.0), _um(mpp, from_sizes), "slide size / map size", mismatch)
    if from_sizes is not None:
        pixel_um = _um(mpp, from_sizes) if math.isfinite(mpp) else (stated_um or (math.nan, math.nan))
        return SlideGeometry(from_sizes, (0.0, 0.0), pixel_um, "slide size / map size")
    # Nothing relates the map to the slide: boxes stay in map pixels.
    return SlideGeometry((1.0, 1.0), (0.0, 0.0), stated_um or (math.nan, math.nan), "none")


def _from_sizes(map_shape: tuple[int, int], slide_size: tuple[int, int]) -> tuple[float, float] | None:
    if min(slide_size) <= 0 or min(map_shape) <= 0:
        return None
    return slide_size[0] / map_shape[0], slide_size[1] / map_shape[1]


def _um(mpp: float, scale: tuple[float, float]) -> tuple[float, float]:
    return mpp * scale[0], mpp * scale[1]


def _fit(
    scale: tuple[float, float],
    offset: tuple[float, float],
    map_shape: tuple[int, int],
    block: tuple[int, int],
    slide_size: tuple[int, int],
) -> str:
    """ "exact" when the slide, placed by this geometry, ends where the map does (within one map pixel).

    "padded" when the map instead runs on past the slide to the end of its
    last storage block (the platform pads maps to whole shards): it is a whole
    number of blocks and the slide ends inside the last one. Else "no".
    """
    fits = []
    for axis in (0, 1):
        spans = (slide_size[axis] - offset[axis]) / scale[axis]  # the slide's far edge, in map pixels
        extent, step = map_shape[axis], max(1, block[axis])
        if abs(spans - extent) <= _ONE_PIXEL:
            fits.append("exact")
        elif extent % step == 0 and extent - step < spans <= extent + _ONE_PIXEL:
            fits.append("padded")
        else:
            return "no"
    return "padded" if "padded" in fits else "exact"


def _fmt(value: float) -> str:
    return f"{value:.4g}"
