"""Apply the DICOM Basic Application Level Confidentiality Profile (PS3.15 E.1.1) to one slide's headers.

The attribute actions come from the standard's Table E.1-1 (`dicom_profile`);
this module decides only what the table leaves to the implementer:

- Combined codes (X/Z, X/D, Z/D, X/Z/D, X/Z/U*) take the stronger action unless
  the VL Whole Slide Microscopy IOD (PS3.3 A.32.8) needs the attribute:
  `_WSI_TYPE` names the few it does, and the Referenced Image Sequence stays
  while a Common Instance Reference (PS3.3 C.12.2) lists its references. A
  Type 1C attribute whose condition the profile itself removed goes too
  (`_PRESENT_ONLY_WITH`). dciodvfy in the tests is the oracle that this is enough.
- D gets a value with no information: `DUMMY_TEXT` and friends, the run id for
  the container and specimen identifiers (Type 1, and the name Strand sees the
  slide under anyway), and for a sequence the same items with every value
  replaced so.
- U, and every other UID that is not one of the standard's own (1.2.840.10008),
  becomes a UUID-derived UID under `2.25` (PS3.5 B.2): UUIDv5 of the original
  UID in a random namespace made per slide and never stored, so all instances
  and references of one slide agree and two runs of the same slide cannot be linked.
- Content Description, which Table E.1-1 does not list, is removed too.
- Private attributes are removed (PS3.15 E.1.1; no Retain Safe Private option).
- Options: none that retain anything. Retain Device Identity (PS3.15 E.3.8)
  is not applied: nothing Strand's API takes needs a scanner's
  serial number, station name or device UID, which locate a site; the make,
  model and software version a scanner-specific model may need are not in
  Table E.1-1 and stay.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.tag import BaseTag
from pydicom.uid import UID

from workers.deidentify.dicom_profile import BASIC_PROFILE, BASIC_PROFILE_REPEATING, EDITION

UUID_ROOT = "2.25."
DUMMY_TEXT = "ANONYMIZED"
DUMMY_DATE, DUMMY_TIME, DUMMY_DATETIME = "20000101", "000000", "20000101000000"
_TEXT_VRS = frozenset({"AE", "CS", "LO", "LT", "SH", "ST", "UC", "UT", "PN", "UR"})
_NUMBER_VRS = frozenset({"US", "SS", "UL", "SL", "FL", "FD", "SV", "UV", "AT"})
_DUMMIES = {"DA": DUMMY_DATE, "TM": DUMMY_TIME, "DT": DUMMY_DATETIME, "AS": "000D", "IS": "0", "DS": "0"}
# D attributes whose dummy is the run id: Type 1 identifiers of the Specimen module (PS3.3 C.7.6.22).
_RUN_ID_DUMMY = frozenset({"ContainerIdentifier", "SpecimenIdentifier"})
# Top-level attributes with a combined code that the VL WSI IOD requires (PS3.3 A.32.8): their Type.
_WSI_TYPE = {
    "ContentDate": 1,  # Multi-frame Functional Groups module, C.7.6.16
    "ContentTime": 1,
    "AcquisitionDateTime": 1,  # Whole Slide Microscopy Image module, C.8.12.4
    "DeviceSerialNumber": 1,  # Enhanced General Equipment module, C.7.5.2
    "PatientID": 2,  # Patient module, C.7.1.1
    "AcquisitionContextSequence": 2,  # Acquisition Context module, C.7.6.14
}
# Type 1C attributes (PS3.3 C.7.1.3) whose condition the profile itself can take away: the D of the
# committee's name is moot once the X of its approval number has removed the reason for it.
_PRESENT_ONLY_WITH = {
    "ClinicalTrialProtocolEthicsCommitteeName": "ClinicalTrialProtocolEthicsCommitteeApprovalNumber"
}
# The Deidentification Method Code Sequence's entries (PS3.16 CID 7050) for what was done.
_METHOD_CODES = (
    ("113100", "Basic Application Confidentiality Profile"),
    ("113101", "Clean Pixel Data Option"),
)


# Beyond Table E.1-1 (2026c), which does not list it: Content Description (0070,0081), from the Content
# Identification macro that no WSI module uses, is free text that scanners fill with the case's words.
BEYOND_TABLE_E11 = {0x00700081: "X"}


def profile_code(tag: int) -> str | None:
    """The action code for `tag` (Table E.1-1, or `BEYOND_TABLE_E11`), None when neither lists it."""
    code = BASIC_PROFILE.get(tag) or BEYOND_TABLE_E11.get(tag)
    if code is None:
        for pattern, mask, repeating_code in BASIC_PROFILE_REPEATING:
            if tag & mask == pattern:
                return repeating_code
    return code


def uuid_uid(namespace: uuid.UUID, original: str) -> str:
    """PS3.5 B.2: "2.25." and the UUID's 128 bits as one decimal integer (at most 44 characters)."""
    return UUID_ROOT + str(uuid.uuid5(namespace, original).int)


