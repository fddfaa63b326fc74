"""Byte-level TIFF surgery: where IFDs and their pointers live, and a guarded plan of in-place writes.

tifffile locates pages and tags but does not unlink IFDs or zero strips, so the
few writes that de-identification needs are done here. Every write goes through
an `EditPlan` that refuses to touch the bytes of the pages we keep: the tissue
pyramid stays byte-identical by construction, not by hope. Edits are applied in
phases (image bytes zeroed before an IFD is unlinked) so that a process dying
half-way never leaves a label that is unlinked yet still readable; a re-run on
the same file finds and finishes what is left.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Protocol

import numpy as np
import tifffile

from workers.deidentify.errors import UnsupportedSlideFormat

ASCII, BYTE, UNDEFINED, SBYTE = 2, 1, 7, 6
TEXT_TYPES = frozenset({ASCII, BYTE, UNDEFINED, SBYTE})  # tag types that can carry words
IFD_TYPES = frozenset({13, 18})  # IFD and IFD8 (TIFF TN1, BigTIFF): the value points at another IFD
# Byte size of one value of each field type (TIFF 6.0 Section 2 "IFD Entry"; BigTIFF adds 16-18).
# An unknown type counts as bytes: the entry is removed anyway, and its value zeroed as far as it goes.
_TYPE_SIZES = {
    1: 1,
    2: 1,
    3: 2,
    4: 4,
    5: 8,
    6: 1,
    7: 1,
    8: 2,
    9: 4,
    10: 8,
    11: 4,
    12: 8,
    13: 4,
    16: 8,
    17: 8,
    18: 8,
}
_ZERO_BLOCK = 1 << 20


class Source(Protocol):
    """What reading needs: a real file or tifffile's FileHandle alike."""

    def seek(self, offset: int, whence: int = 0, /) -> int: ...

    def read(self, size: int = -1, /) -> bytes: ...

    def tell(self) -> int: ...


@dataclass(frozen=True)
class Layout:
    """The shape of IFDs in one file: classic TIFF, BigTIFF or NDPI's 64-bit-offset variant."""

    byteorder: str
    header_pointer_at: int
    pointer_format: str
    count_format: str
    entry_size: int
    ndpi: bool

    @classmethod
    def of(cls, tif: tifffile.TiffFile) -> Layout:
        fmt = tif.tiff
        return cls(
            byteorder=fmt.byteorder,
            header_pointer_at=4 if fmt.version == 42 else 8,
            pointer_format=fmt.offsetformat,
            count_format=fmt.tagnoformat,
            entry_size=fmt.tagsize,
            ndpi=fmt.is_ndpi,
        )

    @property
    def pointer_size(self) -> int:
        return struct.calcsize(self.pointer_format)

    @property
    def count_size(self) -> int:
        return struct.calcsize(self.count_format)

    def entry_count(self, fh: Source, ifd_offset: int) -> int:
        fh.seek(ifd_offset)
        raw = fh.read(self.count_size)
        if len(raw) < self.count_size:
            raise UnsupportedSlideFormat("TIFF with an IFD beyond its end")
        return int(struct.unpack(self.count_format, raw)[0])

    def next_pointer_at(self, fh: Source, ifd_offset: int) -> int:
        return ifd_offset + self.count_size + self.entry_count(fh, ifd_offset) * self.entry_size

    def ifd_span(self, fh: Source, ifd_offset: int) -> tuple[int, int]:
        """[start, end) of the IFD block, including NDPI's trailing high-offset bytes."""
        return ifd_offset, ifd_offset + self.ifd_length(self.entry_count(fh, ifd_offset))

    def read_pointer(self, fh: Source, at: int) -> int:
        fh.seek(at)
        return int(struct.unpack(self.pointer_format, fh.read(self.pointer_size))[0])

    def pack_pointer(self, value: int) -> bytes:
        return struct.pack(self.pointer_format, value)

    @property
    def field_size(self) -> int:
        """Size of an entry's count and of its value field: 4 bytes, or 8 in BigTIFF."""
        return (self.entry_size - 4) // 2

    def entries(self, fh: Source, ifd_offset: int) -> list[RawEntry]:
        """The IFD's entries as stored, including any tifffile would skip (unknown types, duplicates)."""
        count = self.entry_count(fh, ifd_offset)
        block = read_bytes(fh, ifd_offset, self.ifd_length(count))
        if len(block) < self.ifd_length(count):
            raise UnsupportedSlideFormat("TIFF with a truncated IFD")
        width = "I" if self.field_size == 4 else "Q"
        head = struct.Struct(f"{self.byteorder}HH{width}")
        field = struct.Struct(f"{self.byteorder}{width}")
        highs_at = self.count_size + count * self.entry_size + self.pointer_size
        found = []
        for index in range(count):
            at = self.count_size + index * self.entry_size
            code, dtype, length = head.unpack_from(block, at)
            size = length * _TYPE_SIZES.get(dtype, 1)
            value_at = ifd_offset + at + head.size
            if size > self.field_size:
                value_at = field.unpack_from(block, at + head.size)[0]
                if self.ndpi:  # NDPI keeps the high 32 bits of each offset after the IFD
                    value_at |= struct.unpack_from(f"{self.byteorder}I", block, highs_at + 4 * index)[0] << 32
            found.append(
                RawEntry(index, ifd_offset + at, code, dtype, size, value_at, size <= self.field_size)
            )
        return found

    def ifd_length(self, count: int) -> int:
        """Bytes of an IFD block with `count` entries, including NDPI's trailing high-offset bytes."""
        end = self.count_size + count * self.entry_size + self.pointer_size
        return end + (4 * count if self.ndpi else 0)

    def compacted(self, fh: Source, ifd_offset: int, keep: list[int]) -> tuple[bytes, int]:
        """The IFD rewritten with only the entries numbered in `keep` (their order, so still sorted by
        tag as TIFF 6.0 Section 2 requires), padded with zeros to its old length; and where its
        next-IFD pointer now is. Kept values stay where they are, so nothing else moves."""
        count = self.entry_count(fh, ifd_offset)
        block = read_bytes(fh, ifd_offset, self.ifd_length(count))
        entries_at = self.count_size
        pointer_at = entries_at + count * self.entry_size
        new = bytearray(struct.pack(self.count_format, len(keep)))
        for index in keep:
            new += block[entries_at + index * self.entry_size : entries_at + (index + 1) * self.entry_size]
        next_pointer_at = ifd_offset + len(new)
        new += block[pointer_at : pointer_at + self.pointer_size]
        if self.ndpi:
            highs_at = pointer_at + self.pointer_size
            for index in keep:
                new += block[highs_at + 4 * index : highs_at + 4 * index + 4]
        return bytes(new.ljust(len(block), b"\0")), next_pointer_at


