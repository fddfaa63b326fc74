"""TIFF-family de-identification judged by readers we did not write (issue 12, classes 3-5).

Oracles: openslide and tiffslide (levels, associated images, pixels), tifffile for the tags, and
a raw byte search of the whole file. Nothing here asks our page classifier what it thinks. The
tag allow-list is restated below from its sources (TIFF 6.0 and the vendors' formats as openslide
documents them), so a tag that slips into the output, or out of the list, shows up here.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import openslide
import pytest
import tifffile
import tiffslide

from tests.fixtures.slides import make_bif, make_generic_tiff, make_ndpi, make_philips_tiff, make_svs
from tests.fixtures.tiff_slides import make_flat_pyramid_tiff, make_label_only_tiff, make_private_tag_tiff
from workers.deidentify import (
    DeidentificationFailed,
    UnsupportedSlideFormat,
    deidentify_slide,
    verify_deidentified,
)
from workers.deidentify.tiffio import EditPlan

PHI = {"patientName": "DOE^JANE", "accessionNumber": "ACC-2024-000123", "lisSlideId": "S24-1234-A1"}
MARKER = b"LABEL-MARKER-7f3a9c1e5d"
WIDTH, HEIGHT = 2048, 1536

# TIFF 6.0 tags that decode and place an image (baseline, tiles, predictor, YCbCr, sample format,
# colorimetry), SubIFDs (TN1), JPEGTables (TN2), SGI ImageDepth/TileDepth, ICC profile.
_DECODE = {254, 255, 256, 257, 258, 259, 262, 266, 273, 274, 277, 278, 279, 280, 281, 282, 283, 284}
_DECODE |= {286, 287, 296, 301, 317, 318, 319, 320, 322, 323, 324, 325, 330, 338, 339, 340, 341, 347}
_DECODE |= {529, 530, 531, 532, 32997, 32998, 34675}
ALLOWED = {
    "aperio-svs": _DECODE | {270},
    "ndpi": _DECODE | {271, 65420, 65421, 65422, 65423, 65424, 65426, 65432},
    "philips-tiff": _DECODE | {270, 305},
    "ventana-bif": _DECODE | {270, 305, 700},
    "generic-tiff": _DECODE | {270},
}

# name: (generator, suffix, format, names openslide/tiffslide give the glass photographs in the input)
CORPUS: dict[str, tuple[Callable[..., Path], str, str, set[str]]] = {
    "svs": (make_svs, ".svs", "aperio-svs", {"label", "macro"}),
    "svs-jpeg-icc": (partial(make_svs, jpeg=True), ".svs", "aperio-svs", {"label", "macro"}),
    "ndpi": (make_ndpi, ".ndpi", "ndpi", {"macro"}),
    "philips": (make_philips_tiff, ".tiff", "philips-tiff", {"label", "macro"}),
    "bif": (make_bif, ".bif", "ventana-bif", {"macro"}),
    "generic-subifds": (make_generic_tiff, ".tif", "generic-tiff", set()),
    "same-aspect-label": (make_flat_pyramid_tiff, ".tif", "generic-tiff", set()),
    "private-tags": (make_private_tag_tiff, ".tif", "generic-tiff", set()),
}


def _forbidden() -> list[bytes]:
    found = [MARKER, MARKER[::-1], b"2024:03:01", "DOE^JANE".encode("utf-16-le")]
    return found + [value.encode() for value in PHI.values()]


def _stage(kind: str, folder: Path) -> Path:
    generator, suffix, *_ = CORPUS[kind]
    staged = folder / f"{PHI['accessionNumber']}{suffix}"
    return generator(staged, width=WIDTH, height=HEIGHT, phi=PHI, label_marker=MARKER)


def _view(path: Path, reader: Any) -> dict[str, Any]:
    """What a reader makes of the slide: levels, associated images, and a few regions' pixels."""
    with reader(path) as slide:
        regions = [
            np.asarray(slide.read_region((x, y), level, (200, 150)).convert("RGB"))
            for level, (x, y) in ((0, (0, 0)), (0, (1500, 1200)), (slide.level_count - 1, (0, 0)))
        ]
        associated = {
            name: np.asarray(slide.associated_images[name].convert("RGB")) for name in slide.associated_images
        }
        prefix = "openslide" if reader is openslide.OpenSlide else "tiffslide"
        geometry = {
            key: slide.properties.get(f"{prefix}.{key}") for key in ("mpp-x", "mpp-y", "objective-power")
        }
        profile = slide.color_profile
        # Colour needs the ICC profile's colorimetry (its text is emptied): as littleCMS reads it.
        geometry["icc"] = (
            None
            if profile is None
            else tuple(
                repr(getattr(profile.profile, field))
                for field in (
                    "red_colorant",
                    "green_colorant",
                    "blue_colorant",
                    "media_white_point",
                    "rendering_intent",
                    "version",
                    "xcolor_space",
                    "connection_space",
                )
            )
        )
        return {
            "levels": tuple(slide.level_dimensions),
            "geometry": geometry,
            "regions": regions,
            "associated": associated,
        }


