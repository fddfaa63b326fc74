"""De-identify a 3DHISTECH MIRAX slide: `<name>.mrxs` plus its `<name>/` directory of Slidedat.ini,
Index.dat and Data*.dat files.

What goes, following OpenSlide's reader (`openslide-vendor-mirax.c`) and the
field's anonymisers (EMPAIA's wsi-anon, `mirax-io.c`; anonymize-slide):

- every non-hierarchical record but the tile positions (`mrxs_policy`): the label
  (ScanDataLayer_SlideBarcode), macro (SlideThumbnail), preview (SlidePreview) and
  whole-slide photographs. Their entries leave Index.dat's record table and
  Slidedat.ini, and their bytes in the Data files become zeros;
- every byte of a Data file that no kept record points at (an allow-list of bytes:
  whatever a scanner writes between the images, such as profile XML, is dropped),
  except the file's version and SLIDE_ID header, whose SLIDE_ID is replaced;
- Slidedat.ini values outside the allow-list (`mrxs_policy`), and the .mrxs file's
  own contents (no reader needs them: OpenSlide only checks that it exists).

Names become `<run_id>.mrxs` and `<run_id>/{Slidedat.ini, Index.dat, DataNNNN.dat}`.
Tiles are never decoded or moved: the pyramid stays byte-identical.

Sectra serves the slide as several files of one download, flattened into the
staging directory (`sectra_adapter._filenames` keeps only a name's last component),
so the parts are found by name wherever they are: Slidedat.ini first, then the
index and data files it names. A `.mrxs` with its directory beside it is found
too (the command line, and a re-run on our own output).

Order, so that a process dying anywhere leaves a state a re-run finishes: check
everything before moving anything (a refused slide stays where it was staged);
move the parts (the .mrxs last); zero and re-head the Data files; replace
Index.dat, then Slidedat.ini, each whole by a rename. A re-run that finds the new
SLIDE_ID in Index.dat but not yet in Slidedat.ini knows the index is done.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from workers.deidentify.errors import UnsupportedSlideFormat
from workers.deidentify.mrxs_index import VERSION, Extent, MalformedIndex, MiraxIndex
from workers.deidentify.mrxs_ini import Slidedat
from workers.deidentify.mrxs_policy import (
    GENERAL,
    INDEX_NAME,
    Scrubber,
    Tree,
    data_file_name,
    neutral_slide_id,
)

SLIDEDAT = "Slidedat.ini"
MAX_SLIDEDAT_BYTES = 1 << 20  # OpenSlide's SLIDEDAT_MAX_SIZE
_ZEROS = bytes(1 << 20)


@dataclass
class MrxsOutcome:
    outputs: list[Path] = field(default_factory=list)
    removed_images: list[str] = field(default_factory=list)
    blanked_fields: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class MrxsParts:
    mrxs: Path | None
    slidedat: Path
    index: Path
    data: list[Path]
    extras: list[Path]  # staged files the slide does not use: deleted, never sent


def companion_dir(mrxs: Path) -> Path:
    """OpenSlide's rule: the directory beside the file, named like it without the extension."""
    return mrxs.with_suffix("")


def slide_files(mrxs: Path) -> list[Path]:
    """The whole slide on disk: the .mrxs file and every file of its directory."""
    folder = companion_dir(mrxs)
    return [mrxs, *sorted(p for p in folder.iterdir() if p.is_file())] if folder.is_dir() else [mrxs]


