"""3DHISTECH MIRAX de-identification, judged by OpenSlide and the standard library, not by our code.

The slide (`tests/fixtures/mrxs.py`) is staged flat, the way a Sectra download of
several files lands (`sectra_adapter._filenames` keeps a name's last component).
Oracles: OpenSlide opens input and output, lists no associated image in the
output and reads every level pixel-identical to the input; `configparser` reads
Slidedat.ini; a raw byte search finds no PHI in any output file; the layout rule
"Index.dat starts with the version and the SLIDE_ID" (openslide.org/formats/mirax)
is written out in the test.
"""

from __future__ import annotations

import configparser
import shutil
from pathlib import Path

import numpy as np
import openslide
import pytest

from sectra_adapter._download import write_response
from tests.fixtures.mrxs import MrxsSlide, make_mrxs
from workers.deidentify import (
    DeidentificationError,
    DeidentificationFailed,
    UnsupportedSlideFormat,
    deidentify_slide,
    identifiers_from_metadata,
    verify_deidentified,
)
from workers.deidentify import mrxs as mrxs_module

PHI = {"patientName": "DOE^JANE", "accessionNumber": "ACC-2024-000123", "lisSlideId": "S24-1234-A1"}
NAME = f"{PHI['accessionNumber']}.mrxs"
RUN = "run-mrxs-1"
# Every identifying value the fixture writes, beyond PHI: its GUID and its dates in both forms.
SLIDE_ID = "4E8B1C2D9F3A4B5C8D7E6F1A2B3C4D5E"
PHI_BYTES = [*(v.encode() for v in PHI.values()), SLIDE_ID.encode(), b"01/03/2024", b"2024-03-01"]


def _staged(tmp_path: Path) -> tuple[MrxsSlide, list[Path]]:
    """The original slide in `original/` and a flat copy of its files in `staged/`."""
    slide = make_mrxs(tmp_path / "original" / NAME, phi=PHI, slide_id=SLIDE_ID)
    staged = tmp_path / "staged"
    staged.mkdir()
    return slide, [Path(shutil.copy(path, staged / path.name)) for path in slide.files]


def _pixels(path: Path) -> list[np.ndarray]:
    with openslide.OpenSlide(str(path)) as slide:
        return [
            np.asarray(slide.read_region((0, 0), n, size)) for n, size in enumerate(slide.level_dimensions)
        ]


def _identifiers(names: list[str]) -> dict[str, str]:
    return identifiers_from_metadata(
        {"accessionNumber": PHI["accessionNumber"], "lisSlideId": PHI["lisSlideId"]}, names
    )


def test_the_fixture_is_a_real_mrxs_with_label_macro_and_phi(tmp_path: Path) -> None:
    slide, _ = _staged(tmp_path)
    with openslide.OpenSlide(str(slide.mrxs)) as read:
        assert read.properties["openslide.vendor"] == "mirax"
        assert set(read.associated_images) == {"label", "macro", "thumbnail"}
        assert read.level_count == 3
    everything = b"".join(path.read_bytes() for path in slide.files)
    assert all(value in everything for value in PHI_BYTES), "premise: the input carries every identifier"


def test_output_opens_without_associated_images_and_reads_identical_tissue(tmp_path: Path) -> None:
    slide, staged = _staged(tmp_path)
    before = _pixels(slide.mrxs)
    files, report = deidentify_slide(staged, run_id=RUN, out_dir=tmp_path / "out")

    assert report.format == "MRXS"
    assert report.output_files == [
        f"{RUN}.mrxs",
        f"{RUN}/Slidedat.ini",
        f"{RUN}/Index.dat",
        f"{RUN}/Data0000.dat",
    ]
    assert sorted(report.removed_images) == sorted(["label", "macro", "thumbnail", "whole-slide photograph"])
    with openslide.OpenSlide(str(files[0])) as read:
        assert dict(read.associated_images) == {}
        assert read.properties["openslide.vendor"] == "mirax"
    after = _pixels(files[0])
    assert len(after) == len(before)
    for level, (old, new) in enumerate(zip(before, after, strict=True)):
        assert np.array_equal(old, new), f"level {level} differs"
    assert not any(path.exists() for path in staged), "the staged originals are moved, not copied"


