"""Index.dat of a MIRAX slide: where every tile and every non-hierarchical record lives in the Data files.

Layout (openslide.org/formats/mirax, "Index File", and OpenSlide's
`openslide-vendor-mirax.c`): a five-character version ("01.02") and the SLIDE_ID
of Slidedat.ini; then little-endian int32 values, unaligned. At `hier_root`
(just after the SLIDE_ID) a pointer to the hierarchical record table, at
`hier_root + 4` one to the non-hierarchical table. Each table holds one pointer
per `VAL` of its tree in Slidedat's order (all layers' vals in a row). A record
pointer leads to a list head `[0, first page]`; a data page is `[item count,
next page, items...]`, the last page's next is 0. Hierarchical items are
`[image index, offset, length, file number]`; a non-hierarchical record's first
page holds `[0, 0, offset, length, file number]`. A record pointer of 0 marks
an empty record (it points at the version string).

The whole index is read into memory: it is 16 bytes per tile (a few MiB for the
largest slides), and the edit is a rewrite of it, made atomic by a rename.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np

from workers.deidentify.errors import UnsupportedSlideFormat

VERSION = b"01.02"
MAX_INDEX_BYTES = 512 << 20
_INT = struct.Struct("<i")


class MalformedIndex(UnsupportedSlideFormat):
    def __init__(self) -> None:
        super().__init__("MRXS with an Index.dat that does not match its Slidedat.ini")


@dataclass(frozen=True)
class Extent:
    """Bytes of one record in one Data file."""

    fileno: int
    offset: int
    length: int


class MiraxIndex:
    def __init__(self, raw: bytes, id_length: int) -> None:
        if len(raw) > MAX_INDEX_BYTES or len(raw) < len(VERSION) + id_length + 8:
            raise MalformedIndex()
        self.raw = raw
        self.id_length = id_length
        self.hier_root = len(VERSION) + id_length
        self.hier_table = self._int(self.hier_root)
        self.nonhier_table = self._int(self.hier_root + 4)

    @property
    def version(self) -> bytes:
        return self.raw[: len(VERSION)]

    @property
    def slide_id(self) -> bytes:
        return self.raw[len(VERSION) : self.hier_root]

    def _int(self, at: int) -> int:
        if not 0 <= at <= len(self.raw) - 4:
            raise MalformedIndex()
        return int(_INT.unpack_from(self.raw, at)[0])

    def hier_tiles(self, record: int) -> np.ndarray:
        """Every item of a hierarchical record as rows of [image index, offset, length, file number]."""
        head = self._int(self.hier_table + 4 * record)
        if head == 0:
            return np.zeros((0, 4), dtype=np.int64)
        if self._int(head) != 0:
            raise MalformedIndex()
        page, seen, blocks = self._int(head + 4), set(), []
        while page:
            if page in seen:
                raise MalformedIndex()
            seen.add(page)
            count, following = self._int(page), self._int(page + 4)
            if count < 0 or page + 8 + 16 * count > len(self.raw):
                raise MalformedIndex()
            blocks.append(np.frombuffer(self.raw, dtype="<i4", count=4 * count, offset=page + 8))
            page = following
        items = (
            np.concatenate(blocks).astype(np.int64).reshape(-1, 4) if blocks else np.zeros((0, 4), np.int64)
        )
        if (items < 0).any():
            raise MalformedIndex()
        return items

    def nonhier_extent(self, record: int) -> Extent | None:
        """Where a non-hierarchical record's data is; None for an empty record."""
        head = self._int(self.nonhier_table + 4 * record)
        if head == 0:
            return None
        if self._int(head) != 0:
            raise MalformedIndex()
        page = self._int(head + 4)
        if self._int(page) < 1 or self._int(page + 8) != 0 or self._int(page + 12) != 0:
            raise MalformedIndex()
        offset, length, fileno = self._int(page + 16), self._int(page + 20), self._int(page + 24)
        if min(offset, length, fileno) < 0:
            raise MalformedIndex()
        return Extent(fileno, offset, length)

    def rewritten(self, *, slide_id: bytes, kept_nonhier: list[int], nonhier_total: int) -> bytes:
        """The index with a new SLIDE_ID (same length: every pointer stays valid) and a non-hierarchical
        table holding only `kept_nonhier`, in order, followed by empty (0) entries for the removed."""
        if len(slide_id) != self.id_length:
            raise ValueError("a replacement SLIDE_ID must keep the length of the original")
        table_end = self.nonhier_table + 4 * nonhier_total
        if table_end > len(self.raw):
            raise MalformedIndex()
        pointers = [self._int(self.nonhier_table + 4 * record) for record in kept_nonhier]
        pointers += [0] * (nonhier_total - len(pointers))
        out = bytearray(self.raw)
        out[len(VERSION) : self.hier_root] = slide_id
        out[self.nonhier_table : table_end] = struct.pack(f"<{nonhier_total}i", *pointers)
        return bytes(out)
