"""TIFF-family de-identification on generated slides of every supported kind.

Each slide carries a label and a macro whose pixels spell a marker, and fake
PHI in its vendor's text fields. After the stage: no label or macro page, no
marker byte and no PHI string anywhere in the file (raw search), the tissue
tiles byte-identical and in place, and the file still a slide of the same size
and pixel spacing.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import openslide
import pytest
import tifffile
from tifffile.tifffile import svs_description_metadata

from tests.fixtures.slides import (
    LABEL_SHAPE,
    MACRO_SHAPE,
    MPP,
    make_bif,
    make_generic_tiff,
    make_ndpi,
    make_philips_tiff,
    make_svs,
    page_segments,
)
from workers.deidentify import deidentify_slide, identifiers_from_metadata, verify_deidentified
from workers.deidentify.text import scrub_philips_xml, scrub_svs_description
from workers.deidentify.tiffio import EditPlan, GuardViolation, Intervals

PHI = {"patientName": "DOE^JANE", "accessionNumber": "ACC-2024-000123", "lisSlideId": "S24-1234-A1"}
MARKER = b"LABEL-MARKER-7f3a9c1e5d"
SIZE = 2048


def _mpp_svs(tif: tifffile.TiffFile) -> float:
    assert tif.is_svs
    return float(svs_description_metadata(tif.pages.first.description)["MPP"])


def _mpp_resolution(tif: tifffile.TiffFile) -> float:
    numerator, denominator = tif.pages.first.tags["XResolution"].value
    return 1e4 / (numerator / denominator)


def _mpp_philips(tif: tifffile.TiffFile) -> float:
    assert tif.is_philips
    tree = ElementTree.fromstring(tif.philips_metadata)  # noqa: S314 (our own file)
    spacing = tree.find('.//Attribute[@Name="DICOM_PIXEL_SPACING"]')
    assert spacing is not None and spacing.text is not None
    return float(spacing.text.split()[0].strip('"')) * 1000


def _mpp_bif(tif: tifffile.TiffFile) -> float:
    assert tif.is_bif
    iscan = ElementTree.fromstring(tif.pages.first.tags[700].value)  # noqa: S314
    assert iscan.tag == "iScan" and iscan.attrib["Z-layers"] == "1"
    level0 = next(page for page in tif.pages if "level=0" in page.description)
    encode_info = ElementTree.fromstring(level0.tags[700].value)  # noqa: S314
    joint = encode_info.find(".//TileJointInfo")
    assert joint is not None and joint.attrib["Direction"] == "RIGHT"  # stitching info kept for readers
    return float(iscan.attrib["ScanRes"])


# name: (generator, extra args, suffix of the staged file, expected format, expected output suffix,
#        indices of associated pages in the input, expected removed kinds, MPP reader)
KINDS: dict[str, tuple[Callable[..., Path], dict[str, Any], str, str, str, set[int], list[str], Any]] = {
    "svs": (make_svs, {}, ".svs", "aperio-svs", ".svs", {4, 5}, ["label", "macro"], _mpp_svs),
    "svs-bigtiff": (
        make_svs,
        {"bigtiff": True},
        ".svs",
        "aperio-svs",
        ".svs",
        {4, 5},
        ["label", "macro"],
        _mpp_svs,
    ),
    "generic": (
        make_generic_tiff,
        {},
        ".tif",
        "generic-tiff",
        ".tiff",
        {1, 2},
        ["label", "macro"],
        _mpp_resolution,
    ),
    "ndpi": (make_ndpi, {}, ".ndpi", "ndpi", ".ndpi", {2, 3}, ["macro", "map"], _mpp_resolution),
    "philips": (
        make_philips_tiff,
        {},
        ".tiff",
        "philips-tiff",
        ".tiff",
        {3, 4},
        ["label", "macro"],
        _mpp_philips,
    ),
    "bif": (make_bif, {}, ".bif", "ventana-bif", ".bif", {0, 1}, ["label", "overview"], _mpp_bif),
}


def _forbidden_bytes() -> list[bytes]:
    """Everything that must not survive, including the base64 forms Philips uses."""
    found = [MARKER, MARKER[::-1], base64.b64encode(MARKER * 8)[:24]]
    for value in PHI.values():
        found += [value.encode(), base64.b64encode(value.encode())]
    found += [b"2024:03:01", b"03/01/24", b"20240301"]
    return found


@pytest.fixture(params=sorted(KINDS))
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _make(kind: str, folder: Path) -> Path:
    generator, extra, suffix, *_ = KINDS[kind]
    staged = folder / f"{PHI['accessionNumber']}_{PHI['patientName']}{suffix}"
    return generator(staged, width=SIZE, height=SIZE, phi=PHI, label_marker=MARKER, **extra)


def test_slide_is_deidentified_in_place_with_tissue_untouched(kind: str, tmp_path: Path) -> None:
    _, _, _, fmt, out_suffix, associated, removed, mpp_of = KINDS[kind]
    staged = _make(kind, tmp_path / "staged")
    original = staged.read_bytes()
    for needle in (MARKER, *(value.encode() for value in PHI.values())):
        assert needle in original, "the generated slide must carry what the test then expects gone"
    ndpi = fmt == "ndpi"
    tissue_before = [
        segments for index, segments in page_segments(staged, ndpi=ndpi) if index not in associated
    ]

    files, report = deidentify_slide([staged], run_id="run-42", out_dir=tmp_path / "out")

    assert [path.name for path in files] == [f"run-42{out_suffix}"]
    assert report.output_files == [f"run-42{out_suffix}"]
    assert report.format == fmt and not report.skipped
    assert report.removed_images == removed
    assert report.blanked_fields, "PHI-bearing fields must be listed by name"
    assert not staged.exists(), "the staged copy is moved, not duplicated"
    out = files[0]
    assert out.stat().st_size == len(original), "edited in place: no rewrite of the pyramid"

    data = out.read_bytes()
    for needle in _forbidden_bytes():
        assert needle not in data, f"{needle[:12]!r}... survived de-identification"
    for value in PHI.values():
        assert value not in " ".join(report.blanked_fields + report.output_files), (
            "values never in the report"
        )

    carrier = {0} if kind == "bif" else set()
    assert [s for i, s in page_segments(out, ndpi=ndpi) if i not in carrier] == tissue_before

    with tifffile.TiffFile(out, is_ndpi=ndpi) as tif:
        for index, page in enumerate(tif.pages):
            assert isinstance(page, tifffile.TiffPage)
            assert not re.match(r"(?i)\s*(label|macro)", page.description.split("\n")[-1])
            assert page.tags.valueof(285) != "macro"
            if page.shape[:2] in (LABEL_SHAPE[:2], MACRO_SHAPE[:2]):
                assert index in carrier and not page.asarray().any(), "only Ventana's wiped carrier may stay"
        assert any(page.shape[:2] == (SIZE, SIZE) for page in tif.pages)
        assert mpp_of(tif) == pytest.approx(MPP, rel=1e-3)

    identifiers = identifiers_from_metadata(
        {
            "accessionNumber": PHI["accessionNumber"],
            "lisSlideId": PHI["lisSlideId"],
            "examDateTime": "2024-03-01T10:22",
        },
        [staged.name],
    )
    verify_deidentified(files, identifiers=identifiers)


def test_running_again_on_the_output_changes_nothing(kind: str, tmp_path: Path) -> None:
    """A retried stage may see its own output: the result must be the same file, byte for byte."""
    staged = _make(kind, tmp_path / "staged")
    files, _ = deidentify_slide([staged], run_id="run-7", out_dir=tmp_path / "out")
    digest = hashlib.sha256(files[0].read_bytes()).hexdigest()
    again, report = deidentify_slide(files, run_id="run-7", out_dir=tmp_path / "out")
    assert again == files
    assert report.removed_images == [] and report.blanked_fields == []
    assert hashlib.sha256(again[0].read_bytes()).hexdigest() == digest


def test_a_label_with_no_name_is_still_found_by_its_shape(tmp_path: Path) -> None:
    staged = make_generic_tiff(
        tmp_path / "slide.tif", width=SIZE, height=SIZE, phi=PHI, label_marker=MARKER, unnamed_label=True
    )
    files, report = deidentify_slide([staged], run_id="run-1", out_dir=tmp_path / "out")
    assert report.removed_images == ["unnamed image", "macro"]
    assert MARKER not in files[0].read_bytes()


def test_svs_description_keeps_what_the_analysis_needs() -> None:
    raw = (
        b"Aperio Image Library v12\r\n2048x2048 (256x256) RAW|AppMag = 20|Filename = DOE_JANE|MPP = 0.499"
        b"|Barcode = ACC1|not a pair|Date = 03/01/24\0"
    )
    new, removed = scrub_svs_description(raw)
    assert len(new) == len(raw)
    assert new.rstrip(b"\0") == b"Aperio Image Library v12\r\n2048x2048 (256x256) RAW|AppMag = 20|MPP = 0.499"
    assert removed == [
        "ImageDescription.Filename",
        "ImageDescription.Barcode",
        "ImageDescription.<unnamed>",
        "ImageDescription.Date",
    ]


def test_edit_plan_refuses_to_touch_kept_pixels(tmp_path: Path) -> None:
    plan = EditPlan(Intervals.of([(100, 200), (1000, 1100)]))
    plan.zero(EditPlan.ZERO_IMAGES, 200, 800)  # the gap between two kept tiles is fair game
    with pytest.raises(GuardViolation):
        plan.write(EditPlan.TEXT, 195, b"0123456789")
    with pytest.raises(GuardViolation):
        plan.zero(EditPlan.ORPHANS, 0, 5000)


def test_generators_make_readable_slides_of_any_shape(tmp_path: Path) -> None:
    """The generators are shared with the end-to-end test: non-square, non-tile-multiple sizes work."""
    path = make_svs(tmp_path / "a.svs", width=1000, height=700, phi=PHI, label_marker=MARKER)
    with tifffile.TiffFile(path) as tif:
        assert tif.is_svs and tif.pages.first.shape == (700, 1000, 3)
    files, report = deidentify_slide([path], run_id="r", out_dir=tmp_path / "out")
    assert report.removed_images == ["label", "macro"] and MARKER not in files[0].read_bytes()


@pytest.mark.parametrize("kind", ["svs", "svs-bigtiff", "generic", "philips"])
def test_openslide_still_reads_the_slide_but_no_label(kind: str, tmp_path: Path) -> None:
    """What a slide reader on Strand's side sees: same vendor, size and pixel size; no label or macro."""
    staged = _make(kind, tmp_path / "staged")
    with openslide.OpenSlide(staged) as slide:
        before = (
            slide.properties["openslide.vendor"],
            slide.dimensions,
            slide.properties.get("openslide.mpp-x"),
        )
        tile_before = slide.read_region((300, 200), 0, (256, 256)).tobytes()
        if kind != "generic":  # OpenSlide's generic TIFF reader exposes no associated images at all
            assert {"label", "macro"} <= set(slide.associated_images)
    files, _ = deidentify_slide([staged], run_id="run-3", out_dir=tmp_path / "out")
    with openslide.OpenSlide(files[0]) as slide:
        after = (
            slide.properties["openslide.vendor"],
            slide.dimensions,
            slide.properties.get("openslide.mpp-x"),
        )
        assert after == before
        assert not {"label", "macro"} & set(slide.associated_images)
        assert slide.read_region((300, 200), 0, (256, 256)).tobytes() == tile_before


