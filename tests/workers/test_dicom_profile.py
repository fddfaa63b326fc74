"""Our copy of PS3.15 Table E.1-1 is the pinned library's, and every attribute in it ends as its code says.

Oracle: dicom-anonymizer 2.1.0's table of the standard (a dev dependency,
scraped from DICOM 2026c by its maintainers) and the table's legend, written
out here: X absent, Z zero length, D a non-empty value without the original,
U a new UID under 2.25; a combined code allows any of its parts.
"""

from __future__ import annotations

import importlib
import re

import pytest
from dicomanonymizer.dicomfields_selector import ANONYMIZATION_CATEGORIES
from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence

from workers.deidentify.dicom_basic_profile import BasicProfile
from workers.deidentify.dicom_profile import BASIC_PROFILE, BASIC_PROFILE_REPEATING, EDITION

pinned = importlib.import_module(f"dicomanonymizer.dicom_anonymization_databases.dicomfields_{EDITION}")

CODES = {
    "D_TAGS": "D",
    "Z_TAGS": "Z",
    "X_TAGS": "X",
    "U_TAGS": "U",
    "Z_D_TAGS": "Z/D",
    "X_Z_TAGS": "X/Z",
    "X_D_TAGS": "X/D",
    "X_Z_D_TAGS": "X/Z/D",
    "X_Z_U_STAR_TAGS": "X/Z/U*",
}
TOKEN = "SECRET7"
# Where IOD conformance overrides a D: a Type 1C attribute whose condition (PS3.3 C.7.1.3: the approval
# number, which the profile removes) no longer holds must not be present.
IOD_OVERRIDES = {"ClinicalTrialProtocolEthicsCommitteeName": "X"}
ORIGINAL_UID = "1.2.826.0.1.3680043.8.498.424242"


def _pinned() -> tuple[dict[int, str], dict[tuple[int, int], str]]:
    exact: dict[int, str] = {}
    masked: dict[tuple[int, int], str] = {}
    for category in ANONYMIZATION_CATEGORIES:
        if category == "ALL_TAGS":
            continue
        for entry in getattr(pinned, category):
            if len(entry) == 2:
                exact[entry[0] << 16 | entry[1]] = CODES[category]
            else:
                masked[(entry[0] << 16 | entry[1], entry[2] << 16 | entry[3])] = CODES[category]
    return exact, masked


def test_our_table_is_the_pinned_librarys_table() -> None:
    exact, masked = _pinned()
    assert len(exact) > 600, "the pinned table lost most of Table E.1-1"
    missing = {f"{tag:08X}": code for tag, code in exact.items() if tag not in BASIC_PROFILE}
    extra = {f"{tag:08X}": code for tag, code in BASIC_PROFILE.items() if tag not in exact}
    changed = {
        f"{tag:08X}": (BASIC_PROFILE[tag], code)
        for tag, code in exact.items()
        if BASIC_PROFILE.get(tag) not in (None, code)
    }
    assert (missing, extra, changed) == ({}, {}, {}), "regenerate workers/deidentify/dicom_profile.py"
    assert {(tag, mask): code for tag, mask, code in BASIC_PROFILE_REPEATING} == masked


def _value(vr: str) -> object:
    """A value of `vr` that a test can recognise: text carries TOKEN, UIDs are ORIGINAL_UID."""
    samples: dict[str, object] = {
        "DA": "19710203",
        "TM": "111111",
        "DT": "19710203111111",
        "AS": "054Y",
        "IS": "7",
        "DS": "7.5",
        "CS": TOKEN,
        "AE": TOKEN,
        "UI": ORIGINAL_UID,
        "US": 7,
        "SS": 7,
        "UL": 7,
        "SL": 7,
        "FL": 7.5,
        "FD": 7.5,
        "SV": 7,
        "UV": 7,
        "AT": 0x00100010,
        "UR": f"http://example.org/{TOKEN}",
    }
    if vr in samples:
        return samples[vr]
    if vr in {"OB", "OW", "OD", "OF", "OL", "OV", "UN"}:
        return TOKEN.encode() + b"\0"
    return f"{TOKEN} DOE^JANE"  # LO, LT, SH, ST, UC, UT, PN


def _item() -> Dataset:
    item = Dataset()
    item.CodeMeaning = f"{TOKEN} of DOE^JANE"
    item.ReferencedSOPInstanceUID = ORIGINAL_UID
    return item


