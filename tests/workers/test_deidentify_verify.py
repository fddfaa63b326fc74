"""Fail closed: formats we cannot de-identify are refused, and the read-back check names the field
(never the value) of anything identifying left in a file's text or name."""

from __future__ import annotations

import struct
from pathlib import Path

import pydicom
import pytest
import tifffile
from sectra_client.schemas.image import ImageMetadata

from tests.fixtures.slides import make_dicom_wsi, make_philips_tiff, make_svs
from workers.deidentify import (
    DeidentificationFailed,
    UnsupportedSlideFormat,
    deidentify_slide,
    identifiers_from_metadata,
    verify_deidentified,
)
from workers.deidentify.matching import IdentifierMatcher

PHI = {"patientName": "DOE^JANE", "accessionNumber": "ACC-2024-000123", "lisSlideId": "S24-1234-A1"}
MARKER = b"LABEL-MARKER-7f3a9c1e5d"
IDENTIFIERS = {"accessionNumber": PHI["accessionNumber"], "lisSlideId": PHI["lisSlideId"]}


def _mrxs(folder: Path) -> list[Path]:
    folder.mkdir(parents=True)
    index = folder / "ACC-2024-000123.mrxs"
    index.write_bytes(b"\x00" * 300)
    data = folder / "Slidedat.ini"
    data.write_text("[GENERAL]\nSLIDE_ID=ACC-2024-000123\n")
    return [index, data]


def test_an_incomplete_mrxs_is_refused_in_plain_words(tmp_path: Path) -> None:
    """MRXS is de-identified (tests/workers/test_deidentify_mrxs.py); one without its tree is refused."""
    with pytest.raises(UnsupportedSlideFormat) as caught:
        deidentify_slide(_mrxs(tmp_path / "staged"), run_id="run-1", out_dir=tmp_path / "out")
    assert str(caught.value) == (
        "This slide's format (MRXS with an incomplete Slidedat.ini) cannot be de-identified; "
        "it was not sent to Strand"
    )
    assert not list((tmp_path / "out").iterdir())


def test_unrecognised_bytes_are_refused(tmp_path: Path) -> None:
    staged = tmp_path / "slide.bin"
    staged.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 200)
    with pytest.raises(UnsupportedSlideFormat) as caught:
        deidentify_slide([staged], run_id="run-1", out_dir=tmp_path / "out")
    assert caught.value.format_name == "unrecognised"
    assert staged.exists(), "a refused slide is left where it was staged"


def test_deidentify_false_only_renames_and_says_so(tmp_path: Path) -> None:
    staged = _mrxs(tmp_path / "staged")
    files, report = deidentify_slide(staged, run_id="run-1", out_dir=tmp_path / "out", enabled=False)
    assert report.skipped and report.format == "MRXS"
    assert report.output_files == ["run-1.mrxs", "run-1/Slidedat.ini"]
    assert files == [tmp_path / "out" / "run-1.mrxs", tmp_path / "out" / "run-1" / "Slidedat.ini"]
    assert report.removed_images == [] and report.blanked_fields == []


def test_deidentify_false_leaves_a_supported_slide_untouched(tmp_path: Path) -> None:
    staged = make_svs(tmp_path / "ACC-2024-000123.svs", width=512, height=512, phi=PHI, label_marker=MARKER)
    original = staged.read_bytes()
    files, report = deidentify_slide([staged], run_id="run-1", out_dir=tmp_path / "out", enabled=False)
    assert report.skipped and report.format == "aperio-svs"
    assert [path.name for path in files] == ["run-1.svs"]
    assert files[0].read_bytes() == original


def test_run_id_must_be_a_plain_token(tmp_path: Path) -> None:
    staged = make_svs(tmp_path / "s.svs", width=512, height=512, phi=PHI, label_marker=MARKER)
    with pytest.raises(ValueError):
        deidentify_slide([staged], run_id="../elsewhere", out_dir=tmp_path / "out")


def test_verify_names_the_field_found_in_a_file_name(tmp_path: Path) -> None:
    staged = make_svs(tmp_path / "a.svs", width=512, height=512, phi=PHI, label_marker=MARKER)
    files, _ = deidentify_slide([staged], run_id="run-1", out_dir=tmp_path / "out")
    leaky = files[0].rename(files[0].with_name(f"{PHI['lisSlideId']}.svs"))
    with pytest.raises(DeidentificationFailed) as caught:
        verify_deidentified([leaky], identifiers=IDENTIFIERS)
    assert (caught.value.field, caught.value.location) == ("lisSlideId", "a file name")
    assert PHI["lisSlideId"] not in str(caught.value)