def _all_tags(path: Path, ndpi: bool) -> list[tuple[int, int]]:
    """(page, tag code) for every page and sub-page tifffile finds, Exif/GPS IFDs included."""
    found = []
    with tifffile.TiffFile(path, is_ndpi=ndpi) as tif:
        for number, page in enumerate(tif.pages):
            assert isinstance(page, tifffile.TiffPage)
            stack = [page]
            while stack:
                node = stack.pop()
                found += [(number, code) for code in node.tags.keys()]  # noqa: SIM118 (TiffTags iterates tags)
                for child_number, offset in enumerate(node.subifds or ()):
                    tif.filehandle.seek(offset)
                    stack.append(tifffile.TiffPage(tif, index=(*node.treeindex, child_number)))
    return found


@pytest.mark.parametrize("kind", sorted(CORPUS))
def test_readers_see_the_same_tissue_and_no_glass_photograph(kind: str, tmp_path: Path) -> None:
    _, _, fmt, glass_names = CORPUS[kind]
    staged = _stage(kind, tmp_path / "staged")
    original = staged.read_bytes()
    assert MARKER in original, "the fixture carries its label"
    before = {reader.__name__: _view(staged, reader) for reader in (openslide.OpenSlide, tiffslide.TiffSlide)}
    assert glass_names <= set(before["OpenSlide"]["associated"]), "the input's label must be visible"

    files, report = deidentify_slide([staged], run_id="run-9", out_dir=tmp_path / "out")
    assert report.format == fmt and report.removed_images
    out = files[0]

    for reader in (openslide.OpenSlide, tiffslide.TiffSlide):
        after = _view(out, reader)
        expected = before[reader.__name__]
        assert after["levels"] == expected["levels"], "level geometry unchanged"
        assert after["geometry"] == expected["geometry"], "pixel size and magnification unchanged"
        for region_after, region_before in zip(after["regions"], expected["regions"], strict=True):
            assert np.array_equal(region_after, region_before), "tissue pixel-identical"
        for name, pixels in after["associated"].items():
            if name == "thumbnail" and fmt == "aperio-svs":
                continue  # Aperio's thumbnail is a picture of the tissue, not of the glass
            assert not pixels.any(), f"{reader.__name__} still offers a {name or 'nameless'} image"
        assert not {"label", "macro"} & set(after["associated"])

    data = out.read_bytes()
    for needle in _forbidden():
        assert needle not in data, f"{needle[:12]!r}... survived"
    stray = {code for _, code in _all_tags(out, ndpi=fmt == "ndpi")} - ALLOWED[fmt]
    assert not stray, f"tags outside the allow-list: {sorted(stray)}"
    verify_deidentified(files, identifiers={"accessionNumber": PHI["accessionNumber"]})


def test_class_3_a_same_aspect_label_without_a_name_is_removed(tmp_path: Path) -> None:
    staged = _stage("same-aspect-label", tmp_path / "staged")
    with tiffslide.TiffSlide(staged) as slide:
        label = [name for name in slide.associated_images if slide.associated_images[name].size == (256, 192)]
        assert label, "tiffslide sees the label as an associated image of the slide's aspect ratio"
    files, report = deidentify_slide([staged], run_id="run-3", out_dir=tmp_path / "out")
    assert report.removed_images == ["unnamed image"]
    assert MARKER not in files[0].read_bytes()
    with tiffslide.TiffSlide(files[0]) as slide:
        assert dict(slide.associated_images) == {}


