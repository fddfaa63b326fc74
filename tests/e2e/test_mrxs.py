"""A 3DHISTECH MRXS slide end to end: Sectra sends it as several files, Strand gets one archive.

Oracle: OpenSlide opens what Strand received (unpacked from the archive) and reads the same tissue
as the original, with no label or macro; no PHI string is in any byte Strand received.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import openslide

from tests.e2e.conftest import PHI, Bridge, slide_metadata
from tests.fixtures.mrxs import make_mrxs
from workers.runstore import RunStatus

SLIDE_PHI = {
    "SLIDE_NAME": PHI["accessionNumber"],
    "PROJECT_NAME": PHI["patientName"],
    "BARCODE_TEXT": f"{PHI['accessionNumber']}-B1",
}


def _tissue(slide: openslide.OpenSlide) -> list[np.ndarray]:
    return [
        np.asarray(slide.read_region((0, 0), level, slide.level_dimensions[level]).convert("RGB"))
        for level in range(slide.level_count)
    ]


def test_an_mrxs_reaches_strand_as_one_archive_that_openslide_reads_without_its_label(
    bridge: Bridge, tmp_path: Path
) -> None:
    original = make_mrxs(bridge.slides_dir / f"{PHI['accessionNumber']}.mrxs", phi=SLIDE_PHI)
    with openslide.OpenSlide(original.mrxs) as slide:
        assert {"label", "macro"} <= set(slide.associated_images), "the fixture carries its label"
        width, height = slide.dimensions
        tissue_before = _tissue(slide)
    bridge.sectra.add_slide(slide_metadata("slide-mrxs", width, height))
    bridge.sectra.add_slide_files("slide-mrxs", original.files)  # one multipart part per file, as Sectra

    record = bridge.wait_final(bridge.start_run("slide-mrxs").run_id)

    assert record.status == RunStatus.completed, record.error
    assert bridge.strand.stats.uploads_completed == 1 and bridge.strand.stats.submits_accepted == 1
    upload = bridge.strand.uploads[record.upload_id]
    assert upload.filename == f"{record.run_id}.mrxs.zip"
    sent = bridge.strand.upload_path(record.upload_id)
    raw = sent.read_bytes()
    for secret in (*PHI.values(), *SLIDE_PHI.values(), original.mrxs.name):
        assert secret.encode() not in raw, "identifying text reached Strand"
    unpacked = tmp_path / "received"
    with zipfile.ZipFile(sent) as archive:
        assert all(info.date_time == (1980, 1, 1, 0, 0, 0) for info in archive.infolist()), "no dates"
        archive.extractall(unpacked)
    with openslide.OpenSlide(unpacked / f"{record.run_id}.mrxs") as slide:
        assert slide.properties["openslide.vendor"] == "mirax"
        assert dict(slide.associated_images) == {}
        tissue_after = _tissue(slide)
    assert len(tissue_after) == len(tissue_before)
    assert all(np.array_equal(a, b) for a, b in zip(tissue_after, tissue_before, strict=True))
    assert not (bridge.work_dir / record.run_id).exists(), "staged files are removed after publishing"
