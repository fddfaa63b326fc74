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

TIFF_FLAVOURS = ("aperio-svs", "generic-tiff", "ndpi", "philips-tiff", "ventana-bif")
DICOM = "dicom"
UNRECOGNISED = "unrecognised"

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
    ".mrxs": "MRXS",
    ".vsi": "VSI",
    ".ets": "VSI",
    ".czi": "CZI",
    ".isyntax": "iSyntax",
    ".scn": "Leica SCN",
    ".kfb": "KFB",
}


@dataclass(frozen=True)
class SlideKind:
    name: str  # "aperio-svs", ..., "dicom", or a display name such as "MRXS" when unsupported
    supported: bool
    extension: str = ""  # for neutral output names; "" keeps the staged file's suffix

    @property
    def is_tiff(self) -> bool:
        return self.name in TIFF_FLAVOURS


def detect(files: Sequence[Path]) -> SlideKind:
    if not files:
        raise ValueError("no staged files to de-identify")
    for path in files:
        if path.name.lower() == "slidedat.ini":
            return SlideKind("MRXS", supported=False)
        if named := _BY_SUFFIX.get(path.suffix.lower()):
            return SlideKind(named, supported=False, extension=path.suffix.lower())
    heads = [_head(path) for path in files]
    if all(head[128:132] == b"DICM" for head in heads):
        return SlideKind(DICOM, supported=True, extension=_EXTENSIONS[DICOM])
    if heads[0].startswith(b"ZISRAWFILE"):
        return SlideKind("CZI", supported=False)
    if len(files) == 1 and heads[0][:4] in _TIFF_MAGIC:
        flavour = tiff_flavour(files[0])
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
