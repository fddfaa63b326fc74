"""Prove a de-identified TIFF-family slide clean with readers we did not write; any doubt fails closed.

Deliberately shares nothing with the remover's page classifier (`pages`):
- openslide and tiffslide must both open the file and agree on level 0; neither may
  offer an associated image (label, macro, ...) with a single non-zero pixel, except
  Aperio's tissue thumbnail;
- every page and sub-page (walked with tifffile) must be a level one of those readers
  reports, Aperio's thumbnail as openslide reports it, or an image whose stored bytes
  are all zeros (Ventana's wiped label, which keeps the slide's metadata);
- every tag must be on the vendor's allow-list (`tiff_allowlist`, the specification
  this checks against), the IFD may hold no entry tifffile skipped, and the allowed
  text must fit its vendor's rules, read with independent parsers (tifffile's Aperio
  parser, ElementTree for XML);
- no text-like value may hold any of the slide's identifiers from Sectra.
"""

from __future__ import annotations

import io
import json
import re
import struct
from pathlib import Path
from xml.etree import ElementTree

import numpy as np
import openslide
import tifffile
import tiffslide
from PIL import ImageCms
from tifffile.tifffile import svs_description_metadata

from workers.deidentify.errors import DeidentificationFailed
from workers.deidentify.matching import IdentifierMatcher
from workers.deidentify.text import BIF_KEEP, PHILIPS_KEEP, SVS_KEEP, looks_like_date
from workers.deidentify.tiff_allowlist import (
    BINARY,
    IMAGE_DESCRIPTION,
    MAKE,
    SOFTWARE,
    XMP,
    allowed_tags,
    text_tags,
)
from workers.deidentify.tiffio import TEXT_TYPES, data_ranges, iter_subpages, read_bytes

_LARGEST_TEXT = 64 << 20
_ICC_PROFILE = 34675
# The text-bearing fields littleCMS exposes (ICC.1:2022 section 9.2: desc, cprt, dmnd, dmdd, vued, targ, ...).
_ICC_TEXT_FIELDS = (
    "profile_description", "copyright", "manufacturer", "model", "viewing_condition",
    "screening_description", "target",
)  # fmt: skip
_ZERO_CHECK_BLOCK = 1 << 20
_THUMBNAIL = "thumbnail"
_BIF_LEVEL = re.compile(r"^level=\d+ mag=[\d.]+ quality=\d+$")
_PHILIPS_STRUCTURE = frozenset({"Name", "Group", "Element", "PMSVR", "ObjectType"})
_NUMBER = re.compile(r"^\s*[-+]?\d+(\.\d+)?([eE][-+]?\d+)?\s*$")
_ENUM = frozenset({"RIGHT", "LEFT", "UP", "DOWN", "true", "false", "True", "False"})
_MAKER = re.compile(r"[A-Za-z][A-Za-z .&-]{0,31}")
_BIF_NEVER = re.compile(r"(?i)barcode|name|date|time|user|unit|serial|id$|label|slide|case|patient")


class UnreadableSlide(DeidentificationFailed):
    """An independent reader cannot open the de-identified slide, so nothing about it is confirmed."""

    def __init__(self, reader: str) -> None:
        self.field = "slide"
        self.location = reader
        Exception.__init__(
            self,
            f"De-identification could not be confirmed: {reader} could not read the de-identified "
            "slide back; it was not sent to Strand",
        )


def verify_tiff(path: Path, flavour: str, matcher: IdentifierMatcher) -> None:
    levels, thumbnail = _verify_with_readers(path, flavour)
    with tifffile.TiffFile(path, is_ndpi=flavour == "ndpi") as tif:
        tif.pages.useframes = False
        tif.pages.cache = True
        for number, page in enumerate(tif.pages):
            assert isinstance(page, tifffile.TiffPage)
            for node in iter_subpages(tif, page):
                _verify_geometry(tif, node, number, flavour, levels, thumbnail)
                _verify_tags(tif, node, number, flavour, matcher)


