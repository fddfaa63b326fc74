"""Prove an outgoing DICOM instance de-identified, reading it back with pydicom and the standard only.

Shares no code with the remover (`dicom`, `dicom_basic_profile`): it takes
the action codes straight from the standard's table (`dicom_profile`, PS3.15
Table E.1-1) and accepts, for each listed attribute, only what its code
allows: absent for X, zero length for Z, a value that says nothing for D, a
UUID-derived UID (PS3.5 B.2, `2.25.`) for U. Beyond the table: no private
attribute, no UID but `2.25.` ones and the standard's own, only tissue images
(Image Type value 3 VOLUME or THUMBNAIL, PS3.3 C.8.12.4.1.1) that declare no
label or annotation in their pixels, Patient Identity Removed YES (PS3.15
E.1.1), and none of the slide's identifiers from Sectra in any value.
"""

from __future__ import annotations

from pathlib import Path

import pydicom
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag

from workers.deidentify.dicom_profile import BASIC_PROFILE, BASIC_PROFILE_REPEATING
from workers.deidentify.errors import DeidentificationFailed
from workers.deidentify.matching import IdentifierMatcher

_WSI_STORAGE = "1.2.840.10008.5.1.4.1.1.77.1.6"
_STANDARD_ROOT = "1.2.840.10008."
_UUID_ROOT = "2.25."
_TISSUE = frozenset({"VOLUME", "THUMBNAIL"})
_LARGEST_TEXT = 64 << 20
# What a dummy (D) may be, by VR: a word or date that carries no information.
_NEUTRAL_TEXT = "ANONYMIZED"
_NEUTRAL = {"DA": {"20000101"}, "TM": {"000000"}, "DT": {"20000101000000"}, "AS": {"000D"}}
_NUMBER_VRS = frozenset({"US", "SS", "UL", "SL", "FL", "FD", "SV", "UV", "AT", "IS", "DS"})
_BINARY_VRS = frozenset({"OB", "OW", "OD", "OF", "OL", "OV", "UN"})
# The only File Meta Information (PS3.10 7.1) an outgoing instance carries.
_META = frozenset({0x00020000, 0x00020001, 0x00020002, 0x00020003, 0x00020010, 0x00020012, 0x00020013})


def verify_dicom(path: Path, matcher: IdentifierMatcher) -> None:
    header = pydicom.dcmread(path, stop_before_pixels=True)
    _check_image(header)
    if str(header.get("PatientIdentityRemoved", "")) != "YES":
        raise DeidentificationFailed("PatientIdentityRemoved", "a DICOM instance (PS3.15 E.1.1 requires YES)")
    checker = _Checker(path.stem, matcher)
    _check_meta(header)
    for element in header.file_meta:
        checker.match(element, element.keyword or str(element.tag))
    checker.check(header)


def _check_image(header: Dataset) -> None:
    """Clean Pixel Data (PS3.15 E.3.1): only tissue images whose pixels hold no label or text."""
    if str(header.get("SOPClassUID", "")) != _WSI_STORAGE:
        raise DeidentificationFailed("non-slide instance", "a DICOM instance")
    image_type = [str(value).upper() for value in header.get("ImageType", [])]
    if len(image_type) < 3 or image_type[2] not in _TISSUE:
        kind = image_type[2].lower() if len(image_type) >= 3 else "untyped"
        raise DeidentificationFailed(f"{kind} image", "a DICOM instance")
    for flag, what in (
        ("SpecimenLabelInImage", "label image"),
        ("BurnedInAnnotation", "burned-in annotation"),
    ):
        if str(header.get(flag, "")).upper() == "YES":
            raise DeidentificationFailed(what, "the pixels of a tissue image")


def _check_meta(header: Dataset) -> None:
    meta = header.file_meta
    for element in meta:
        if int(element.tag) not in _META:
            raise DeidentificationFailed(
                element.keyword or str(element.tag), "the DICOM file meta information"
            )
    if str(meta.get("MediaStorageSOPInstanceUID", "")) != str(header.get("SOPInstanceUID", "")):
        raise DeidentificationFailed("MediaStorageSOPInstanceUID", "the DICOM file meta information")


def _code(tag: int) -> str | None:
    code = BASIC_PROFILE.get(tag)
    if code is None:
        code = next((c for pattern, mask, c in BASIC_PROFILE_REPEATING if tag & mask == pattern), None)
    return code


class _Checker:
    def __init__(self, stem: str, matcher: IdentifierMatcher) -> None:
        self._stem = stem  # `<run_id>` or `<run_id>-NNN`: the run id is the one neutral name a value may hold
        self._matcher = matcher

    def check(self, dataset: Dataset) -> None:
        for element in dataset:
            name = element.keyword or str(element.tag)
            if BaseTag(element.tag).is_private:
                raise DeidentificationFailed("private tag", f"the DICOM attribute {element.tag}")
            code = _code(int(element.tag))
            if code is not None and not self._allowed(element, set(code.split("/"))):
                raise DeidentificationFailed(name, f"a DICOM instance (PS3.15 Table E.1-1 says {code})")
            if element.VR == "SQ":
                for item in element.value:
                    self.check(item)
                continue
            if element.VR == "UI" and not all(_fresh_or_standard(uid) for uid in _strings(element)):
                raise DeidentificationFailed(name, "a DICOM instance (a UID not made by de-identification)")
            self.match(element, name)

    def _allowed(self, element: DataElement, options: set[str]) -> bool:
        if _empty(element):
            return "Z" in options
        if element.VR == "SQ":
            return "U*" in options or ("D" in options and all(self._neutral_item(i) for i in element.value))
        if element.VR == "UI":
            return bool(options & {"U", "D"}) and all(uid.startswith(_UUID_ROOT) for uid in _strings(element))
        return "D" in options and self._neutral(element)

    def _neutral_item(self, item: Dataset) -> bool:
        for element in item:
            if element.VR == "SQ":
                if not all(self._neutral_item(nested) for nested in element.value):
                    return False
            elif element.VR == "UI":
                if not all(uid.startswith(_UUID_ROOT) for uid in _strings(element)):
                    return False
            elif not self._neutral(element):
                return False
        return True

    def _neutral(self, element: DataElement) -> bool:
        if element.VR in _NEUTRAL:
            return all(value in _NEUTRAL[element.VR] for value in _strings(element))
        if element.VR in _NUMBER_VRS:
            return all(float(value) == 0 for value in _strings(element))
        if element.VR in _BINARY_VRS:
            return not bytes(element.value).strip(b"\0")
        return all(
            value == _NEUTRAL_TEXT or value == self._stem or self._stem.startswith(value + "-")
            for value in _strings(element)
        )

    def match(self, element: DataElement, name: str) -> None:
        """None of the slide's identifiers from Sectra, raw, in the value."""
        value = element.value
        if value is None:
            return
        raw = value if isinstance(value, bytes) else str(value).encode("utf-8", "replace")
        if len(raw) <= _LARGEST_TEXT and (field := self._matcher.find(raw)):
            raise DeidentificationFailed(field, f"the DICOM attribute {name}")


def _empty(element: DataElement) -> bool:
    if element.VR == "SQ":
        return len(element.value) == 0
    return element.VM == 0 or element.value in (None, "", b"")


def _strings(element: DataElement) -> list[str]:
    if element.VM == 0:
        return []
    return [str(value) for value in element.value] if element.VM > 1 else [str(element.value)]


def _fresh_or_standard(uid: str) -> bool:
    return uid.startswith((_UUID_ROOT, _STANDARD_ROOT))
