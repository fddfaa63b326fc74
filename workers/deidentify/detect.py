"""Tell what kind of slide the staged files are, from their bytes first and their names second.

The answer decides which de-identifier runs, so a file we cannot place is
`unrecognised` and refused: guessing "probably a plain TIFF" would send a
vendor format's label through untouched.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import tifffile

from workers.deidentify.errors import UnsupportedSlideFormat
from workers.deidentify.pages import level0_index

TIFF_FLAVOURS = ("aperio-svs", "generic-tiff", "ndpi", "philips-tiff", "ventana-bif")
DICOM = "dicom"
MRXS = "MRXS"  # 3DHISTECH MIRAX: a .mrxs file and a directory of Slidedat.ini, Index.dat, Data*.dat
UNRECOGNISED = "unrecognised"
NOT_A_SLIDE = "TIFF without a tiled slide level"

_EXTENSIONS = {
    "aperio-svs": ".svs",
    "generic-tiff": ".tiff",
    "ndpi": ".ndpi",
    "philips-tiff": ".tiff",
    "ventana-bif": ".bif",
    DICOM: ".dcm",
}
_TIFF_MAGIC = (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+")
# Multi-file or container formats we recognise but cannot de-identify (yet): refused by name.
_BY_SUFFIX = {
    ".vsi": "VSI",
    ".ets": "VSI",
    ".czi": "CZI",
    ".isyntax": "iSyntax",
    ".scn": "Leica SCN",
    ".kfb": "KFB",
}


@dataclass(frozen=True)
class SlideKind:
    name: str  # "aperio-svs", ..., "dicom", "MRXS", or a display name such as "VSI" when unsupported
    supported: bool
    extension: str = ""  # for neutral output names; "" keeps the staged file's suffix

    @property
    def is_tiff(self) -> bool:
        return self.name in TIFF_FLAVOURS


def detect(files: Sequence[Path]) -> SlideKind:
    if not files:
        raise ValueError("no staged files to de-identify")
    for path in files:
        if path.name.lower() == "slidedat.ini" or path.suffix.lower() == ".mrxs":
            return SlideKind(MRXS, supported=True, extension=".mrxs")
        if named := _BY_SUFFIX.get(path.suffix.lower()):
            return SlideKind(named, supported=False, extension=path.suffix.lower())
    heads = [_head(path) for path in files]
    if all(head[128:132] == b"DICM" for head in heads):
        return SlideKind(DICOM, supported=True, extension=_EXTENSIONS[DICOM])
    if heads[0].startswith(b"ZISRAWFILE"):
        return SlideKind("CZI", supported=False)
    if len(files) == 1 and heads[0][:4] in _TIFF_MAGIC:
        flavour = tiff_flavour(files[0])
        if flavour in TIFF_FLAVOURS and not _has_slide_level(files[0], flavour):
            return SlideKind(NOT_A_SLIDE, supported=False)
        return SlideKind(flavour, supported=flavour in TIFF_FLAVOURS, extension=_EXTENSIONS.get(flavour, ""))
    return SlideKind(UNRECOGNISED, supported=False)


def tiff_flavour(path: Path) -> str:
    """tifffile's own format flags, read from the first page; NDPI retried with 64-bit pointers."""
    for as_ndpi in (False, True):
        try:
            with tifffile.TiffFile(path, is_ndpi=as_ndpi) as tif:
                first = tif.pages.first
                if first.is_ndpi:
                    return "ndpi"
                if as_ndpi:
                    return UNRECOGNISED
                return _flavour_of(tif)
        except (tifffile.TiffFileError, ValueError, IndexError, OSError):
            continue
    return UNRECOGNISED


def _has_slide_level(path: Path, flavour: str) -> bool:
    """A TIFF whose first image is no plausible level 0 (untiled: a label photograph, say) is no slide."""
    try:
        with tifffile.TiffFile(path, is_ndpi=flavour == "ndpi") as tif:
            level0_index(flavour, [page for page in tif.pages if isinstance(page, tifffile.TiffPage)])
    except UnsupportedSlideFormat:
        return False
    return True


def _flavour_of(tif: tifffile.TiffFile) -> str:
    if tif.is_svs:
        return "aperio-svs"
    if tif.is_philips:
        return "philips-tiff"
    if tif.is_bif or b"<iScan" in bytes(tif.pages.first.tags.valueof(700) or b"")[:65536]:
        return "ventana-bif"
    if tif.is_scn:
        return "Leica SCN"
    return "generic-tiff"


def _head(path: Path) -> bytes:
    with path.open("rb") as fh:
        return fh.read(132)
