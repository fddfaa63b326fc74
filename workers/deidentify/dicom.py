"""De-identify a DICOM whole-slide image: drop the instances that show the label, anonymise the rest.

Headers follow the Basic Application Level Confidentiality Profile (PS3.15
E.1.1, every attribute of Table E.1-1; `dicom_basic_profile`) with one
`BasicProfile` per slide, so the new UIDs of all its instances and their
references agree. The Clean Pixel Data option (PS3.15 E.3.1) is honoured the
way a whole-slide image allows: the LABEL and OVERVIEW instances and any
instance that declares burned-in text or the label in its pixels are not sent;
the other instances of the slide still go, and a slide with no tissue image
left is refused. (dicognito, used before, was dropped: it made UIDs under a
non-existent `2.` arc and does not follow Table E.1-1.)

Pixel data is never decoded or held in memory: the header is read with
`stop_before_pixels`, rewritten, and the original pixel data element is
copied after it byte for byte, so every tile stays identical. Elements after
the pixel data (Data Set Trailing Padding, Digital Signatures: X in Table E.1-1)
are left behind.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID

from workers.deidentify.dicom_basic_profile import BasicProfile
from workers.deidentify.errors import UnsupportedSlideFormat

WSI_STORAGE = "1.2.840.10008.5.1.4.1.1.77.1.6"
DEFLATED = {"1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.4.95"}
GLASS_TYPES = {"LABEL": "label", "OVERVIEW": "overview"}
_PIXEL_TAGS = {0x7FE00010, 0x7FE00008, 0x7FE00009}
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UN", b"UR", b"UT", b"SV", b"UV"}
_COPY_BLOCK = 1 << 20


@dataclass
class DicomOutcome:
    outputs: list[Path] = field(default_factory=list)
    removed_images: list[str] = field(default_factory=list)
    blanked_fields: list[str] = field(default_factory=list)


@dataclass
class _Instance:
    source: Path
    header: Dataset
    pixels: tuple[int, int]  # [start, end) of the pixel data element in `source`


def glass_kind(header: Dataset) -> str | None:
    """Why an instance must not leave: a photograph of the glass or label, or not a slide image at all."""
    if str(header.get("SOPClassUID", "")) != WSI_STORAGE:
        return "non-slide instance"
    image_type = [str(value).upper() for value in header.get("ImageType", [])]
    if not image_type:
        return "untyped image"
    for value, kind in GLASS_TYPES.items():
        if value in image_type:
            return kind
    return None


def burned_in_kind(header: Dataset) -> str | None:
    """Clean Pixel Data (PS3.15 E.3.1): an instance whose pixels carry the label or other text."""
    if str(header.get("SpecimenLabelInImage", "")).upper() == "YES":
        return "label in image"
    if str(header.get("BurnedInAnnotation", "")).upper() == "YES":
        return "burned-in annotation"
    return None


def deidentify_dicom(files: Sequence[Path], *, run_id: str, out_dir: Path) -> DicomOutcome:
    outcome = DicomOutcome()
    kept: list[_Instance] = []
    for path in files:
        instance = _read(path)
        kind = glass_kind(instance.header) or burned_in_kind(instance.header)
        if kind is not None:
            outcome.removed_images.append(kind)
            continue
        kept.append(instance)
    if not kept:
        raise UnsupportedSlideFormat("DICOM without a tissue image")

    profile = BasicProfile(run_id)
    names = _neutral_names(run_id, len(kept))
    parts = []
    for instance, name in zip(kept, names, strict=True):
        profile.apply(instance.header)
        instance.header.file_meta = _file_meta(instance.header)
        instance.header.preamble = b"\0" * 128  # a dual-personality TIFF preamble points into the old file
        part = out_dir / f"{name}.part"
        _write(instance, part)
        parts.append((part, out_dir / name))
    for path in files:
        path.unlink(missing_ok=True)
    for part, final in parts:
        part.replace(final)
        outcome.outputs.append(final)
    outcome.blanked_fields = sorted(profile.acted_on)
    return outcome


def _file_meta(header: Dataset) -> FileMetaDataset:
    """A new File Meta Information (PS3.10 7.1): nothing of the scanner's (source AE title, private
    information) is carried over; pydicom fills in its own implementation class UID and version."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = header.SOPClassUID
    meta.MediaStorageSOPInstanceUID = header.SOPInstanceUID
    meta.TransferSyntaxUID = header.file_meta.TransferSyntaxUID
    return meta


def _neutral_names(run_id: str, count: int) -> list[str]:
    if count == 1:
        return [f"{run_id}.dcm"]
    width = max(3, len(str(count)))
    return [f"{run_id}-{number:0{width}d}.dcm" for number in range(1, count + 1)]


def _read(path: Path) -> _Instance:
    with path.open("rb") as fh:
        header = pydicom.dcmread(fh, stop_before_pixels=True)
        start = fh.tell()
        syntax = UID(str(header.file_meta.get("TransferSyntaxUID", "")))
        if str(syntax) in DEFLATED:
            raise UnsupportedSlideFormat("deflated DICOM")
        end = _pixel_element_end(fh, start, implicit=syntax.is_implicit_VR, little=syntax.is_little_endian)
    return _Instance(path, header, (start, end))


def _pixel_element_end(fh: BinaryIO, start: int, *, implicit: bool, little: bool) -> int:
    """End of the pixel data element that starts at `start` (or `start` when there is none).

    Elements after it (only trailing padding and signatures may follow) are left behind.
    """
    endian = "<" if little else ">"
    fh.seek(start)
    head = fh.read(8)
    if len(head) < 8:
        return start
    group, element = struct.unpack(f"{endian}HH", head[:4])
    if (group << 16 | element) not in _PIXEL_TAGS:
        return start
    if implicit:
        (length,), value_at = struct.unpack(f"{endian}I", head[4:8]), start + 8
    elif head[4:6] in _LONG_VRS:
        (length,), value_at = struct.unpack(f"{endian}I", fh.read(4)), start + 12
    else:
        (length,), value_at = struct.unpack(f"{endian}H", head[6:8]), start + 8
    if length != 0xFFFFFFFF:
        return int(value_at + length)
    position = value_at
    while True:  # encapsulated: items until the sequence delimiter, always little endian
        fh.seek(position)
        item = fh.read(8)
        if len(item) < 8:
            raise UnsupportedSlideFormat("DICOM with truncated pixel data")
        group, element, length = struct.unpack("<HHI", item)
        position += 8
        if (group, element) == (0xFFFE, 0xE0DD):
            return position
        if (group, element) != (0xFFFE, 0xE000):
            raise UnsupportedSlideFormat("DICOM with malformed pixel data")
        position += length


def _write(instance: _Instance, target: Path) -> None:
    with target.open("wb") as out:
        instance.header.save_as(out, enforce_file_format=True)
        start, end = instance.pixels
        with instance.source.open("rb") as src:
            src.seek(start)
            remaining = end - start
            while remaining > 0:
                block = src.read(min(remaining, _COPY_BLOCK))
                if not block:
                    raise UnsupportedSlideFormat("DICOM with truncated pixel data")
                out.write(block)
                remaining -= len(block)
