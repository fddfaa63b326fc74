"""The stage's entry point: give the staged copy a neutral name, then de-identify it in place.

Works only on the copy the pipeline staged, never on anything Sectra serves.
Safe to call again on its own output (after a crash, say): every edit is
idempotent and image bytes are zeroed before their IFD is unlinked.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Sequence
from pathlib import Path

from workers.deidentify.detect import DICOM, MRXS, SlideKind, detect
from workers.deidentify.dicom import deidentify_dicom
from workers.deidentify.errors import UnsupportedSlideFormat
from workers.deidentify.mrxs import deidentify_mrxs
from workers.deidentify.report import DeidReport
from workers.deidentify.tiff import deidentify_tiff

_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")
_SUFFIX = re.compile(r"^\.[a-z0-9]{1,10}$")
# Companion files of multi-file formats whose names carry no identity (MRXS: <stem>/Data0000.dat).
_NEUTRAL_COMPANION = re.compile(r"^(data\d+\.dat|slidedat\.ini|index\.dat)$", re.I)


def deidentify_slide(
    staged: Sequence[Path], *, run_id: str, out_dir: Path, enabled: bool = True
) -> tuple[list[Path], DeidReport]:
    """Move the staged file(s) into `out_dir` as `<run_id>.<ext>` and strip labels, macros and PHI.

    Raises UnsupportedSlideFormat for a format with no de-identifier, unless
    `enabled` is False (the app's `deidentify: false`), when the files are
    only renamed and the report says `skipped`.
    """
    if not _RUN_ID.match(run_id):
        raise ValueError("run_id must be a plain token (letters, digits, '-', '_')")
    files = [Path(path) for path in staged]
    out_dir.mkdir(parents=True, exist_ok=True)
    kind = detect(files)
    if not enabled:
        outputs = _rename_only(files, kind, run_id, out_dir)
        return outputs, DeidReport(format=kind.name, output_files=_names(outputs, out_dir), skipped=True)
    if not kind.supported:
        raise UnsupportedSlideFormat(kind.name)
    if kind.name == DICOM:
        dicom = deidentify_dicom(files, run_id=run_id, out_dir=out_dir)
        outputs, removed, blanked = dicom.outputs, dicom.removed_images, dicom.blanked_fields
    elif kind.name == MRXS:
        mrxs = deidentify_mrxs(files, run_id=run_id, out_dir=out_dir)
        outputs, removed, blanked = mrxs.outputs, mrxs.removed_images, mrxs.blanked_fields
    else:
        target = _move(files[0], out_dir / f"{run_id}{kind.extension}")
        tiff = deidentify_tiff(target, kind.name)
        outputs, removed, blanked = [target], tiff.removed_images, tiff.blanked_fields
    report = DeidReport(
        format=kind.name,
        removed_images=removed,
        blanked_fields=blanked,
        output_files=_names(outputs, out_dir),
    )
    return outputs, report


def _move(source: Path, target: Path) -> Path:
    if source.resolve() != target.resolve():
        shutil.move(source, target)  # a rename on one filesystem; a copy only across devices
    return target


def _rename_only(files: list[Path], kind: SlideKind, run_id: str, out_dir: Path) -> list[Path]:
    """Neutral names without de-identification. Multi-file formats keep their layout: the
    primary file becomes `<run_id>.<ext>`, neutral companions go to `<run_id>/`, others are numbered."""
    if kind.name == DICOM:
        width = max(3, len(str(len(files))))
        names = (
            [f"{run_id}.dcm"]
            if len(files) == 1
            else [f"{run_id}-{number:0{width}d}.dcm" for number in range(1, len(files) + 1)]
        )
        return [_move(path, out_dir / name) for path, name in zip(files, names, strict=True)]
    outputs, primary_done = [], False
    for number, path in enumerate(files, start=1):
        suffix = kind.extension or (path.suffix.lower() if _SUFFIX.match(path.suffix.lower()) else "")
        if _NEUTRAL_COMPANION.match(path.name):
            (out_dir / run_id).mkdir(exist_ok=True)
            outputs.append(_move(path, out_dir / run_id / path.name))
        elif not primary_done:
            outputs.append(_move(path, out_dir / f"{run_id}{suffix}"))
            primary_done = True
        else:
            outputs.append(_move(path, out_dir / f"{run_id}-{number:03d}{suffix}"))
    return outputs


def _names(outputs: list[Path], out_dir: Path) -> list[str]:
    return [path.relative_to(out_dir).as_posix() for path in outputs]
