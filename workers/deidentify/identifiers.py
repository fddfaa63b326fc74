"""Collect the strings that would identify a slide's patient, from Sectra's PHI metadata and file names.

The result lives only in the caller's memory, for `verify_deidentified`; its
keys are field names fit for an audit trail, its values never are.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import PurePath
from typing import TYPE_CHECKING, Any

from workers.deidentify.text import audit_name

if TYPE_CHECKING:
    from sectra_client.schemas.image import ImageMetadata

# File names such as "slide.svs" or "image-2.dcm" name no one, and their words occur in ordinary DICOM
# text ("Microscope slide"): matching them would refuse every such slide for nothing.
# MRXS parts have fixed names (Slidedat.ini, Index.dat, DataNNNN.dat) that every de-identified copy keeps.
_GENERIC_NAMES = frozenset(
    {"slide", "image", "file", "scan", "part", "wsi", "dicom", "instance", "download"}
    | {"slidedat", "index", "data"}
)
_NOT_A_WORD = re.compile(r"[\d_.\- ]+")
_PLAIN_FIELDS = ("accessionNumber", "lisSlideId", "examId", "studyInstanceUid", "seriesInstanceUid")
# Scanners write the exam date in their own formats; a date in any of them identifies the exam.
_DATE_FORMATS = {
    "YYYY-MM-DD": "%Y-%m-%d",
    "YYYYMMDD": "%Y%m%d",
    "YYYY:MM:DD": "%Y:%m:%d",
    "MM/DD/YY": "%m/%d/%y",
    "DD.MM.YYYY": "%d.%m.%Y",
}


def identifiers_from_metadata(
    metadata: ImageMetadata | Mapping[str, Any], original_names: Sequence[str]
) -> dict[str, str]:
    data: Mapping[str, Any] = metadata.model_dump() if hasattr(metadata, "model_dump") else metadata
    found: dict[str, str] = {}
    for key in _PLAIN_FIELDS:
        _add(found, key, data.get(key))
    _add(found, "slideId", data.get("id"))
    exam_date = data.get("examDateTime")
    _add(found, "examDateTime", exam_date)
    for label, value in _date_forms(exam_date).items():
        _add(found, f"examDateTime as {label}", value)
    for number, entry in enumerate(data.get("examFreeFields") or []):
        for name, value in _free_field_items(number, entry):
            _add(found, f"examFreeFields.{name}", value)
    for number, name in enumerate(original_names):
        base = PurePath(name).name
        stem = base.split(".", 1)[0]
        if _NOT_A_WORD.sub("", stem).lower() in _GENERIC_NAMES:
            continue
        _add(found, f"original file name {number + 1}", base)
        if stem != base:
            _add(found, f"original file name {number + 1} without extension", stem)
    return found


def _add(found: dict[str, str], key: str, value: Any) -> None:
    if value is not None and str(value).strip():
        found[key] = str(value).strip()


def _date_forms(value: Any) -> dict[str, str]:
    if not value:
        return {}
    try:
        moment = datetime.fromisoformat(str(value).strip().replace("Z", "+00:00"))
    except ValueError:
        return {}
    return {label: moment.strftime(pattern) for label, pattern in _DATE_FORMATS.items()}


def _free_field_items(number: int, entry: Any) -> list[tuple[str, Any]]:
    """Sectra free fields arrive as {"name": ..., "value": ...} or as {name: value}; accept both."""
    if not isinstance(entry, Mapping):
        return [(str(number + 1), entry)]
    if "value" in entry:
        label = entry.get("name") or entry.get("label") or entry.get("key") or str(number + 1)
        return [(audit_name(str(label)), entry["value"])]
    return [(audit_name(str(key)), value) for key, value in entry.items()]
