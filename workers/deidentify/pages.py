"""Which TIFF pages are photographs of the glass (label, macro, overview) rather than tissue.

One definition, used both to remove them and to verify that none is left.
Each vendor marks them differently; where a page fits no known role of the
format it is treated as an associated image, because an unexplained picture in
a slide file is more often a label than a tissue level.
"""

from __future__ import annotations

import re

import tifffile

_HINT = re.compile(r"^\s*(label|macro|overview)\b", re.I)
_XML_HINT = re.compile(r"<ImageType>\s*(label|macro|overview)\b", re.I)
_ASPECT_TOLERANCE = 0.02


def associated_kind(
    flavour: str, index: int, page: tifffile.TiffPage, first: tifffile.TiffPage
) -> str | None:
    """'label', 'macro', 'overview', 'map' or 'unnamed image' for a top-level page to remove; None to keep."""
    description = page.description or ""
    lines = description.splitlines()
    for candidate in (str(page.tags.valueof(285) or ""), lines[0] if lines else ""):
        if match := _HINT.match(candidate):
            return match.group(1).lower()
    if match := _XML_HINT.search(description[:65536]):
        return match.group(1).lower()
    if flavour == "aperio-svs":
        return _svs_kind(index, page, lines)
    if flavour == "ndpi":
        magnification = page.tags.valueof(65421)
        if magnification is not None and float(magnification) < 0:
            return "macro" if float(magnification) == -1.0 else "map"
        return None
    if flavour == "ventana-bif":
        wiped_carrier = carries_slide_metadata(flavour, index, page) and not description.strip()
        return None if wiped_carrier else _bif_kind(description)
    if flavour == "philips-tiff":  # its pyramid is tiled; the named label and macro are the rest
        return None if page.is_tiled else "unnamed image"
    return _generic_kind(index, page, first)


def carries_slide_metadata(flavour: str, index: int, page: tifffile.TiffPage) -> bool:
    """Ventana's IFD 0 is the label *and* holds the iScan XMP (pixel size, magnification) that readers
    look for there. It cannot be unlinked, so its pixels are zeroed and its name blanked instead; a
    page 0 with no name and an iScan packet is that wiped carrier (verify checks its pixels are zeros)."""
    if flavour != "ventana-bif" or index != 0:
        return False
    xmp = page.tags.valueof(700)
    return isinstance(xmp, bytes) and b"<iScan" in xmp[:65536]


def _svs_kind(index: int, page: tifffile.TiffPage, lines: list[str]) -> str | None:
    if index == 0:
        return None
    if len(lines) > 1 and (match := _HINT.match(lines[1])):
        return match.group(1).lower()
    # Aperio writes the pyramid tiled and only the thumbnail (page 1) as strips;
    # any later stripped page is an associated image (tifffile's own convention).
    if index >= 2 and not page.is_tiled:
        return "macro" if page.subfiletype == 9 else "label"
    return None


def _bif_kind(description: str) -> str | None:
    if description.startswith(("Label", "Label_Image")):
        return "label"
    if description == "Thumbnail" or description.startswith("Probability"):
        return "overview"
    if "level=" not in description:
        return "unnamed image"
    return None


def _generic_kind(index: int, page: tifffile.TiffPage, first: tifffile.TiffPage) -> str | None:
    """A generic pyramid's levels share level 0's aspect ratio; a label or a glass overview does not."""
    if index == 0:
        return None
    width, height = page.imagewidth, page.imagelength
    expected_width = first.imagewidth * height / max(first.imagelength, 1)
    if abs(width - expected_width) <= max(2.0, _ASPECT_TOLERANCE * width):
        return None
    return "unnamed image"