def test_no_identifier_is_left_in_any_byte_of_any_output_file(tmp_path: Path) -> None:
    _, staged = _staged(tmp_path)
    files, report = deidentify_slide(staged, run_id=RUN, out_dir=tmp_path / "out")
    for path in files:
        raw = path.read_bytes()
        for value in PHI_BYTES:
            assert value not in raw, f"{value!r} survived in {path.name}"
        assert PHI["accessionNumber"] not in path.name
    # What the report names it blanked, never values.
    assert "Slidedat.GENERAL.SLIDE_NAME" in report.blanked_fields
    assert not any(value.decode() in " ".join(report.blanked_fields) for value in PHI_BYTES)


def test_slidedat_read_with_configparser_has_blank_phi_keys_and_a_matching_new_slide_id(
    tmp_path: Path,
) -> None:
    _, staged = _staged(tmp_path)
    files, _ = deidentify_slide(staged, run_id=RUN, out_dir=tmp_path / "out")
    ini = configparser.RawConfigParser(strict=False, interpolation=None)
    ini.optionxform = str  # type: ignore[assignment,method-assign]
    ini.read_string(files[1].read_bytes().decode("utf-8-sig"))
    for key in (
        "SLIDE_NAME",
        "PROJECT_NAME",
        "SLIDE_CREATIONDATETIME",
        "SLIDE_UTC_CREATIONDATETIME",
        "OBJECTIVE_NAME",
    ):
        assert ini.get("GENERAL", key) == "", key
    every_key = {key for section in ini.sections() for key, value in ini.items(section) if value}
    assert (
        not {"SCANNER_HARDWARE_ID", "BARCODE_TEXT", "BARCODE_IMAGE_TYPE", "THUMBNAIL_IMAGE_TYPE"} & every_key
    )
    names = [
        ini.get("HIERARCHICAL", f"NONHIER_{i}_NAME")
        for i in range(ini.getint("HIERARCHICAL", "NONHIER_COUNT"))
    ]
    assert names == ["VIMSLIDE_POSITION_BUFFER"], "only the tile positions stay"
    new_id = ini.get("GENERAL", "SLIDE_ID")
    assert new_id != SLIDE_ID and len(new_id) == len(SLIDE_ID)
    # openslide.org/formats/mirax: "The index file starts with a five-character ASCII version
    # string, followed by the SLIDE_ID from the slidedat file"; so do the data files (wsi-anon).
    assert files[2].read_bytes()[:37] == b"01.02" + new_id.encode()
    assert files[3].read_bytes()[:37] == b"01.02" + new_id.encode()


def test_a_second_run_gets_another_slide_id(tmp_path: Path) -> None:
    _, staged = _staged(tmp_path / "a")
    first, _ = deidentify_slide(staged, run_id="run-a", out_dir=tmp_path / "a" / "out")
    _, staged = _staged(tmp_path / "b")
    second, _ = deidentify_slide(staged, run_id="run-b", out_dir=tmp_path / "b" / "out")
    assert first[2].read_bytes()[5:37] != second[2].read_bytes()[5:37]


def test_running_again_on_its_own_output_changes_nothing(tmp_path: Path) -> None:
    _, staged = _staged(tmp_path)
    files, _ = deidentify_slide(staged, run_id=RUN, out_dir=tmp_path / "out")
    contents = [path.read_bytes() for path in files]
    again, report = deidentify_slide([files[0]], run_id=RUN, out_dir=tmp_path / "out")
    assert again == files
    assert [path.read_bytes() for path in again] == contents
    assert report.removed_images == []