def _every_listed_attribute() -> tuple[Dataset, dict[str, str]]:
    exact, _ = _pinned()
    dataset, codes = Dataset(), {}
    for tag, code in exact.items():
        keyword = keyword_for_tag(tag)
        if not keyword or tag >> 16 in (0x0000, 0x0002, 0xFFFA, 0xFFFC):
            continue  # command, file meta and trailing elements are not in a stored data set's body
        vr = dictionary_VR(tag)
        if " or " in vr:
            vr = vr.split(" or ")[0]
        value: object = DicomSequence([_item()]) if vr == "SQ" else _value(vr)
        dataset.add_new(tag, vr, value)
        codes[keyword] = code
    return dataset, codes


def _outcome(dataset: Dataset, keyword: str) -> str:
    if keyword not in dataset:
        return "X"
    element = dataset[keyword]
    if element.VR == "SQ":
        if len(element.value) == 0:
            return "Z"
        text = repr(element.value)
        if TOKEN in text:
            return "kept" if "CodeMeaning" in text and "2.25." not in text else "U*"
        return "D"
    if element.VM == 0 or element.value in (None, "", b""):
        return "Z"
    shown = str(element.value)
    if element.VR == "UI":
        return "U" if shown.startswith("2.25.") and ORIGINAL_UID not in shown else "kept"
    if TOKEN in shown or TOKEN.encode() in (element.value if isinstance(element.value, bytes) else b""):
        return "kept"
    return "D" if shown != str(_value(element.VR)) else "kept"


def test_every_attribute_of_table_e11_ends_as_its_action_code_allows() -> None:
    dataset, codes = _every_listed_attribute()
    assert len(codes) > 550
    BasicProfile("run-1").apply(dataset)
    wrong = {}
    for keyword, code in codes.items():
        outcome = _outcome(dataset, keyword)
        allowed = set(code.split("/")) | set(IOD_OVERRIDES.get(keyword, ""))
        if "D" in allowed and dataset.get(keyword) is not None and dataset[keyword].VR == "UI":
            allowed.add("U")  # a dummy UID is a new one
        if outcome not in allowed:
            wrong[keyword] = (code, outcome)
    assert wrong == {}


def test_a_d_attribute_gets_a_value_and_a_u_attribute_a_uuid_uid() -> None:
    dataset = Dataset()
    dataset.ClinicalTrialSponsorName = f"{TOKEN} Pharma"  # D
    dataset.ContainerIdentifier = "S24-1234-A1"  # D, Type 1 in the Specimen module
    dataset.StudyInstanceUID = ORIGINAL_UID  # U
    dataset.DeviceSerialNumber = "SN-0001"  # X/Z/D, Type 1 in Enhanced General Equipment
    BasicProfile("run-9").apply(dataset)
    assert (
        dataset.ClinicalTrialSponsorName not in ("", None) and TOKEN not in dataset.ClinicalTrialSponsorName
    )
    assert dataset.ContainerIdentifier == "run-9"
    assert re.fullmatch(r"2\.25\.[1-9]\d{0,38}", dataset.StudyInstanceUID)
    assert dataset.DeviceSerialNumber not in ("", None, "SN-0001")
    assert dataset.PatientIdentityRemoved == "YES"
    assert EDITION in dataset.DeidentificationMethod
    assert [item.CodeValue for item in dataset.DeidentificationMethodCodeSequence] == ["113100", "113101"]


@pytest.mark.parametrize(
    ("tag", "vr"),
    [(0x50000010, "US"), (0x50023000, "OB"), (0x60003000, "OW"), (0x60024000, "LT"), (0x00091001, "LO")],
    ids=["curve", "curve-data", "overlay-data", "overlay-comments", "private"],
)
def test_repeating_groups_and_private_attributes_are_removed(tag: int, vr: str) -> None:
    dataset = Dataset()
    if tag >> 16 == 0x0009:
        dataset.add_new(0x00090010, "LO", "ACME")
    dataset.add_new(tag, vr, b"\0\1" if vr.startswith("O") else (1 if vr == "US" else TOKEN))
    BasicProfile("run-1").apply(dataset)
    assert tag not in dataset
    assert not any(element.tag.is_private for element in dataset)