def test_class_3_verification_catches_the_label_on_its_own(tmp_path: Path) -> None:
    """As if the remover had kept it: the readers' view alone must refuse the file."""
    staged = _stage("same-aspect-label", tmp_path / "staged")
    neutral = staged.rename(staged.with_name("run-3.tiff"))
    with pytest.raises(DeidentificationFailed):
        verify_deidentified([neutral], identifiers={})


def test_class_4_a_name_in_private_and_exif_tags_is_removed(tmp_path: Path) -> None:
    staged = _stage("private-tags", tmp_path / "staged")
    with tifffile.TiffFile(staged) as tif:
        tags = tif.pages.first.tags
        assert tags[65000].dtype == 2 and tags[65001].dtype == 7, "a private ASCII and a private UNDEFINED"
        assert "DOE^JANE" in tags["ExifTag"].value["CameraOwnerName"]
    files, report = deidentify_slide([staged], run_id="run-4", out_dir=tmp_path / "out")
    data = files[0].read_bytes()
    for needle in (b"DOE^JANE", "DOE^JANE".encode("utf-16-le"), b"SN-ACC", b"2024:03:01"):
        assert needle not in data
    assert {"tag 65000", "tag 65001", "ExifTag"} <= set(report.blanked_fields)
    with tifffile.TiffFile(files[0]) as tif:
        assert all(code < 32768 for page in tif.pages for code in page.tags.keys())  # type: ignore[union-attr]  # noqa: SIM118
    again, report = deidentify_slide(files, run_id="run-4", out_dir=tmp_path / "out")
    assert again[0].read_bytes() == data and report.blanked_fields == [], "idempotent on its own output"


def test_class_4_verification_refuses_an_unknown_tag_even_without_a_known_identifier(tmp_path: Path) -> None:
    """Sectra's metadata has no patient name: the tag itself, not its value, must fail the check."""
    staged = _stage("private-tags", tmp_path / "staged")
    neutral = staged.rename(staged.with_name("run-4.tiff"))
    with pytest.raises(DeidentificationFailed) as caught:
        verify_deidentified([neutral], identifiers={})
    assert "DOE" not in str(caught.value)


@pytest.mark.parametrize("tiled", [False, True], ids=["stripped", "tiled"])
def test_class_5_a_tiff_that_is_only_a_label_photograph_is_refused(tiled: bool, tmp_path: Path) -> None:
    staged = make_label_only_tiff(
        tmp_path / "staged" / "label.tif", phi=PHI, label_marker=MARKER, tiled=tiled
    )
    with pytest.raises(UnsupportedSlideFormat):
        deidentify_slide([staged], run_id="run-5", out_dir=tmp_path / "out")
    assert staged.exists(), "refused before anything was moved or edited"
    copy = tmp_path / "run-5.tiff"
    shutil.copyfile(staged, copy)
    with pytest.raises((UnsupportedSlideFormat, DeidentificationFailed)):
        verify_deidentified([copy], identifiers={})


@pytest.mark.parametrize("phases_done", [1, 2, 3])
def test_a_crash_mid_edit_of_private_tags_leaves_nothing_a_rerun_cannot_finish(
    phases_done: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fault injection: the process dies after the first `phases_done` phases of its writes (IFDs
    compacted, Exif zeroed, label unlinked, ...); running the stage again must finish the job."""
    staged = _stage("private-tags", tmp_path / "staged")
    before = _view(staged, tiffslide.TiffSlide)
    real_apply = EditPlan.apply

    def crash_after(plan: EditPlan, path: Path) -> None:
        plan.phases = {phase: edits for phase, edits in plan.phases.items() if phase < phases_done}
        real_apply(plan, path)
        raise KeyboardInterrupt("simulated crash")

    with monkeypatch.context() as patch:
        patch.setattr(EditPlan, "apply", crash_after)
        with pytest.raises(KeyboardInterrupt):
            deidentify_slide([staged], run_id="run-6", out_dir=tmp_path / "out")
    files, _ = deidentify_slide([tmp_path / "out" / "run-6.tiff"], run_id="run-6", out_dir=tmp_path / "out")
    data = files[0].read_bytes()
    for needle in _forbidden():
        assert needle not in data
    after = _view(files[0], tiffslide.TiffSlide)
    assert after["levels"] == before["levels"] and not after["associated"]
    assert all(np.array_equal(a, b) for a, b in zip(after["regions"], before["regions"], strict=True))
    verify_deidentified(files, identifiers={})
