"""Which TIFF pages are tissue, decided by pyramid geometry; every other page is a glass photograph.

A page is tissue only if it is a level of the pyramid: tiled (the vendors' and
openslide's sign of a level; NDPI's levels are single JPEG strips marked by a
positive source-lens magnification instead), a consistent downsample of level 0
(both sides shrunk by one factor, up to rounding to whole pixels) and smaller
than the level before it; or it is Aperio's thumbnail, which Aperio writes as
the second page, stripped. Anything else (label, macro, overview, a page no
rule explains) is removed, whatever its description says or does not say: a
label with the slide's aspect ratio and no name is still not a tiled level.

The remover uses this; verification deliberately does not (see `verify_tiff`).
Names ("label", "macro", ...) come from the vendor's hints and serve only the
audit trail; they never decide whether a page stays.
"""

from __future__ import annotations

import re

import tifffile

from workers.deidentify.errors import UnsupportedSlideFormat

_HINT = re.compile(r"^\s*(label|macro|overview|thumbnail)\b", re.I)
_NDPI_MAGNIFICATION = 65421
# A scanned slide's level 0 is tens of thousands of pixels across; a lone page under this is a photograph.
_SMALLEST_SLIDE = 1024
_REDUCED_IMAGE = 1  # NewSubfileType bit 0 (TIFF 6.0 Section 8): a reduced-resolution version


def classify_pages(flavour: str, pages: list[tifffile.TiffPage]) -> list[str | None]:
    """For each top-level page: None to keep it as tissue, or the name of the image it is to remove.

    Raises UnsupportedSlideFormat when no page is a plausible level 0 (an untiled picture,
    such as a TIFF that is only a label photograph).
    """
    base = level0_index(flavour, pages)
    level0 = pages[base]
    kinds: list[str | None] = []
    previous_width = None
    for index, page in enumerate(pages):
        if _is_svs_thumbnail(flavour, index, page, level0):
            kinds.append(None)  # not a level: the pyramid's order goes on past it
            continue
        keep = index == base or (index > base and _is_level(flavour, page, level0, previous_width))
        kinds.append(None if keep else _name(flavour, page))
        if keep:
            previous_width = page.imagewidth
    return kinds


def _is_svs_thumbnail(flavour: str, index: int, page: tifffile.TiffPage, level0: tifffile.TiffPage) -> bool:
    """Aperio writes its tissue thumbnail as the second page, in strips (openslide and tifffile agree)."""
    return flavour == "aperio-svs" and index == 1 and not page.is_tiled and is_downsample(page, level0)


def check_sub_level(page: tifffile.TiffPage, level0: tifffile.TiffPage) -> None:
    """A page reached through SubIFDs stays with its parent, so it must itself be a level."""
    if not (page.is_tiled and is_downsample(page, level0)):
        raise UnsupportedSlideFormat("TIFF with an image in its SubIFDs that is not a pyramid level")


def is_downsample(page: tifffile.TiffPage, level0: tifffile.TiffPage) -> bool:
    """Both sides are level 0's divided by one factor >= 1, each rounded to whole pixels."""
    width, height = page.imagewidth, page.imagelength
    full_width, full_height = level0.imagewidth, level0.imagelength
    if not (0 < width <= full_width and 0 < height <= full_height):
        return False
    factor = full_width / width
    # The width was rounded too, so the factor is known only to about factor / width.
    slack = 1.0 + height / width
    return abs(full_height / factor - height) <= slack


def level0_index(flavour: str, pages: list[tifffile.TiffPage]) -> int:
    """Level 0 is page 0, except in Ventana BIF, whose label and thumbnail come first."""
    if not pages:
        raise UnsupportedSlideFormat(f"{flavour} without an image")
    if flavour == "ventana-bif":
        index = next((number for number, page in enumerate(pages) if page.is_tiled), None)
        if index is None:
            raise UnsupportedSlideFormat("Ventana BIF without a tiled pyramid")
        return index
    first = pages[0]
    if flavour == "ndpi":
        if not _ndpi_magnification(first) > 0:
            raise UnsupportedSlideFormat("NDPI whose first page is not a slide level")
        return 0
    if not first.is_tiled:
        raise UnsupportedSlideFormat(f"{flavour} whose first page is not a tiled slide level")
    if len(pages) == 1 and not first.subifds and max(first.imagewidth, first.imagelength) < _SMALLEST_SLIDE:
        raise UnsupportedSlideFormat(f"{flavour} that is one small picture, not a slide")
    return 0


def _is_level(
    flavour: str, page: tifffile.TiffPage, level0: tifffile.TiffPage, previous_width: int | None
) -> bool:
    if not is_downsample(page, level0):
        return False
    if flavour == "ndpi":  # focal planes repeat a level's size; the lens tells levels from the macro
        return _ndpi_magnification(page) > 0
    if not page.is_tiled or (previous_width is not None and page.imagewidth >= previous_width):
        return False
    if flavour == "generic-tiff":  # openslide's generic TIFF convention: later levels say "reduced"
        return bool(page.subfiletype & _REDUCED_IMAGE)
    return True


def _ndpi_magnification(page: tifffile.TiffPage) -> float:
    value = page.tags.valueof(_NDPI_MAGNIFICATION)
    return float(value) if value is not None else 0.0


def _name(flavour: str, page: tifffile.TiffPage) -> str:
    """What a removed page was, for the audit trail; 'unnamed image' when nothing says."""
    description = page.description or ""
    lines = description.splitlines()
    candidates = [str(page.tags.valueof(285) or ""), *lines[:2]]
    if flavour == "ventana-bif" and description.startswith("Label"):
        return "label"
    for candidate in candidates:
        if match := _HINT.match(candidate):
            name = match.group(1).lower()
            return "overview" if name == "thumbnail" else name
    if flavour == "ndpi":
        return "macro" if _ndpi_magnification(page) == -1.0 else "map"
    if flavour == "aperio-svs" and page.subfiletype in (1, 9):
        return "label" if page.subfiletype == 1 else "macro"
    return "unnamed image"


def carries_slide_metadata(flavour: str, index: int, page: tifffile.TiffPage) -> bool:
    """Ventana's IFD 0 is the label *and* holds the iScan XMP (pixel size, magnification) that readers
    look for there. It cannot be unlinked, so its pixels are zeroed and its name blanked instead."""
    if flavour != "ventana-bif" or index != 0:
        return False
    xmp = page.tags.valueof(700)
    return isinstance(xmp, bytes) and b"<iScan" in xmp[:65536]