def test_verify_catches_an_identifier_left_in_a_kept_text_field(tmp_path: Path) -> None:
    """Philips' Software is kept (readers recognise the format by it); a scanner that writes the
    accession number there is caught."""
    staged = make_philips_tiff(
        tmp_path / "a.tiff",
        width=512,
        height=512,
        phi={"patientName": "DOE^JANE"},
        label_marker=MARKER,
        software=f"Philips DP {PHI['accessionNumber']}",
    )
    files, _ = deidentify_slide([staged], run_id="run-1", out_dir=tmp_path / "out")
    with pytest.raises(DeidentificationFailed) as caught:
        verify_deidentified(files, identifiers=IDENTIFIERS)
    assert caught.value.field == "accessionNumber"
    assert caught.value.location == "the Software tag of page 0"
    assert PHI["accessionNumber"] not in str(caught.value)


def test_verify_catches_a_label_that_was_never_removed(tmp_path: Path) -> None:
    staged = make_svs(tmp_path / "out" / "run-1.svs", width=512, height=512, phi={}, label_marker=MARKER)
    with pytest.raises(DeidentificationFailed) as caught:
        verify_deidentified([staged], identifiers={})
    assert caught.value.field == "label image"


def test_verify_catches_an_identifier_in_a_dicom_attribute(tmp_path: Path) -> None:
    staged = make_dicom_wsi(tmp_path / "staged", width=256, height=256, phi=PHI, label_marker=MARKER)
    files, _ = deidentify_slide(staged, run_id="run-1", out_dir=tmp_path / "out")
    dataset = pydicom.dcmread(files[0])
    dataset.SoftwareVersions = f"scanner {PHI['lisSlideId']}"
    dataset.save_as(files[0], enforce_file_format=True)
    with pytest.raises(DeidentificationFailed) as caught:
        verify_deidentified(files, identifiers=IDENTIFIERS)
    assert (caught.value.field, caught.value.location) == (
        "lisSlideId",
        "the DICOM attribute SoftwareVersions",
    )


def test_identifiers_come_from_sectra_phi_metadata_and_file_names() -> None:
    metadata = ImageMetadata.model_validate(
        {
            "id": "slide-5f2c",
            "isStreamable": True,
            "imageSize": {"width": 10, "height": 10},
            "tileSize": {"width": 10, "height": 10},
            "micronsPerPixel": 0.25,
            "focalPlanes": [],
            "opticalPaths": [],
            "storedTileFormat": {"mimeType": "image/jpeg", "extension": "jpg"},
            "availableTileFormats": [],
            "fileFormat": {"mimeType": "image/tiff"},
            "staining": {"displayName": "HE"},
            "block": {"displayName": "A1"},
            "accessionNumber": "ACC-2024-000123",
            "lisSlideId": "S24-1234-A1",
            "examId": "EX-998877",
            "examDateTime": "2024-03-01T10:22:00Z",
            "studyInstanceUid": "1.2.3.4.5",
            "examFreeFields": [{"name": "Referrer", "value": "Dr Who"}, {"Ward": "Oncology 3"}],
        }
    )
    found = identifiers_from_metadata(metadata, ["uploads/ACC-2024-000123 slide.svs", "image-2.dcm"])
    assert found["accessionNumber"] == "ACC-2024-000123"
    assert found["slideId"] == "slide-5f2c"
    assert found["examDateTime as YYYY:MM:DD"] == "2024:03:01"
    assert found["examDateTime as MM/DD/YY"] == "03/01/24"
    assert found["examFreeFields.Referrer"] == "Dr Who"
    assert found["examFreeFields.Ward"] == "Oncology 3"
    assert found["original file name 1"] == "ACC-2024-000123 slide.svs"
    assert found["original file name 1 without extension"] == "ACC-2024-000123 slide"
    assert "original file name 2" not in found, "a generic name identifies no one"


def test_matcher_ignores_short_noise_and_finds_base64() -> None:
    matcher = IdentifierMatcher({"examId": "4711", "short": "12", "accessionNumber": "ACC-2024-000123"})
    assert matcher.find(b"AppMag = 12|MPP = 0.47112") is None, "tokens, not substrings, for short ids"
    assert matcher.find(b"exam 4711 done") == "examId"
    assert matcher.find(b"barcode QUNDLTIwMjQtMDAwMTIz here") == "accessionNumber"
    assert matcher.find(b"x acc-2024-000123 y") == "accessionNumber", "case-insensitive"


def test_verify_fails_closed_when_openslide_cannot_read_the_output(tmp_path: Path) -> None:
    """An output an independent reader cannot open proves nothing: the run fails, naming the reader."""
    staged = make_svs(tmp_path / "a.svs", width=512, height=512, phi=PHI, label_marker=MARKER)
    files, _ = deidentify_slide([staged], run_id="run-1", out_dir=tmp_path / "out")
    with tifffile.TiffFile(files[0]) as tif:
        entry_at = tif.pages.first.tags[259].offset  # Compression (TIFF 6.0 Section 8)
    with files[0].open("r+b") as fh:
        fh.seek(entry_at + 8)
        fh.write(struct.pack("<H", 60000))  # no codec has this number
    with pytest.raises(DeidentificationFailed) as caught:
        verify_deidentified(files, identifiers=IDENTIFIERS)
    assert caught.value.location == "openslide"
    assert str(caught.value).startswith("De-identification could not be confirmed: openslide could not read")
