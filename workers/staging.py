"""The one home of a run's slide files on this pod's work volume.

Layout: `<work_dir>/<run_id>/staged/` holds the original files as Sectra sent
them (identifiable), `<work_dir>/<run_id>/outgoing/` the de-identified copy
Strand gets. Each worker pod has its own volume, so every question here is
"is it on *this* pod?"; a run resumed elsewhere finds nothing and the pipeline
prepares the files again. Stages ask this module; they never ask each other.
Nothing here talks to Redis: what is on disk is checked against the run
record's sizes and digests, which the caller passes in.
"""

from __future__ import annotations

import hashlib
import shutil
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from workers.runstore import StagedFile

_HASH_BLOCK = 4 * 1024 * 1024
# What Strand gets for a slide that is a set of files (MRXS: `<id>.mrxs` plus `<id>/Data*.dat`, ...):
# it takes one file per upload, and the data files mean nothing without their index.
BUNDLE_SUFFIX = ".mrxs.zip"
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)  # the earliest ZIP date: no scan or run date in member headers


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(_HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def describe(files: Sequence[Path], root: Path) -> list[StagedFile]:
    """Name (relative to `root`), size and SHA-256 of each file, as the run record keeps them."""
    return [
        StagedFile(name=f.relative_to(root).as_posix(), size=f.stat().st_size, sha256=sha256_of(f))
        for f in files
    ]


def largest(entries: Sequence[StagedFile]) -> StagedFile:
    """The file Strand gets: it takes one file per upload, so a multi-file slide (DICOM) sends its largest."""
    return max(entries, key=lambda item: item["size"])


def upload_name(run_id: str, entry: StagedFile) -> str:
    """The neutral name Strand records for the file (`<run_id>.svs`, `<run_id>.mrxs.zip`, ...)."""
    name = entry["name"]
    return f"{run_id}{BUNDLE_SUFFIX if name.endswith(BUNDLE_SUFFIX) else Path(name).suffix}"


def bundle(files: Sequence[Path], root: Path, run_id: str) -> Path:
    """Pack a multi-file slide into one uncompressed ZIP (its JPEG tiles do not shrink), then drop the files.

    Deterministic (fixed member dates and order, no extra fields beyond ZIP64's), so a slide
    prepared again on another pod is byte-identical and its upload can continue. Copies in
    blocks: memory does not grow with the slide.
    """
    target = root / f"{run_id}{BUNDLE_SUFFIX}"
    partial = target.with_name(target.name + ".partial")
    with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for path in sorted(files, key=lambda f: f.relative_to(root).as_posix()):
            info = zipfile.ZipInfo(path.relative_to(root).as_posix(), date_time=_ZIP_EPOCH)
            info.external_attr = 0o644 << 16
            with path.open("rb") as source, archive.open(info, "w", force_zip64=True) as sink:
                shutil.copyfileobj(source, sink, _HASH_BLOCK)
    partial.replace(target)
    for path in files:
        path.unlink()
    for folder in sorted({p.parent for p in files if p.parent != root}, key=lambda d: -len(d.parts)):
        shutil.rmtree(folder, ignore_errors=True)
    return target


class Staging:
    """Paths and housekeeping under one work directory."""

    def __init__(self, work_dir: Path) -> None:
        self.work_dir = work_dir

    def run_dir(self, run_id: str) -> Path:
        return self.work_dir / run_id

    def staged_dir(self, run_id: str) -> Path:
        return self.run_dir(run_id) / "staged"

    def outgoing_dir(self, run_id: str) -> Path:
        return self.run_dir(run_id) / "outgoing"

    def originals(self, run_id: str, entries: Sequence[StagedFile]) -> list[Path] | None:
        """The downloaded files when every one is on this pod with its recorded size, else None."""
        folder = self.staged_dir(run_id)
        paths = [folder / entry["name"] for entry in entries]
        if not entries or not all(
            p.is_file() and p.stat().st_size == e["size"] for p, e in zip(paths, entries, strict=True)
        ):
            return None
        return paths

    def interrupted_outgoing(self, run_id: str) -> list[Path]:
        """What an interrupted de-identification left in `outgoing` (it moves the originals there first)."""
        out = self.outgoing_dir(run_id)
        if not out.is_dir():
            return []
        # A finished bundle means its files are gone: what is left cannot be de-identified again.
        unfinished = (BUNDLE_SUFFIX, ".partial")
        return sorted(p for p in out.iterdir() if p.is_file() and not p.name.endswith(unfinished))

    def outgoing_file(self, run_id: str, entries: Sequence[StagedFile]) -> Path | None:
        """The de-identified file to upload, when it is on this pod with its recorded size."""
        if not entries:
            return None
        entry = largest(entries)
        path = self.outgoing_dir(run_id) / entry["name"]
        return path if path.is_file() and path.stat().st_size == entry["size"] else None

    def clear_staged(self, run_id: str) -> None:
        """Make room for a fresh download (a partial one is never resumed)."""
        shutil.rmtree(self.staged_dir(run_id), ignore_errors=True)

    def remove(self, run_id: str) -> bool:
        """Delete everything of the run on this pod; True if anything was here."""
        folder = self.run_dir(run_id)
        existed = folder.exists()
        shutil.rmtree(folder, ignore_errors=True)
        return existed

    def run_ids(self) -> Iterator[str]:
        """Runs that have files on this pod."""
        if not self.work_dir.is_dir():
            return
        for entry in self.work_dir.iterdir():
            if entry.is_dir():
                yield entry.name
