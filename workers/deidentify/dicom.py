"""De-identify a DICOM whole-slide image: drop the label and overview instances, anonymise the rest.

Header rules come from dicognito (pydicom-based), chosen over `deid` because
it needs no recipe files, keeps the UIDs, dates and IDs of all instances of one
slide consistent through one `Anonymizer` (a random salt per slide, so no two
runs can be linked), and does not drag in matplotlib. It covers the Basic
Profile's names, IDs, UIDs, dates and addresses; `_PathologyScrubber` adds the
profile's free-text attributes and the whole-slide ones (container and
specimen identifiers, label text, barcodes) that it leaves alone, and private
tags are removed as the profile's default requires.

Pixel data is never decoded or held in memory: the header is read with
`stop_before_pixels`, rewritten, and the original pixel data element is
copied after it byte for byte, so every tile stays identical.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import pydicom
from dicognito.anonymizer import Anonymizer
from dicognito.element_anonymizer import ElementAnonymizer
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag
from pydicom.uid import UID

from workers.deidentify.errors import DeidentificationFailed, UnsupportedSlideFormat

WSI_STORAGE = "1.2.840.10008.5.1.4.1.1.77.1.6"
DEFLATED = {"1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.4.95"}
GLASS_TYPES = {"LABEL": "label", "OVERVIEW": "overview"}
_PIXEL_TAGS = {0x7FE00010, 0x7FE00008, 0x7FE00009}
_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UN", b"UR", b"UT", b"SV", b"UV"}
_COPY_BLOCK = 1 << 20

# Type 1 identifiers a reader needs present: replaced by the neutral run id.
_NEUTRAL = frozenset({"ContainerIdentifier", "SpecimenIdentifier"})
# Basic Profile X/Z attributes outside dicognito's rules, plus whole-slide label text: emptied.
_EMPTIED = frozenset(
    {
        "AcquisitionComments",
        "AcquisitionDeviceProcessingDescription",
        "AdditionalPatientHistory",
        "Allergies",
        "BarcodeValue",
        "ContainerDescription",
        "DerivationDescription",
        "DeviceSerialNumber",
        "EthnicGroup",
        "ImageComments",
        "IssuerOfTheContainerIdentifierSequence",
        "IssuerOfTheSpecimenIdentifierSequence",
        "LabelText",
        "MedicalAlerts",
        "OtherPatientIDsSequence",
        "PatientAge",
        "PatientBirthDate",
        "PatientBirthTime",
        "PatientComments",
        "PatientSex",
        "PatientSize",
        "PatientWeight",
        "PerformedProcedureStepDescription",
        "PregnancyStatus",
        "ProtocolName",
        "ReasonForTheRequestedProcedure",
        "RequestedProcedureDescription",
        "SeriesDescription",
        "SmokingStatus",
        "SpecimenDetailedDescription",
        "SpecimenShortDescription",
        "StudyDescription",
        "TextValue",
    }
)


class _PathologyScrubber(ElementAnonymizer):
    """The Basic Profile's free text and whole-slide identifiers, which dicognito does not touch."""

    def __init__(self, neutral_id: str) -> None:
        self._neutral_id = neutral_id

    def __call__(self, dataset: Dataset, data_element: DataElement) -> bool:
        keyword = data_element.keyword
        if keyword in _NEUTRAL:
            data_element.value = self._neutral_id
            return True
        if keyword in _EMPTIED:
            data_element.value = [] if data_element.VR == "SQ" else None
            return True
        return False

    def describe_actions(self) -> Iterator[str]:
        yield "Replace ContainerIdentifier and SpecimenIdentifier with the run id"
        yield from (f"Empty {keyword}" for keyword in sorted(_EMPTIED))


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
    if "VOLUME" not in image_type and str(header.get("SpecimenLabelInImage", "")).upper() == "YES":
        return "thumbnail with label"
    return None


def deidentify_dicom(files: Sequence[Path], *, run_id: str, out_dir: Path) -> DicomOutcome:
    outcome = DicomOutcome()
    kept: list[_Instance] = []
    for path in files:
        instance = _read(path)
        kind = glass_kind(instance.header)
        if kind is not None:
            outcome.removed_images.append(kind)
            continue
        _refuse_burned_in(instance.header)
        kept.append(instance)
    if not kept:
        raise UnsupportedSlideFormat("DICOM without a tissue image")

    anonymizer = Anonymizer()
    anonymizer.add_element_handler(_PathologyScrubber(run_id))
    names = _neutral_names(run_id, len(kept))
    parts = []
    for instance, name in zip(kept, names, strict=True):
        before = _snapshot(instance.header)
        anonymizer.anonymize(instance.header)
        instance.header.remove_private_tags()
        outcome.blanked_fields.extend(_changed(before, _snapshot(instance.header)))
        part = out_dir / f"{name}.part"
        _write(instance, part)
        parts.append((part, out_dir / name))
    for path in files:
        path.unlink(missing_ok=True)
    for part, final in parts:
        part.replace(final)
        outcome.outputs.append(final)
    outcome.blanked_fields = sorted(set(outcome.blanked_fields))
    return outcome


def _neutral_names(run_id: str, count: int) -> list[str]:
    if count == 1:
        return [f"{run_id}.dcm"]
    width = max(3, len(str(count)))
    return [f"{run_id}-{number:0{width}d}.dcm" for number in range(1, count + 1)]


def _refuse_burned_in(header: Dataset) -> None:
    """A tissue image that says the label or other text is burned into its pixels cannot be fixed here."""
    if str(header.get("SpecimenLabelInImage", "")).upper() == "YES":
        raise DeidentificationFailed("label image", "the pixels of a tissue image")
    if str(header.get("BurnedInAnnotation", "")).upper() == "YES":
        raise DeidentificationFailed("burned-in annotation", "the pixels of a tissue image")


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


def _snapshot(dataset: Dataset) -> dict[tuple[Any, ...], tuple[str, str]]:
    """Every element's (name, value) by path; held in memory only, to name what changed."""
    values: dict[tuple[Any, ...], tuple[str, str]] = {}

    def visit(ds: Dataset, prefix: tuple[Any, ...]) -> None:
        for element in ds:
            key = (*prefix, int(element.tag))
            name = "private tags" if BaseTag(element.tag).is_private else element.keyword or str(element.tag)
            if element.VR == "SQ":
                values[key] = (name, f"SQ[{len(element.value)}]")
                for number, item in enumerate(element.value):
                    visit(item, (*key, number))
            else:
                values[key] = (name, repr(element.value))

    visit(dataset.file_meta, ("meta",))
    visit(dataset, ())
    return values


def _changed(
    before: dict[tuple[Any, ...], tuple[str, str]], after: dict[tuple[Any, ...], tuple[str, str]]
) -> list[str]:
    return [name for key, (name, value) in before.items() if after.get(key, (name, None))[1] != value]
