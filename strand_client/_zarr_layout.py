"""Reading a result store's metadata: which node holds which marker at which level, and its storage keys.

The proxy cannot list, so every path comes from metadata: the root
`multiscales` manifest (the platform's layout, or OME-NGFF 0.5's
`attributes.ome.multiscales`), an OME-NGFF image group's own manifest, or
an array's `chunk_grid` for its storage objects. Nothing here guesses a path.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from strand_client._geometry import GeometryError, MapTransform, parse_transform


@dataclass(frozen=True, slots=True)
class DatasetRef:
    """One pyramid level of one named image: where its array lives and how it maps onto the slide."""

    name: str
    level: int
    path: str
    # From the multiscale's `axes` and `coordinateTransformations`; None when no scale is stated.
    transform: MapTransform | None = None
    # Why the geometry metadata cannot be used, in plain words; the map is then not summarised.
    geometry_error: str | None = None
    # How many axes the multiscale declares (OME-NGFF: MUST equal the array's dimensions); None if none.
    ndim: int | None = None


def multiscales(attributes: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The `multiscales` entries of a group's attributes, in either the platform's or OME-NGFF 0.5's place."""
    entries = attributes.get("multiscales")
    if not isinstance(entries, list):
        ome = attributes.get("ome")
        entries = ome.get("multiscales") if isinstance(ome, Mapping) else None
    if not isinstance(entries, list):
        return []
    return [entry for entry in entries if isinstance(entry, dict)]


def entry_name(entry: Mapping[str, Any]) -> str | None:
    name = entry.get("name")
    return name if isinstance(name, str) else None


def entry_datasets(entry: Mapping[str, Any], *, name: str, prefix: str = "") -> list[DatasetRef]:
    """Every level an entry names; `prefix` makes an image group's relative paths absolute.

    Entries whose `path` is not a string are dropped rather than guessed at; the
    caller reports a level that is then missing. Geometry metadata that
    contradicts itself is kept as `geometry_error`, for the reader to report.
    """
    refs: list[DatasetRef] = []
    datasets = entry.get("datasets")
    for level, dataset in enumerate(datasets if isinstance(datasets, list) else []):
        path = dataset.get("path") if isinstance(dataset, dict) else None
        if not isinstance(path, str):
            continue
        assert isinstance(dataset, dict)
        full = f"{prefix.rstrip('/')}/{path.strip('/')}" if prefix else path.strip("/")
        try:
            transform, error = parse_transform(entry, dataset), None
        except GeometryError as exc:
            transform, error = None, str(exc)
        axes = entry.get("axes")
        refs.append(
            DatasetRef(
                name=name,
                level=level,
                path=full,
                transform=transform,
                geometry_error=error,
                ndim=len(axes) if isinstance(axes, list) else None,
            )
        )
    return refs


def chunk_keys(array_meta: Mapping[str, Any]) -> Iterator[str]:
    """Every storage object key of a zarr v3 array (relative to the array), from its metadata alone.

    `chunk_grid` is the shard grid on sharded arrays, so this yields one key
    per stored object in either case: what a byte-for-byte mirror needs.
    """
    shape = [int(v) for v in array_meta["shape"]]
    grid_shape = [int(v) for v in array_meta["chunk_grid"]["configuration"]["chunk_shape"]]
    counts = [-(-size // chunk) for size, chunk in zip(shape, grid_shape, strict=True)]
    encoding = array_meta.get("chunk_key_encoding") or {}
    config = encoding.get("configuration") or {}
    if encoding.get("name") == "v2":
        separator = str(config.get("separator", "."))
        for coords in itertools.product(*(range(n) for n in counts)):
            yield separator.join(map(str, coords)) if coords else "0"
        return
    separator = str(config.get("separator", "/"))
    for coords in itertools.product(*(range(n) for n in counts)):
        yield separator.join(["c", *map(str, coords)])


def root_microns_per_pixel(attributes: Mapping[str, Any]) -> float | None:
    """The root `strand.micronsPerPixel` (nested, or as a dotted key), if the store states one."""
    strand = attributes.get("strand")
    value = strand.get("micronsPerPixel") if isinstance(strand, Mapping) else None
    if value is None:
        value = attributes.get("strand.micronsPerPixel")
    try:
        mpp = float(value) if value is not None else None
    except (TypeError, ValueError):
        return None
    return mpp if mpp is not None and math.isfinite(mpp) and mpp > 0 else None