def test_a_crash_after_the_index_was_replaced_is_finished_by_a_rerun(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    slide, staged = _staged(tmp_path)
    before = _pixels(slide.mrxs)
    real_replace = mrxs_module._replace

    def crash_on_slidedat(path: Path, content: bytes) -> None:
        if path.name == "Slidedat.ini":
            raise KeyboardInterrupt("worker killed")
        real_replace(path, content)

    monkeypatch.setattr(mrxs_module, "_replace", crash_on_slidedat)
    with pytest.raises(KeyboardInterrupt):
        deidentify_slide(staged, run_id=RUN, out_dir=tmp_path / "out")
    monkeypatch.setattr(mrxs_module, "_replace", real_replace)
    # What workers/stages/deid.py re-reads after a crash: the files (not directories) left in `outgoing`.
    leftovers = sorted(p for p in (tmp_path / "out").iterdir() if p.is_file())
    files, _ = deidentify_slide(leftovers, run_id=RUN, out_dir=tmp_path / "out")
    verify_deidentified(files, identifiers=_identifiers([NAME]))
    assert all(np.array_equal(a, b) for a, b in zip(before, _pixels(files[0]), strict=True))


def test_a_mrxs_beside_its_directory_is_one_slide(tmp_path: Path) -> None:
    slide = make_mrxs(tmp_path / NAME, phi=PHI, slide_id=SLIDE_ID)
    files, _ = deidentify_slide([slide.mrxs], run_id=RUN, out_dir=tmp_path / "out")
    assert files[0] == tmp_path / "out" / f"{RUN}.mrxs"
    verify_deidentified(files, identifiers=_identifiers([NAME]))


def test_a_set_without_its_data_file_is_refused_before_anything_moves(tmp_path: Path) -> None:
    _, staged = _staged(tmp_path)
    data = next(path for path in staged if path.name == "Data0000.dat")
    data.unlink()
    with pytest.raises(UnsupportedSlideFormat) as caught:
        deidentify_slide([p for p in staged if p != data], run_id=RUN, out_dir=tmp_path / "out")
    assert "MRXS" in str(caught.value) and "not sent to Strand" in str(caught.value)
    assert all(path.exists() for path in staged if path != data)
    assert not list((tmp_path / "out").iterdir())


def test_verification_passes_on_the_output_with_every_staged_name_as_an_identifier(tmp_path: Path) -> None:
    """As the pipeline calls it: the original names of all staged files are identifiers, and the parts'
    fixed names (Slidedat.ini, Index.dat, Data0000.dat), which the output keeps, must not count."""
    _, staged = _staged(tmp_path)
    names = [path.name for path in staged]
    files, _ = deidentify_slide(staged, run_id=RUN, out_dir=tmp_path / "out")
    verify_deidentified(files, identifiers=_identifiers(names))


def test_verification_fails_closed_on_an_identifier_written_back(tmp_path: Path) -> None:
    _, staged = _staged(tmp_path)
    files, _ = deidentify_slide(staged, run_id=RUN, out_dir=tmp_path / "out")
    slidedat = files[1]
    slidedat.write_bytes(slidedat.read_bytes() + f"[EXTRA]\r\nNOTE = {PHI['accessionNumber']}\r\n".encode())
    with pytest.raises(DeidentificationFailed) as caught:
        verify_deidentified(files, identifiers=_identifiers([NAME]))
    assert PHI["accessionNumber"] not in str(caught.value)


def test_verification_fails_closed_on_a_phi_key_even_without_identifiers_from_sectra(tmp_path: Path) -> None:
    _, staged = _staged(tmp_path)
    files, _ = deidentify_slide(staged, run_id=RUN, out_dir=tmp_path / "out")
    text = files[1].read_bytes().replace(b"PROJECT_NAME = \r\n", b"PROJECT_NAME = Smith research\r\n")
    files[1].write_bytes(text)
    with pytest.raises(DeidentificationFailed, match="PROJECT_NAME"):
        verify_deidentified(files, identifiers={})


def test_verification_fails_closed_when_the_label_record_is_back(tmp_path: Path) -> None:
    slide, staged = _staged(tmp_path)
    files, _ = deidentify_slide(staged, run_id=RUN, out_dir=tmp_path / "out")
    # Tamper: the original Slidedat.ini and Index.dat (label, macro and preview records) over the output.
    shutil.copy(slide.slidedat, files[1])
    shutil.copy(slide.index, files[2])
    with pytest.raises(DeidentificationError):
        verify_deidentified(files, identifiers={})


def test_verification_fails_closed_when_the_label_pixels_are_back(tmp_path: Path) -> None:
    slide, _ = _staged(tmp_path)
    restored = tmp_path / "restored" / "run-x.mrxs"
    restored.parent.mkdir()
    shutil.copytree(slide.directory, restored.with_suffix(""))
    restored.write_bytes(b"")
    with pytest.raises(DeidentificationFailed, match="image"):
        verify_deidentified([restored, *sorted(restored.with_suffix("").iterdir())], identifiers={})


def test_a_label_that_shares_bytes_with_a_tile_is_refused(tmp_path: Path) -> None:
    """Zeroing such a label would damage the tissue; leaving it would leak it. The index is edited here
    by the format's own rule: root pointer at 5 + len(SLIDE_ID) + 4, one table entry per record, a list
    head [0, page], a page [count, next, 0, 0, offset, length, fileno]."""
    _, staged = _staged(tmp_path)
    index = next(path for path in staged if path.name == "Index.dat")
    raw = bytearray(index.read_bytes())

    def at(offset: int) -> int:
        return int.from_bytes(raw[offset : offset + 4], "little", signed=True)

    hier_table, nonhier_table = at(37), at(41)
    first_tile_page = at(at(hier_table) + 4)
    tile_offset = at(first_tile_page + 8 + 4)  # item 0: [image index, offset, length, fileno]
    label_page = at(at(nonhier_table + 4 * 1) + 4)  # record 1: ScanDataLayer_SlideBarcode
    raw[label_page + 16 : label_page + 20] = tile_offset.to_bytes(4, "little")
    index.write_bytes(bytes(raw))
    with pytest.raises(UnsupportedSlideFormat, match="shares bytes with its tiles"):
        deidentify_slide(staged, run_id=RUN, out_dir=tmp_path / "out")
    assert all(path.exists() for path in staged)


def test_a_multipart_download_with_folder_names_stages_as_one_slide(tmp_path: Path) -> None:
    """A Sectra response with one part per file (RFC 2046 multipart/related), parts named with their
    folder as a server would (`<stem>/Data0000.dat`), lands flat in the staging directory
    (sectra_adapter keeps a name's last component) and is still de-identified as one slide."""
    slide = make_mrxs(tmp_path / "original" / NAME, phi=PHI, slide_id=SLIDE_ID)
    boundary = "mrxs-parts-7d1f"
    body = bytearray()
    for path in slide.files:
        name = path.name if path == slide.mrxs else f"{slide.directory.name}/{path.name}"
        body += f'--{boundary}\r\nContent-Disposition: attachment; filename="{name}"\r\n'.encode()
        body += b"Content-Type: application/octet-stream\r\n\r\n" + path.read_bytes() + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    headers = {"content-type": f'multipart/related; boundary="{boundary}"', "content-length": str(len(body))}
    staged = write_response(
        headers, [bytes(body[i : i + 65536]) for i in range(0, len(body), 65536)], tmp_path / "staged"
    )
    assert sorted(f.path.name for f in staged) == sorted([NAME, "Slidedat.ini", "Index.dat", "Data0000.dat"])
    files, _ = deidentify_slide([f.path for f in staged], run_id=RUN, out_dir=tmp_path / "out")
    verify_deidentified(files, identifiers=_identifiers([f.path.name for f in staged]))
    assert all(np.array_equal(a, b) for a, b in zip(_pixels(slide.mrxs), _pixels(files[0]), strict=True))


def test_comments_in_slidedat_are_dropped_not_kept(tmp_path: Path) -> None:
    _, staged = _staged(tmp_path)
    slidedat = next(path for path in staged if path.name == "Slidedat.ini")
    slidedat.write_bytes(slidedat.read_bytes() + f"; scanned for {PHI['patientName']}\r\n".encode())
    files, report = deidentify_slide(staged, run_id=RUN, out_dir=tmp_path / "out")
    assert PHI["patientName"].encode() not in files[1].read_bytes()
    assert "Slidedat.ini comments" in report.blanked_fields