def _verify_with_readers(path: Path, flavour: str) -> tuple[set[tuple[int, int]], tuple[int, int] | None]:
    """Level sizes both readers report, and the Aperio thumbnail's size; no non-blank associated image."""
    levels: set[tuple[int, int]] = set()
    thumbnail = None
    dimensions = []
    for name, opener in (("openslide", openslide.OpenSlide), ("tiffslide", tiffslide.TiffSlide)):
        try:
            slide = opener(path)
        except Exception as exc:  # any reader failure: nothing is confirmed, the run fails closed
            raise UnreadableSlide(name) from exc
        with slide:
            dimensions.append(tuple(slide.dimensions))
            levels.update((int(w), int(h)) for w, h in slide.level_dimensions)
            for image_name in list(slide.associated_images):
                try:
                    image = slide.associated_images[image_name]
                    pixels = np.asarray(image.convert("RGB"))
                except Exception:  # noqa: S112 - zeroed compressed bytes do not decode; the page walk checks them
                    continue
                if image_name == _THUMBNAIL and flavour == "aperio-svs":
                    thumbnail = image.size
                    continue
                if pixels.any():
                    raise DeidentificationFailed(
                        f"{image_name or 'unnamed'} image", f"{name}'s associated images"
                    )
    if dimensions[0] != dimensions[1]:
        raise UnreadableSlide("openslide and tiffslide, which disagree on its size,")
    return levels, thumbnail


def _verify_geometry(
    tif: tifffile.TiffFile,
    page: tifffile.TiffPage,
    number: int,
    flavour: str,
    levels: set[tuple[int, int]],
    thumbnail: tuple[int, int] | None,
) -> None:
    size = (page.imagewidth, page.imagelength)
    if size in levels and (page.is_tiled or flavour == "ndpi"):  # NDPI levels are JPEG strips
        return
    if thumbnail == size and number == 1 and len(page.treeindex) == 1:
        return
    if not _all_zero(tif, page):
        raise DeidentificationFailed("image that is no slide level", f"page {number} of the slide file")


def _all_zero(tif: tifffile.TiffFile, page: tifffile.TiffPage) -> bool:
    offsets, counts = data_ranges(page)
    for offset, count in zip(offsets.tolist(), counts.tolist(), strict=True):
        for start in range(offset, offset + count, _ZERO_CHECK_BLOCK):
            if read_bytes(tif.filehandle, start, min(_ZERO_CHECK_BLOCK, offset + count - start)).strip(b"\0"):
                return False
    return True


def _verify_tags(
    tif: tifffile.TiffFile, page: tifffile.TiffPage, number: int, flavour: str, matcher: IdentifierMatcher
) -> None:
    where = f"page {number} of the slide file"
    fh = tif.filehandle
    fh.seek(page.offset)
    count_format = tif.tiff.tagnoformat
    stored = struct.unpack(count_format, fh.read(struct.calcsize(count_format)))[0]
    if stored != len(page.tags):
        raise DeidentificationFailed("TIFF tag that tifffile cannot read", where)
    allowed = allowed_tags(flavour)
    for tag in page.tags.values():
        name = f"TIFF tag {tag.name}"
        if tag.code not in allowed:
            raise DeidentificationFailed(name, where)
        if tag.code in text_tags(flavour) or tag.code in BINARY or tag.dtype in TEXT_TYPES:
            if tag.code not in text_tags(flavour) and tag.code not in BINARY:
                raise DeidentificationFailed(f"{name} holding text", where)
            if tag.valuebytecount > _LARGEST_TEXT:
                raise DeidentificationFailed(f"oversized {name}", where)
            raw = read_bytes(fh, int(tag.valueoffset), int(tag.valuebytecount))
            if field := matcher.find(raw):
                raise DeidentificationFailed(field, f"the {tag.name} tag of page {number}")
            if tag.code in BINARY and (problem := _binary_problem(tag.code, raw)):
                raise DeidentificationFailed(f"{name} {problem}", where)
            if tag.code in text_tags(flavour) and not _text_allowed(flavour, tag.code, raw):
                raise DeidentificationFailed(f"{name} text not on the allow-list", where)


