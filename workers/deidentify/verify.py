"""Read the outgoing files back and prove nothing identifying is left; any doubt refuses the upload.

This is deliberately independent of how the files were de-identified: it looks
at every text-like TIFF tag (ASCII, BYTE, UNDEFINED) of every page and sub-page,
and every DICOM attribute, raw, for the slide's identifiers from Sectra.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import pydicom
import tifffile
from pydicom.dataset import Dataset

from workers.deidentify.detect import DICOM, detect
from workers.deidentify.dicom import glass_kind
from workers.deidentify.errors import DeidentificationFailed, UnsupportedSlideFormat
from workers.deidentify.matching import IdentifierMatcher
from workers.deidentify.pages import associated_kind, carries_slide_metadata
from workers.deidentify.tiff import open_tiff, top_pages
from workers.deidentify.tiffio import TEXT_TYPES, data_ranges, iter_subpages, read_bytes

_LARGEST_TEXT = 64 << 20
_ZERO_CHECK_BLOCK = 1 << 20


def verify_deidentified(files: Sequence[Path], *, identifiers: Mapping[str, str]) -> None:
    matcher = IdentifierMatcher(identifiers)
    paths = [Path(path) for path in files]
    for path in paths:
        if field := matcher.find(path.name.encode("utf-8")):
            raise DeidentificationFailed(field, "a file name")
    kind = detect(paths)
    if kind.is_tiff:
        for path in paths:
            _verify_tiff(path, kind.name, matcher)
    elif kind.name == DICOM:
        for path in paths:
            _verify_dicom(path, matcher)
    else:
        raise UnsupportedSlideFormat(kind.name)


def _verify_tiff(path: Path, flavour: str, matcher: IdentifierMatcher) -> None:
    with open_tiff(path, flavour) as tif:
        pages = top_pages(tif)
        for number, page in enumerate(pages):
            if kind := associated_kind(flavour, number, page, pages[0]):
                raise DeidentificationFailed(f"{kind} image", f"page {number} of the slide file")
            if carries_slide_metadata(flavour, number, page) and not _all_zero(tif, page):
                raise DeidentificationFailed("label image", f"page {number} of the slide file")
            for node in iter_subpages(tif, page):
                _verify_tags(tif, node, number, matcher)


def _all_zero(tif: tifffile.TiffFile, page: tifffile.TiffPage) -> bool:
    """The wiped Ventana label page stays in the file for its metadata; its pixels must be gone."""
    offsets, counts = data_ranges(page)
    for offset, count in zip(offsets.tolist(), counts.tolist(), strict=True):
        for start in range(offset, offset + count, _ZERO_CHECK_BLOCK):
            if read_bytes(tif.filehandle, start, min(_ZERO_CHECK_BLOCK, offset + count - start)).strip(b"\0"):
                return False
    return True


def _verify_tags(
    tif: tifffile.TiffFile, page: tifffile.TiffPage, number: int, matcher: IdentifierMatcher
) -> None:
    for tag in page.tags.values():
        if tag.code in (34665, 34853):  # Exif / GPS: tifffile has already parsed them into a dict
            raw = repr(tag.value).encode("utf-8", "replace")
        elif tag.dtype in TEXT_TYPES and tag.valuebytecount <= _LARGEST_TEXT:
            raw = read_bytes(tif.filehandle, int(tag.valueoffset), int(tag.valuebytecount))
        else:
            continue
        if field := matcher.find(raw):
            raise DeidentificationFailed(field, f"the {tag.name} tag of page {number}")


def _verify_dicom(path: Path, matcher: IdentifierMatcher) -> None:
    header = pydicom.dcmread(path, stop_before_pixels=True)
    if kind := glass_kind(header):
        raise DeidentificationFailed(f"{kind}", "a DICOM instance")
    for flag, what in (
        ("SpecimenLabelInImage", "label image"),
        ("BurnedInAnnotation", "burned-in annotation"),
    ):
        if str(header.get(flag, "")).upper() == "YES":
            raise DeidentificationFailed(what, "the pixels of a tissue image")
    _verify_dataset(header.file_meta, matcher)
    _verify_dataset(header, matcher)


def _verify_dataset(dataset: Dataset, matcher: IdentifierMatcher) -> None:
    for element in dataset:
        if element.VR == "SQ":
            for item in element.value:
                _verify_dataset(item, matcher)
            continue
        value = element.value
        if value is None:
            continue
        raw = value if isinstance(value, bytes) else str(value).encode("utf-8", "replace")
        if len(raw) > _LARGEST_TEXT:
            continue
        if field := matcher.find(raw):
            name = element.keyword or str(element.tag)
            raise DeidentificationFailed(field, f"the DICOM attribute {name}")
