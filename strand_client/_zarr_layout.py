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


@dataclass(frozen=True, slots=True)
class DatasetRef:
    """One pyramid level of one named image: where its array lives and how it maps onto the slide."""

    name: str
    level: int
    path: str
    # (row, column) slide pixels per map pixel, from `coordinateTransformations`; None when not stated.
    scale: tuple[float, float] | None


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
    caller reports a level that is then missing.
    """
    outer = _scale(entry.get("coordinateTransformations"))
    refs: list[DatasetRef] = []
    datasets = entry.get("datasets")
    for level, dataset in enumerate(datasets if isinstance(datasets, list) else []):
        path = dataset.get("path") if isinstance(dataset, dict) else None
        if not isinstance(path, str):
            continue
        inner = _scale(dataset.get("coordinateTransformations"))
        scale = inner
        if inner is not None and outer is not None:
            scale = (inner[0] * outer[0], inner[1] * outer[1])
        full = f"{prefix.rstrip('/')}/{path.strip('/')}" if prefix else path.strip("/")
        refs.append(DatasetRef(name=name, level=level, path=full, scale=scale))
    return refs


def _scale(transforms: Any) -> tuple[float, float] | None:
    """The (row, column) factors of a `scale` transformation (its last two axes are y, x)."""
    if not isinstance(transforms, list):
        return None
    for transform in transforms:
        if not isinstance(transform, dict) or transform.get("type") != "scale":
            continue
        values = transform.get("scale")
        if isinstance(values, list) and len(values) >= 2:
            try:
                sy, sx = float(values[-2]), float(values[-1])
            except (TypeError, ValueError):
                return None
            if math.isfinite(sy) and math.isfinite(sx) and sy > 0 and sx > 0:
                return sy, sx
    return None


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