def locate(files: Sequence[Path]) -> tuple[MrxsParts, Slidedat, Tree]:
    paths = [Path(p) for p in files]
    primaries = [p for p in paths if p.suffix.lower() == ".mrxs"]
    if len(primaries) > 1:
        raise UnsupportedSlideFormat("MRXS set with more than one .mrxs file")
    mrxs = primaries[0] if primaries else None
    pool = [p for p in paths if p != mrxs]
    if mrxs is not None and not any(p.name.lower() == SLIDEDAT.lower() for p in pool):
        pool += slide_files(mrxs)[1:]
    by_name: dict[str, Path] = {}
    for path in pool:
        if by_name.setdefault(path.name.casefold(), path) != path:
            raise UnsupportedSlideFormat("MRXS set with two files of one name")
    slidedat_path = by_name.get(SLIDEDAT.casefold())
    if slidedat_path is None:
        raise UnsupportedSlideFormat("MRXS without its Slidedat.ini")
    ini = _read_slidedat(slidedat_path)
    try:
        tree = Tree.read(ini)
    except (KeyError, ValueError):
        raise UnsupportedSlideFormat("MRXS with an incomplete Slidedat.ini") from None

    def find(name: str, neutral: str) -> Path:
        found = by_name.get(name.casefold()) or by_name.get(neutral.casefold())
        if found is None:
            raise UnsupportedSlideFormat("MRXS with a missing Index.dat or Data file")
        return found

    index = find(tree.index_name, INDEX_NAME)
    data = [find(name, data_file_name(n)) for n, name in enumerate(tree.datafiles)]
    used = [slidedat_path, index, *data]
    if len(set(used)) != len(used):
        raise UnsupportedSlideFormat("MRXS whose Slidedat.ini names one file twice")
    extras = [p for p in by_name.values() if p not in used]
    return MrxsParts(mrxs, slidedat_path, index, data, extras), ini, tree


def deidentify_mrxs(files: Sequence[Path], *, run_id: str, out_dir: Path) -> MrxsOutcome:
    parts, ini, tree = locate(files)
    old_id = ini.get(GENERAL, "SLIDE_ID")
    if old_id is None:
        raise UnsupportedSlideFormat("MRXS with an incomplete Slidedat.ini")
    old_head = VERSION + old_id.encode("utf-8", "surrogateescape")
    new_id = neutral_slide_id(run_id, len(old_head) - len(VERSION))
    new_head = VERSION + new_id.encode("ascii")
    index = MiraxIndex(parts.index.read_bytes(), len(old_head) - len(VERSION))
    if index.version != VERSION:
        raise MalformedIndex()
    if VERSION + index.slide_id not in (old_head, new_head):
        raise MalformedIndex()
    fresh = VERSION + index.slide_id == old_head  # else an earlier attempt already rewrote Index.dat
    kept_records = tree.kept_records()
    sizes = [path.stat().st_size for path in parts.data]
    keep = _kept_ranges(index, tree, kept_records if fresh else list(range(len(kept_records))), sizes)
    if fresh:
        _refuse_shared_bytes(index, tree, keep)
    scrubber = Scrubber(tree, new_id)
    cleaned = scrubber.apply(ini).render()
    new_index = (
        index.rewritten(
            slide_id=new_head[len(VERSION) :], kept_nonhier=kept_records, nonhier_total=tree.nonhier_records
        )
        if fresh
        else None
    )

    folder = out_dir / run_id
    targets = [
        folder / INDEX_NAME,
        *(folder / data_file_name(n) for n in range(len(parts.data))),
        folder / SLIDEDAT,
    ]
    sources = [parts.index, *parts.data, parts.slidedat]
    _refuse_clashes(sources, targets)
    folder.mkdir(parents=True, exist_ok=True)
    index_path, *data_paths, slidedat_path = [_move(s, t) for s, t in zip(sources, targets, strict=True)]
    for extra in parts.extras:
        extra.unlink(missing_ok=True)
    mrxs_path = out_dir / f"{run_id}.mrxs"
    if parts.mrxs is not None:
        _move(parts.mrxs, mrxs_path)
    else:
        mrxs_path.touch()

    outcome = MrxsOutcome(removed_images=[name for _, name in tree.removed()])
    for path, ranges in zip(data_paths, keep, strict=True):
        if _clean_data_file(path, ranges, old_head, new_head):
            outcome.blanked_fields.append("Data file SLIDE_ID (replaced)")
    if new_index is not None:
        _replace(index_path, new_index)
        outcome.blanked_fields.append("Index.dat SLIDE_ID (replaced)")
    _replace(slidedat_path, cleaned)
    if mrxs_path.stat().st_size:
        os.truncate(mrxs_path, 0)
        outcome.blanked_fields.append("contents of the .mrxs file")
    outcome.blanked_fields = sorted(set(outcome.blanked_fields + scrubber.blanked))
    outcome.outputs = [mrxs_path, slidedat_path, index_path, *data_paths]
    return outcome


def _read_slidedat(path: Path) -> Slidedat:
    if path.stat().st_size > MAX_SLIDEDAT_BYTES:
        raise UnsupportedSlideFormat("MRXS with an oversized Slidedat.ini")
    return Slidedat.parse(path.read_bytes())