@dataclass(frozen=True)
class RawEntry:
    """One IFD entry as stored: where it is, its tag and type, and where its value lives."""

    index: int
    at: int
    code: int
    dtype: int
    size: int  # bytes of the value
    value_at: int
    inline: bool  # the value sits in the entry itself


class Intervals:
    """A static set of byte ranges that answers 'does [start, end) touch any of them?' in O(log n)."""

    def __init__(self, starts: np.ndarray, ends: np.ndarray) -> None:
        keep = ends > starts
        order = np.argsort(starts[keep], kind="stable")
        self._starts = starts[keep][order].astype(np.int64)
        self._ends = ends[keep][order].astype(np.int64)
        self._max_end = np.maximum.accumulate(self._ends) if len(self._ends) else self._ends

    @classmethod
    def of(cls, ranges: Iterable[tuple[int, int]]) -> Intervals:
        pairs = np.array(list(ranges), dtype=np.int64).reshape(-1, 2)
        return cls(pairs[:, 0], pairs[:, 1])

    def overlaps(self, start: int, end: int) -> bool:
        if end <= start or not len(self._starts):
            return False
        below = int(np.searchsorted(self._starts, end, side="left"))
        return below > 0 and int(self._max_end[below - 1]) > start

    def union(self, other: Intervals) -> Intervals:
        return Intervals(
            np.concatenate([self._starts, other._starts]), np.concatenate([self._ends, other._ends])
        )


class GuardViolation(UnsupportedSlideFormat):
    """A planned write would change bytes of the tissue image (a file whose parts overlap): refuse
    rather than risk the pixels the analysis depends on."""

    def __init__(self) -> None:
        super().__init__("TIFF whose image data overlaps its other parts")


@dataclass
class EditPlan:
    """Writes to apply in phases; each is checked against the ranges it must never touch."""

    pixels: Intervals
    phases: dict[int, list[tuple[int, bytes | int]]] = field(default_factory=dict)

    ZERO_IMAGES, TEXT, RELINK, ORPHANS = 0, 1, 2, 3

    def write(self, phase: int, offset: int, data: bytes) -> None:
        self._check(offset, offset + len(data))
        self.phases.setdefault(phase, []).append((offset, data))

    def zero(self, phase: int, offset: int, length: int) -> None:
        self._check(offset, offset + length)
        self.phases.setdefault(phase, []).append((offset, length))

    def _check(self, start: int, end: int) -> None:
        if self.pixels.overlaps(start, end):
            raise GuardViolation()

    def apply(self, path: Path) -> None:
        """No fsync: ordering protects against a crashed process; after a power loss the stage starts over."""
        with path.open("r+b") as fh:
            for phase in sorted(self.phases):
                for offset, payload in self.phases[phase]:
                    fh.seek(offset)
                    if isinstance(payload, int):
                        _write_zeros(fh, payload)
                    else:
                        fh.write(payload)
            fh.flush()


def _write_zeros(fh: BinaryIO, length: int) -> None:
    block = bytes(min(length, _ZERO_BLOCK))
    while length > 0:
        step = min(length, len(block))
        fh.write(block[:step])
        length -= step


def read_bytes(fh: Source, offset: int, length: int) -> bytes:
    fh.seek(offset)
    return fh.read(length)


def iter_subpages(tif: tifffile.TiffFile, page: tifffile.TiffPage) -> Iterator[tifffile.TiffPage]:
    """The page and every page hanging below it through SubIFDs (pyramids written as sub-IFDs)."""
    yield page
    for number, offset in enumerate(page.subifds or ()):
        if not offset:
            continue
        tif.filehandle.seek(offset)
        child = tifffile.TiffPage(tif, index=(*page.treeindex, number))
        yield from iter_subpages(tif, child)


def data_ranges(page: tifffile.TiffPage) -> tuple[np.ndarray, np.ndarray]:
    """Offsets and byte counts of a page's strips or tiles, straight from its tags."""
    for offsets_code, counts_code in ((324, 325), (273, 279)):
        offsets = page.tags.valueof(offsets_code)
        counts = page.tags.valueof(counts_code)
        if offsets is not None and counts is not None:
            return (
                np.atleast_1d(np.asarray(offsets, dtype=np.int64)),
                np.atleast_1d(np.asarray(counts, dtype=np.int64)),
            )
    return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
