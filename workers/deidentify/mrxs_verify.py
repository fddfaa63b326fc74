"""Read a de-identified MIRAX slide back with readers that are not ours, and look for what must be gone.

Independent of `mrxs` and `mrxs_policy` by construction: the slide is opened
with OpenSlide (its associated images must be none at all: label, macro and
thumbnail all photograph the glass), Slidedat.ini is parsed with the standard
library's `configparser` and judged by a deny-list of key patterns rather than
the remover's allow-list, and the raw bytes of every small file (Slidedat.ini,
Index.dat, the .mrxs file) and the head of every Data file (where vendors keep
headers and profile XML; wsi-anon scrubs the first 1000 bytes) are searched for
the slide's identifiers.
"""

from __future__ import annotations

import configparser
import re
from collections.abc import Sequence
from pathlib import Path

import openslide

from workers.deidentify.errors import DeidentificationFailed, UnsupportedSlideFormat
from workers.deidentify.matching import IdentifierMatcher

_HEAD_BYTES = 64 << 10
_SMALL_FILE_BYTES = 64 << 20  # Slidedat.ini, Index.dat and the .mrxs file are read whole
# Keys whose value identifies a person, an exam or a site when not empty; the tree's own layer names
# (HIER_n_NAME, NONHIER_n_NAME) and the replaced SLIDE_ID are structure the reader needs.
_PHI_KEY = re.compile(r"NAME|_ID$|DATE|TIME|BARCODE|USER|OPERATOR|SERIAL|COMMENT|LABEL|PATIENT|CASE", re.I)
_STRUCTURE = re.compile(r"^(NON)?HIER_\d+_NAME$|^SLIDE_ID$")
_GLASS_RECORD = re.compile(r"^NONHIER_\d+_VAL_\d+$")


def verify_mrxs(files: Sequence[Path], matcher: IdentifierMatcher) -> None:
    primaries = [Path(p) for p in files if Path(p).suffix.lower() == ".mrxs"]
    if len(primaries) != 1:
        raise UnsupportedSlideFormat("MRXS set without exactly one .mrxs file")
    mrxs = primaries[0]
    folder = mrxs.with_suffix("")
    _check_with_openslide(mrxs, matcher)
    data_files = _check_slidedat((folder / "Slidedat.ini").read_bytes())
    for path in [mrxs, *sorted(p for p in folder.iterdir() if p.is_file())]:
        with path.open("rb") as fh:
            raw = fh.read(_HEAD_BYTES if path.name.casefold() in data_files else _SMALL_FILE_BYTES)
        if field := matcher.find(raw):
            raise DeidentificationFailed(field, f"the MRXS file {path.name}")


def _check_with_openslide(mrxs: Path, matcher: IdentifierMatcher) -> None:
    try:
        slide = openslide.OpenSlide(str(mrxs))
    except openslide.OpenSlideError:
        raise UnsupportedSlideFormat("MRXS that OpenSlide cannot open after de-identification") from None
    with slide:
        if slide.properties.get(openslide.PROPERTY_NAME_VENDOR) != "mirax":
            raise UnsupportedSlideFormat("MRXS that OpenSlide does not read as MIRAX")
        for name in sorted(slide.associated_images):
            raise DeidentificationFailed(f"{name} image", "the MRXS slide (read back with OpenSlide)")
        for key, value in slide.properties.items():
            if field := matcher.find(value.encode("utf-8", "replace")):
                raise DeidentificationFailed(field, f"the MRXS property {key}")


def _check_slidedat(raw: bytes) -> set[str]:
    """Refuse PHI-like keys with values and glass records; the (case-folded) Data file names."""
    parser = configparser.RawConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    try:
        parser.read_string(raw.decode("utf-8-sig", "replace"))
    except configparser.Error:
        raise UnsupportedSlideFormat("MRXS whose Slidedat.ini cannot be read back") from None
    for section in parser.sections():
        for key, value in parser.items(section):
            if _PHI_KEY.search(key) and not _STRUCTURE.match(key) and value.strip():
                raise DeidentificationFailed(key, f"section {section} of Slidedat.ini")
            if section == "HIERARCHICAL" and _GLASS_RECORD.match(key) and value.startswith("ScanDataLayer_"):
                raise DeidentificationFailed(
                    "label or macro record", "the HIERARCHICAL section of Slidedat.ini"
                )
    if not parser.has_section("DATAFILE"):
        return set()
    return {
        value.casefold()
        for key, value in parser.items("DATAFILE")
        if key.startswith("FILE_") and key != "FILE_COUNT"
    }