class BasicProfile:
    """One slide's de-identifier: every instance of the slide must go through the same object."""

    def __init__(self, run_id: str) -> None:
        self._run_id = run_id[:64]
        self._namespace = uuid.uuid4()  # the per-slide secret that keeps new UIDs unlinkable
        self.acted_on: set[str] = set()

    def new_uid(self, original: str) -> str:
        return uuid_uid(self._namespace, original)

    def apply(self, dataset: Dataset) -> None:
        """De-identify `dataset` (and its sequences) in place, then record that it was done."""
        self._clean(dataset, top_level=True)
        for keyword, condition in _PRESENT_ONLY_WITH.items():
            if keyword in dataset and condition not in dataset:
                del dataset[keyword]
        dataset.PatientIdentityRemoved = "YES"
        dataset.DeidentificationMethod = f"DICOM PS3.15 {EDITION} E.1.1 Basic Profile; Clean Pixel Data"
        dataset.DeidentificationMethodCodeSequence = DicomSequence(
            [_code(value, meaning) for value, meaning in _METHOD_CODES]
        )

    def _clean(self, dataset: Dataset, *, top_level: bool) -> None:
        for element in list(dataset):
            tag = int(element.tag)
            if BaseTag(tag).is_private:
                del dataset[tag]
                self.acted_on.add("private tags")
                continue
            code = profile_code(tag)
            if code is None:
                self._unlisted(dataset, element)
                continue
            action = _resolve(code, _wsi_type(dataset, element.keyword) if top_level else 3)
            self.acted_on.add(element.keyword or str(element.tag))
            if action == "X":
                del dataset[tag]
            elif action == "Z":
                element.value = DicomSequence([]) if element.VR == "SQ" else None
            elif action == "U*":
                for item in element.value:
                    self._clean(item, top_level=False)
            elif element.VR == "UI" or action == "U":
                self._replace_uids(element)
            else:
                self._dummy(element)

    def _unlisted(self, dataset: Dataset, element: DataElement) -> None:
        """An attribute Table E.1-1 does not list stays, but its items are cleaned and its UIDs checked."""
        if element.VR == "SQ":
            for item in element.value:
                self._clean(item, top_level=False)
        elif element.VR == "UI" and any(UID(value).is_private for value in _values(element)):
            self._replace_uids(element)  # an instance UID the table does not know of (E.1.1: replaced)
            self.acted_on.add(element.keyword or str(element.tag))

    def _replace_uids(self, element: DataElement) -> None:
        new = [self.new_uid(str(value)) for value in _values(element)]
        element.value = new[0] if len(new) == 1 else new

    def _dummy(self, element: DataElement) -> None:
        """D: a value of the element's VR that says nothing (PS3.15 Table E.1-1 legend)."""
        vr = element.VR
        if vr == "SQ":
            for item in element.value:
                self._dummy_item(item)
        elif element.keyword in _RUN_ID_DUMMY:
            element.value = self._run_id
        elif vr in _TEXT_VRS:
            element.value = DUMMY_TEXT
        elif vr in _DUMMIES:
            element.value = _DUMMIES[vr]
        elif vr in _NUMBER_VRS:
            element.value = 0
        else:  # OB, OW, UN and the other binary VRs
            element.value = b"\0\0"

    def _dummy_item(self, item: Dataset) -> None:
        for element in list(item):
            if BaseTag(element.tag).is_private:
                del item[element.tag]
            elif element.VR == "UI":
                self._replace_uids(element)
            else:
                self._dummy(element)


def _wsi_type(dataset: Dataset, keyword: str) -> int:
    """The attribute's Type in the VL WSI IOD where it decides a combined code (3: optional or absent)."""
    if keyword == "ReferencedImageSequence" and "ReferencedSeriesSequence" in dataset:
        return 1  # Common Instance Reference (C.12.2) lists these references: they must stay
    return _WSI_TYPE.get(keyword, 3)


def _resolve(code: str, iod_type: int) -> str:
    """The one action a code stands for, given the attribute's Type in the IOD (3 when optional or absent)."""
    options = code.split("/")
    if len(options) == 1:
        return code
    if iod_type == 2 and "Z" in options:
        return "Z"
    if iod_type in (1, 2):
        return options[-1]  # D, or U* (the references kept, their UIDs replaced)
    return options[0]


def _values(element: DataElement) -> Iterable[str]:
    if element.VM == 0:
        return []
    return [str(item) for item in element.value] if element.VM > 1 else [str(element.value)]


def _code(value: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, "DCM", meaning
    return item