def test_philips_xml_keeps_pixel_spacing_and_blanks_everything_else_in_place() -> None:
    raw = (
        b'<?xml version="1.0" encoding="UTF-8" ?><DataObject ObjectType="DPUfsImport">'
        b'<Attribute Name="DICOM_PIXEL_SPACING" PMSVR="IDoubleArray">"0.00025" "0.00025"</Attribute>stray DOE'
        b'<Attribute Name="PIM_DP_UFS_BARCODE" PMSVR="IString">QUNDMTIz</Attribute><!-- scanned by DOE -->'
        b"</DataObject>"
    )
    new, removed = scrub_philips_xml(raw)
    assert len(new) == len(raw)
    assert b'"0.00025" "0.00025"' in new and b'encoding="UTF-8"' in new
    assert b"QUNDMTIz" not in new and b"DOE" not in new
    assert removed == [
        "ImageDescription.<unnamed>",
        "ImageDescription.PIM_DP_UFS_BARCODE",
        "ImageDescription.<comment>",
    ]
    ElementTree.fromstring(new)  # noqa: S314 - still well-formed XML


@pytest.mark.parametrize("phases_done", [1, 2, 3])
def test_a_crash_between_edit_phases_leaves_nothing_a_rerun_cannot_finish(
    phases_done: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fault injection: the process dies after the first `phases_done` phases of its writes."""
    staged = _make("svs", tmp_path / "staged")
    tissue = [segments for index, segments in page_segments(staged) if index < 4]
    real_apply = EditPlan.apply

    def crash_after(plan: EditPlan, path: Path) -> None:
        plan.phases = {phase: edits for phase, edits in plan.phases.items() if phase < phases_done}
        real_apply(plan, path)
        raise KeyboardInterrupt("simulated crash")

    with monkeypatch.context() as patch:
        patch.setattr(EditPlan, "apply", crash_after)
        with pytest.raises(KeyboardInterrupt):
            deidentify_slide([staged], run_id="run-5", out_dir=tmp_path / "out")
    half_done = tmp_path / "out" / "run-5.svs"
    if phases_done == 3:  # unlinked: a re-run no longer sees the label, yet nothing of it may remain
        assert MARKER not in half_done.read_bytes() and b"Barcode = ACC" not in half_done.read_bytes()
    files, _ = deidentify_slide([half_done], run_id="run-5", out_dir=tmp_path / "out")
    data = files[0].read_bytes()
    for needle in _forbidden_bytes():
        assert needle not in data
    assert [segments for _, segments in page_segments(files[0])] == tissue
    verify_deidentified(files, identifiers={"accessionNumber": PHI["accessionNumber"]})
