"""DICOM whole-slide de-identification: label and overview instances dropped, headers anonymised
consistently across the slide's instances, frames copied byte for byte."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest

from tests.fixtures.slides import MPP, dicom_frames, make_dicom_wsi
from workers.deidentify import (
    DeidentificationFailed,
    deidentify_slide,
    identifiers_from_metadata,
    verify_deidentified,
)

PHI = {
    "patientName": "DOE^JANE",
    "accessionNumber": "ACC2024000123",
    "lisSlideId": "S24-1234-A1",
    "studyInstanceUid": "1.2.826.0.1.3680043.8.498.1234567",
    "seriesInstanceUid": "1.2.826.0.1.3680043.8.498.7654321",
}
MARKER = b"LABEL-MARKER-7f3a9c1e5d"
SIZE = 2048


@pytest.fixture(params=[False, True], ids=["native", "encapsulated"])
def encapsulated(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


def test_dicom_slide_loses_label_overview_and_phi_but_keeps_its_frames(
    encapsulated: bool, tmp_path: Path
) -> None:
    staged = make_dicom_wsi(
        tmp_path / "staged", width=SIZE, height=SIZE, phi=PHI, label_marker=MARKER, encapsulated=encapsulated
    )
    before = {
        int(pydicom.dcmread(path, stop_before_pixels=True).TotalPixelMatrixColumns): dicom_frames(path)
        for path in staged
        if "VOLUME" in pydicom.dcmread(path, stop_before_pixels=True).ImageType
    }
    everything = b"".join(path.read_bytes() for path in staged)
    assert MARKER in everything and all(value.encode() in everything for value in PHI.values())

    files, report = deidentify_slide(staged, run_id="run-9", out_dir=tmp_path / "out")

    assert report.format == "dicom"
    assert sorted(report.removed_images) == ["label", "overview"]
    assert {
        "PatientName",
        "AccessionNumber",
        "ContainerIdentifier",
        "StudyInstanceUID",
        "private tags",
    } <= set(report.blanked_fields)
    assert [path.name for path in files] == ["run-9-001.dcm", "run-9-002.dcm", "run-9-003.dcm"]
    assert not any(path.exists() for path in staged)

    headers = [pydicom.dcmread(path, stop_before_pixels=True) for path in files]
    for header in headers:
        assert not {"LABEL", "OVERVIEW"} & set(header.ImageType)
        assert header.SOPInstanceUID == header.file_meta.MediaStorageSOPInstanceUID
        assert header.ContainerIdentifier == "run-9"
        assert header.PatientIdentityRemoved == "YES"
    for attribute in (
        "StudyInstanceUID",
        "SeriesInstanceUID",
        "FrameOfReferenceUID",
        "PatientName",
        "PatientID",
    ):
        values = {str(header.get(attribute)) for header in headers}
        assert len(values) == 1, f"{attribute} must stay consistent across the slide's instances"
    assert str(headers[0].StudyInstanceUID) != PHI["studyInstanceUid"]

    everything = b"".join(path.read_bytes() for path in files)
    for needle in (MARKER, MARKER[::-1], b"ACME PATHOLOGY", *(value.encode() for value in PHI.values())):
        assert needle not in everything, f"{needle!r} survived"

    for path, header in zip(files, headers, strict=True):
        width = int(header.TotalPixelMatrixColumns)
        assert dicom_frames(path) == before[width], "frames must be byte-identical"
        spacing = header.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing
        assert float(spacing[0]) == pytest.approx(MPP / 1000 * SIZE / width)
    assert int(headers[0].TotalPixelMatrixRows) == SIZE

    identifiers = identifiers_from_metadata(
        {**PHI, "examDateTime": "2024-03-01T10:22:00"}, [p.name for p in staged]
    )
    verify_deidentified(files, identifiers=identifiers)


def test_two_runs_of_one_slide_cannot_be_linked(tmp_path: Path) -> None:
    """A fresh salt per run: the same study gets unrelated UIDs in two de-identified copies."""
    uids = []
    for run in ("a", "b"):
        staged = make_dicom_wsi(tmp_path / run, width=512, height=512, phi=PHI, label_marker=MARKER)
        files, _ = deidentify_slide(staged, run_id=f"run-{run}", out_dir=tmp_path / f"out-{run}")
        uids.append(str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID))
    assert uids[0] != uids[1]


def test_a_tissue_image_with_the_label_burned_in_is_refused(tmp_path: Path) -> None:
    staged = make_dicom_wsi(tmp_path / "staged", width=512, height=512, phi=PHI, label_marker=MARKER)
    volume = staged[0]
    dataset = pydicom.dcmread(volume)
    dataset.SpecimenLabelInImage = "YES"
    dataset.save_as(volume, enforce_file_format=True)

    with pytest.raises(DeidentificationFailed) as caught:
        deidentify_slide(staged, run_id="run-1", out_dir=tmp_path / "out")
    assert caught.value.field == "label image"
    assert "was not sent to Strand" in str(caught.value)
    assert not list((tmp_path / "out").iterdir()), "nothing is written for a refused slide"
