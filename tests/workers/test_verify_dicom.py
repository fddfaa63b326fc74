"""The DICOM read-back check refuses what PS3.15 does not allow, whoever left it there.

Each case takes a correctly de-identified slide, breaks one rule of the
profile in one instance with plain pydicom (as a buggy remover would), and
expects the check to name the attribute.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest

from tests.fixtures.dicom_slides import IDENTIFIERS, make_dicom_slide
from workers.deidentify import DeidentificationFailed, deidentify_slide, verify_deidentified


@pytest.fixture
def outgoing(tmp_path: Path) -> list[Path]:
    slide = make_dicom_slide(tmp_path / "staged", width=512, height=512, jpeg=False)
    files, _ = deidentify_slide(slide.paths, run_id="run-5", out_dir=tmp_path / "out")
    verify_deidentified(files, identifiers=IDENTIFIERS)
    return files


def _private(ds: pydicom.Dataset) -> None:
    ds.add_new(0x00290010, "LO", "VENDOR")
    ds.add_new(0x00291001, "LO", "nothing identifying")


def _label(ds: pydicom.Dataset) -> None:
    ds.ImageType = ["ORIGINAL", "PRIMARY", "LABEL", "NONE"]


def _nested_uid(ds: pydicom.Dataset) -> None:
    ds.DimensionOrganizationSequence[0].DimensionOrganizationUID = "1.2.826.0.1.3680043.8.498.5"


CASES: list[tuple[str, Callable[[pydicom.Dataset], None], str]] = [
    ("X attribute present", lambda ds: setattr(ds, "FrameComments", "checked by Dr Who"), "FrameComments"),
    ("Z attribute with a value", lambda ds: setattr(ds, "PatientName", "ANONYMIZED"), "PatientName"),
    ("D attribute kept", lambda ds: setattr(ds, "DeviceSerialNumber", "SN-4711"), "DeviceSerialNumber"),
    ("U attribute not new", lambda ds: setattr(ds, "FrameOfReferenceUID", "1.2.3.4"), "FrameOfReferenceUID"),
    ("unlisted UID not new", _nested_uid, "DimensionOrganizationUID"),
    ("private tag", _private, "private tag"),
    ("label image", _label, "label image"),
    ("burned-in annotation", lambda ds: setattr(ds, "BurnedInAnnotation", "YES"), "burned-in annotation"),
    ("identity flag", lambda ds: setattr(ds, "PatientIdentityRemoved", "NO"), "PatientIdentityRemoved"),
    (
        "Sectra identifier",
        lambda ds: setattr(ds, "SoftwareVersions", IDENTIFIERS["lisSlideId"]),
        "lisSlideId",
    ),
]


@pytest.mark.parametrize(
    ("broken", "field"), [(case[1], case[2]) for case in CASES], ids=[c[0] for c in CASES]
)
def test_verify_names_what_breaks_the_profile(
    outgoing: list[Path], broken: Callable[[pydicom.Dataset], None], field: str
) -> None:
    dataset = pydicom.dcmread(outgoing[1])
    broken(dataset)
    dataset.save_as(outgoing[1], enforce_file_format=True)
    with pytest.raises(DeidentificationFailed) as caught:
        verify_deidentified(outgoing, identifiers=IDENTIFIERS)
    assert caught.value.field == field


def test_verify_refuses_the_scanners_file_meta(outgoing: list[Path]) -> None:
    dataset = pydicom.dcmread(outgoing[0])
    dataset.file_meta.SourceApplicationEntityTitle = "SCANNER-7"
    dataset.save_as(outgoing[0], enforce_file_format=True)
    with pytest.raises(DeidentificationFailed) as caught:
        verify_deidentified(outgoing, identifiers={})
    assert caught.value.field == "SourceApplicationEntityTitle"


def test_verify_refuses_the_staged_slide_itself(tmp_path: Path) -> None:
    slide = make_dicom_slide(tmp_path / "staged", width=256, height=256, jpeg=False)
    with pytest.raises(DeidentificationFailed):
        verify_deidentified(slide.paths[:1], identifiers={})