def _binary_problem(code: int, raw: bytes) -> str | None:
    """What is wrong with a kept ICC profile or JPEG tables value, judged by other readers than ours."""
    if code == _ICC_PROFILE:
        try:  # littleCMS (through Pillow) parses the profile; its text fields must all be empty
            profile = ImageCms.ImageCmsProfile(io.BytesIO(raw)).profile
        except (OSError, TypeError, ValueError):
            return "that is not an ICC profile"
        if any((getattr(profile, field, None) or "").strip("\0 ") for field in _ICC_TEXT_FIELDS):
            return "with text in the profile"
        return None
    # JPEG tables: each COM (FFFE) and APPn (FFE0-FFEF) segment's payload must be zeros (ITU-T T.81 B.1.1.4).
    at = 2 if raw[:2] == b"\xff\xd8" else len(raw) + 1
    while at + 4 <= len(raw) and raw[at] == 0xFF and raw[at + 1] != 0xD9:
        length = int.from_bytes(raw[at + 2 : at + 4], "big")
        if (raw[at + 1] == 0xFE or 0xE0 <= raw[at + 1] <= 0xEF) and any(raw[at + 4 : at + 2 + length]):
            return "with a comment or application segment"
        at += 2 + length
    return None if raw[at : at + 2] == b"\xff\xd9" else "that is not a JPEG tables stream"


def _text_allowed(flavour: str, code: int, raw: bytes) -> bool:
    text = raw.rstrip(b"\0").decode("latin-1").strip()
    if not text.strip("\0 "):
        return True
    if code == IMAGE_DESCRIPTION:
        return _description_allowed(flavour, text)
    if code == XMP:
        return _bif_xmp_allowed(text)
    if code == MAKE:  # a manufacturer's name only: no digits, so no serial number or date
        return bool(_MAKER.fullmatch(text))
    if code == SOFTWARE:
        return not looks_like_date(raw)
    return False


def _description_allowed(flavour: str, text: str) -> bool:
    if flavour == "aperio-svs":
        keys = set(svs_description_metadata(text)) - {"Header"}
        return text.startswith("Aperio ") and keys <= SVS_KEEP
    if flavour == "philips-tiff":
        return _philips_xml_allowed(text)
    if flavour == "ventana-bif":
        return bool(_BIF_LEVEL.match(text))
    try:
        parsed = json.loads(text)
    except ValueError:
        return False
    return isinstance(parsed, dict) and set(parsed) <= {"shape", "axes"}


def _parse(text: str) -> ElementTree.Element | None:
    try:  # back to the stored bytes, so the document's own encoding declaration applies
        return ElementTree.fromstring(text.encode("latin-1"))  # noqa: S314 (expat limits entity expansion)
    except ElementTree.ParseError:
        return None


def _philips_xml_allowed(text: str) -> bool:
    """Philips DP XML: only the allow-listed <Attribute>s may have text; other attributes only structure."""
    root = _parse(text)
    if root is None:
        return False
    for element in root.iter():
        if any(value.strip() for key, value in element.attrib.items() if key not in _PHILIPS_STRUCTURE):
            return False
        own = (element.text or "").strip()
        if own and not (element.tag == "Attribute" and element.attrib.get("Name") in PHILIPS_KEEP):
            return False
        if (element.tail or "").strip():
            return False
    return True


def _bif_xmp_allowed(text: str) -> bool:
    """Ventana XMP: iScan attributes only from BIF_KEEP; elsewhere numbers and directions only."""
    root = _parse(text)
    if root is None:
        return False
    for element in root.iter():
        for key, value in element.attrib.items():
            if not value.strip():
                continue
            if element.tag == "iScan":
                if key not in BIF_KEEP or looks_like_date(value.encode()):
                    return False
            elif _BIF_NEVER.search(key) or not (_NUMBER.match(value) or value.strip() in _ENUM):
                return False
        if (element.text or "").strip() and not _NUMBER.match(element.text or ""):
            return False
    return True