@dataclass
class _Ranges:
    """Byte ranges of one Data file that must survive: its header and the kept records."""

    starts: np.ndarray
    ends: np.ndarray

    def sorted(self) -> tuple[np.ndarray, np.ndarray]:
        order = np.argsort(self.starts, kind="stable")
        starts = self.starts[order]
        return starts, np.maximum.accumulate(self.ends[order]) if len(starts) else self.ends

    def overlaps(self, start: int, end: int) -> bool:
        starts, cover = self.sorted()
        below = int(np.searchsorted(starts, end, side="left"))
        return end > start and below > 0 and int(cover[below - 1]) > start

    def gaps(self, size: int) -> list[tuple[int, int]]:
        """The complement of the ranges within [0, size): the bytes to zero."""
        starts, cover = self.sorted()
        if not len(starts):
            return [(0, size)] if size else []
        before = np.concatenate([[0], cover[:-1]])
        open_ = starts > before
        found = list(zip(before[open_].tolist(), starts[open_].tolist(), strict=True))
        if int(cover[-1]) < size:
            found.append((int(cover[-1]), size))
        return found


def _kept_ranges(index: MiraxIndex, tree: Tree, records: list[int], sizes: list[int]) -> list[_Ranges]:
    """Every tile of every hierarchical record and the kept non-hierarchical records, per Data file."""
    items = [index.hier_tiles(record) for record in range(tree.hier_records)]
    tiles = np.concatenate(items) if items else np.zeros((0, 4), np.int64)
    extents = [extent for record in records if (extent := index.nonhier_extent(record)) is not None]
    fileno = np.concatenate([tiles[:, 3], np.array([e.fileno for e in extents], np.int64)])
    starts = np.concatenate([tiles[:, 1], np.array([e.offset for e in extents], np.int64)])
    ends = starts + np.concatenate([tiles[:, 2], np.array([e.length for e in extents], np.int64)])
    if len(fileno) and (
        fileno.max() >= len(sizes) or (ends > np.asarray(sizes)[np.minimum(fileno, len(sizes) - 1)]).any()
    ):
        raise MalformedIndex()
    return [_Ranges(starts[fileno == n], ends[fileno == n]) for n in range(len(sizes))]


def _refuse_shared_bytes(index: MiraxIndex, tree: Tree, keep: list[_Ranges]) -> None:
    """A removed image whose bytes are also a kept record's could not be zeroed: refuse the slide."""
    for record, _ in tree.removed():
        extent: Extent | None = index.nonhier_extent(record)
        if extent is None:
            continue
        if extent.fileno >= len(keep):
            raise MalformedIndex()
        if keep[extent.fileno].overlaps(extent.offset, extent.offset + extent.length):
            raise UnsupportedSlideFormat("MRXS whose label or macro shares bytes with its tiles")


def _clean_data_file(path: Path, keep: _Ranges, old_head: bytes, new_head: bytes) -> bool:
    """Zero every byte no kept record uses; give the header the new SLIDE_ID. True if the id changed."""
    with path.open("r+b") as fh:
        head = fh.read(len(new_head))
        recognised = head in (old_head, new_head)
        ranges = keep
        if recognised:
            ranges = _Ranges(np.append(keep.starts, 0), np.append(keep.ends, len(new_head)))
        for start, end in ranges.gaps(path.stat().st_size):
            fh.seek(start)
            while start < end:
                step = min(end - start, len(_ZEROS))
                fh.write(_ZEROS[:step])
                start += step
        if recognised and head != new_head:
            fh.seek(0)
            fh.write(new_head)
            return True
    return False


def _refuse_clashes(sources: list[Path], targets: list[Path]) -> None:
    """Renaming one part onto another part's current name would destroy it."""
    current = {path.resolve() for path in sources}
    for source, target in zip(sources, targets, strict=True):
        if target.resolve() != source.resolve() and target.resolve() in current:
            raise UnsupportedSlideFormat("MRXS whose data file names clash")


def _move(source: Path, target: Path) -> Path:
    if source.resolve() != target.resolve():
        shutil.move(source, target)
    return target


def _replace(path: Path, content: bytes) -> None:
    """Write beside, then rename: a reader or a crash sees the old file or the new one, never half."""
    temporary = path.with_name(path.name + ".new")
    temporary.write_bytes(content)
    temporary.replace(path)
