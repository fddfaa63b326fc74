"""De-identify a TIFF-family slide in place: unlink and zero the glass photographs, and keep only the
tags on the vendor's allow-list.

Cost is proportional to the headers and the removed images, never to the
tissue pyramid, whose bytes are not read or written (an `EditPlan` guard
enforces it). Pages are kept or removed by pyramid geometry (`pages`). In each
kept IFD every entry not on the allow-list (`tiff_allowlist`) is removed: the
IFD is rewritten in place with the remaining entries, its freed bytes and the
removed values (Exif/GPS sub-IFDs included) become zeros. The allowed text tags
are rewritten by their vendor's rules (see `text`), always to the same length.
One exception to unlinking: Ventana's label is IFD 0 and carries the slide's
iScan metadata that readers look for there, so it stays linked with its
pixels zeroed and its name blanked (see `pages.carries_slide_metadata`).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tifffile

from workers.deidentify.binary_tags import scrub_binary
from workers.deidentify.pages import carries_slide_metadata, check_sub_level, classify_pages
from workers.deidentify.text import (
    audit_name,
    blank,
    is_bif_level_description,
    is_blank,
    is_harmless_generic_description,
    is_plain_maker,
    looks_like_date,
    scrub_bif_xmp,
    scrub_philips_xml,
    scrub_svs_description,
)
from workers.deidentify.tiff_allowlist import (
    BINARY,
    IMAGE_DESCRIPTION,
    MAKE,
    SOFTWARE,
    XMP,
    may_keep_entry,
    text_tags,
)
from workers.deidentify.tiffio import (
    IFD_TYPES,
    TEXT_TYPES,
    EditPlan,
    Intervals,
    Layout,
    RawEntry,
    Source,
    data_ranges,
    iter_subpages,
    read_bytes,
)

_SUB_IFD_POINTERS = frozenset({34665, 34853, 40965})  # Exif, GPS, Interoperability (Exif 2.32 4.6.3)
_MAX_SUB_IFD_DEPTH = 4


@dataclass
class TiffOutcome:
    removed_images: list[str] = field(default_factory=list)
    blanked_fields: list[str] = field(default_factory=list)


def open_tiff(path: Path, flavour: str) -> tifffile.TiffFile:
    """NDPI must be opened as such (its IFDs use 64-bit pointers), whatever the file is called."""
    return tifffile.TiffFile(path, is_ndpi=flavour == "ndpi")


def top_pages(tif: tifffile.TiffFile) -> list[tifffile.TiffPage]:
    tif.pages.useframes = False
    tif.pages.cache = True
    return [page for page in tif.pages if isinstance(page, tifffile.TiffPage)]


def deidentify_tiff(path: Path, flavour: str) -> TiffOutcome:
    outcome = TiffOutcome()
    with open_tiff(path, flavour) as tif:
        layout = Layout.of(tif)
        fh = tif.filehandle
        pages = top_pages(tif)
        kinds = classify_pages(flavour, pages)
        tissue = [page for page, kind in zip(pages, kinds, strict=True) if kind is None]
        removed = [(page, kind) for page, kind in zip(pages, kinds, strict=True) if kind is not None]
        carrier = pages[0] if kinds[0] is not None and carries_slide_metadata(flavour, 0, pages[0]) else None
        tissue_nodes = [node for page in tissue for node in iter_subpages(tif, page)]
        level0 = tissue[0]
        for node in tissue_nodes:
            if len(node.treeindex) > 1:
                check_sub_level(node, level0)
        removed_nodes = [node for page, _ in removed for node in iter_subpages(tif, page)]
        pixels = _pixel_intervals(tissue_nodes)
        plan = EditPlan(pixels)

        outcome.removed_images.extend(
            kind for page, kind in removed if kind is not None and not (page is carrier and _wiped(fh, page))
        )
        for node in removed_nodes:
            offsets, counts = data_ranges(node)
            for offset, count in zip(offsets.tolist(), counts.tolist(), strict=True):
                if count > 0:
                    plan.zero(EditPlan.ZERO_IMAGES, offset, count)

        linked_nodes = tissue_nodes if carrier is None else [carrier, *tissue_nodes]
        keeps = {node.offset: _entries_to_keep(fh, layout, flavour, node) for node in linked_nodes}
        protected = pixels.union(_structure_intervals(fh, layout, linked_nodes, keeps))
        next_pointers = {}
        for node in linked_nodes:
            kept = _scrub_page(fh, layout, plan, flavour, node, keeps[node.offset], protected, outcome)
            next_pointers[node.offset] = kept
        orphans = [node for node in removed_nodes if node is not carrier]
        for node in orphans:
            _zero_orphan_text(fh, layout, plan, node, protected)
        linked = [page for page in pages if page in tissue or page is carrier]
        _relink(fh, layout, plan, [page.offset for page in linked], next_pointers)
        for node in orphans:
            _zero_orphan(fh, layout, plan, node, protected)
    plan.apply(path)
    outcome.blanked_fields = list(dict.fromkeys(outcome.blanked_fields))
    return outcome


def _wiped(fh: Source, page: tifffile.TiffPage) -> bool:
    """Ventana's label carrier as an earlier run left it: no name, pixels all zeros."""
    if not is_blank((page.description or "").encode("latin-1", "replace")):
        return False
    offsets, counts = data_ranges(page)
    return all(
        not read_bytes(fh, offset, count).strip(b"\0")
        for offset, count in zip(offsets.tolist(), counts.tolist(), strict=True)
    )


def _pixel_intervals(nodes: list[tifffile.TiffPage]) -> Intervals:
    starts, lengths = [], []
    for node in nodes:
        offsets, counts = data_ranges(node)
        starts.append(offsets)
        lengths.append(counts)
    if not starts:
        return Intervals.of(())
    start = np.concatenate(starts)
    return Intervals(start, start + np.concatenate(lengths))


def _structure_intervals(
    fh: Source, layout: Layout, nodes: list[tifffile.TiffPage], keeps: dict[int, list[RawEntry]]
) -> Intervals:
    """IFDs and out-of-line values that stay: zeroing anything else must not reach into them."""
    ranges = []
    for node in nodes:
        ranges.append(layout.ifd_span(fh, node.offset))
        for entry in keeps[node.offset]:
            if not entry.inline:
                ranges.append((entry.value_at, entry.value_at + entry.size))
    return Intervals.of(ranges)


def _entries_to_keep(fh: Source, layout: Layout, flavour: str, page: tifffile.TiffPage) -> list[RawEntry]:
    """The allow-list applied to the IFD as stored (not as tifffile parsed it, which skips oddities).
    A text tag whose value sits inside its entry is dropped rather than rewritten there."""
    text = text_tags(flavour)
    kept = []
    for entry in layout.entries(fh, page.offset):
        if not may_keep_entry(flavour, entry.code, entry.dtype):
            continue
        if entry.code in BINARY and (
            entry.inline or scrub_binary(entry.code, read_bytes(fh, entry.value_at, entry.size))[0] is None
        ):
            continue
        if entry.code in text and entry.inline and not is_blank(read_bytes(fh, entry.value_at, entry.size)):
            continue
        kept.append(entry)
    return kept


def _tag_name(flavour: str, code: int) -> str:
    if flavour == "ndpi" and code in tifffile.TIFF.NDPI_TAGS:
        return str(tifffile.TIFF.NDPI_TAGS[code])
    name = tifffile.TIFF.TAGS.get(code, None)
    return audit_name(str(name)) if name else f"tag {code}"


def _scrub_page(
    fh: Source,
    layout: Layout,
    plan: EditPlan,
    flavour: str,
    page: tifffile.TiffPage,
    keep: list[RawEntry],
    protected: Intervals,
    outcome: TiffOutcome,
) -> int:
    """Rewrite the kept text tags by their vendor's rules and remove every other entry from the IFD.

    Returns where the page's next-IFD pointer is once the IFD is compacted."""
    for entry in keep:
        if entry.code in text_tags(flavour):
            _scrub_text(fh, plan, flavour, entry, outcome)
        elif entry.code in BINARY:
            _scrub_binary(fh, plan, entry, outcome)
    entries = layout.entries(fh, page.offset)
    gone = [entry for entry in entries if entry not in keep]
    for entry in gone:
        outcome.blanked_fields.append(_tag_name(flavour, entry.code))
        if entry.code in _SUB_IFD_POINTERS or entry.dtype in IFD_TYPES:
            for offset in _pointers(fh, layout, entry):
                _zero_sub_ifd(fh, layout, plan, offset, protected, depth=0)
        if not entry.inline and not protected.overlaps(entry.value_at, entry.value_at + entry.size):
            plan.zero(EditPlan.TEXT, entry.value_at, entry.size)
    if not gone:
        return layout.next_pointer_at(fh, page.offset)
    block, next_pointer_at = layout.compacted(fh, page.offset, [entry.index for entry in keep])
    plan.write(EditPlan.TEXT, page.offset, block)
    return next_pointer_at


def _scrub_text(fh: Source, plan: EditPlan, flavour: str, entry: RawEntry, outcome: TiffOutcome) -> None:
    raw = read_bytes(fh, entry.value_at, entry.size)
    if is_blank(raw):
        return
    new, names = _rewrite(flavour, entry.code, raw, _tag_name(flavour, entry.code))
    if new != raw:
        plan.write(EditPlan.TEXT, entry.value_at, new)
        outcome.blanked_fields.extend(names)


def _scrub_binary(fh: Source, plan: EditPlan, entry: RawEntry, outcome: TiffOutcome) -> None:
    raw = read_bytes(fh, entry.value_at, entry.size)
    new, names = scrub_binary(entry.code, raw)
    if new is not None and new != raw:
        plan.write(EditPlan.TEXT, entry.value_at, new)
        outcome.blanked_fields.extend(names)


def _rewrite(flavour: str, code: int, raw: bytes, name: str) -> tuple[bytes, list[str]]:
    if code == IMAGE_DESCRIPTION:
        return _rewrite_description(flavour, raw)
    if code == XMP and flavour == "ventana-bif":
        return scrub_bif_xmp(raw)
    if code == MAKE and is_plain_maker(raw):
        return raw, []
    if code == SOFTWARE and not looks_like_date(raw):
        return raw, []
    return blank(raw), [name]


def _rewrite_description(flavour: str, raw: bytes) -> tuple[bytes, list[str]]:
    if flavour == "aperio-svs":
        return scrub_svs_description(raw)
    if flavour == "philips-tiff" and raw.lstrip().startswith((b"<?xml", b"<DataObject")):
        return scrub_philips_xml(raw)
    if flavour == "ventana-bif" and is_bif_level_description(raw):
        return raw, []
    if flavour == "generic-tiff" and is_harmless_generic_description(raw):
        return raw, []
    return blank(raw), ["ImageDescription"]


def _pointers(fh: Source, layout: Layout, entry: RawEntry) -> list[int]:
    """The IFD offsets an Exif/GPS/Interoperability (or any IFD-typed) entry points at."""
    width = 8 if entry.dtype in (16, 17, 18) else 4
    count = entry.size // width
    raw = read_bytes(fh, entry.value_at, count * width)
    values = struct.unpack(f"{layout.byteorder}{count}{'Q' if width == 8 else 'I'}", raw)
    return [int(value) for value in values if value]


def _zero_sub_ifd(
    fh: Source, layout: Layout, plan: EditPlan, offset: int, protected: Intervals, depth: int
) -> None:
    """An Exif or GPS IFD whose pointer is removed: zero its block and values (dates, owner and serial
    names, maker notes, user comments), and those of the IFDs it points at in turn."""
    if depth > _MAX_SUB_IFD_DEPTH or protected.overlaps(offset, offset + layout.count_size):
        return
    entries = layout.entries(fh, offset)
    for entry in entries:
        if entry.code in _SUB_IFD_POINTERS or entry.dtype in IFD_TYPES:
            for child in _pointers(fh, layout, entry):
                _zero_sub_ifd(fh, layout, plan, child, protected, depth + 1)
        if not entry.inline and not protected.overlaps(entry.value_at, entry.value_at + entry.size):
            plan.zero(EditPlan.TEXT, entry.value_at, entry.size)
    start, end = layout.ifd_span(fh, offset)
    if not protected.overlaps(start, end):
        plan.zero(EditPlan.TEXT, start, end - start)


def _relink(
    fh: Source, layout: Layout, plan: EditPlan, chain: list[int], next_pointers: dict[int, int]
) -> None:
    """Point the header at the first linked IFD and each at the next: removed ones drop out.
    `next_pointers` says where each IFD's pointer is after compaction; its value is still the old one."""
    links = [(layout.header_pointer_at, layout.header_pointer_at, chain[0])]
    for number, offset in enumerate(chain):
        following = chain[number + 1] if number + 1 < len(chain) else 0
        links.append((layout.next_pointer_at(fh, offset), next_pointers[offset], following))
    for old_at, new_at, target in links:
        if old_at != new_at or layout.read_pointer(fh, old_at) != target:
            plan.write(EditPlan.RELINK, new_at, layout.pack_pointer(target))


def _zero_orphan_text(
    fh: Source, layout: Layout, plan: EditPlan, page: tifffile.TiffPage, protected: Intervals
) -> None:
    """Before unlinking, a removed page's text values (its description among them) and its Exif/GPS
    IFDs become zeros, so even a process dying right after the unlink leaves no PHI in the orphaned
    IFD. Its numeric values (strip offsets) stay until then: a re-run must still find its image bytes."""
    for entry in layout.entries(fh, page.offset):
        if entry.code in _SUB_IFD_POINTERS:
            for offset in _pointers(fh, layout, entry):
                _zero_sub_ifd(fh, layout, plan, offset, protected, depth=0)
        if entry.dtype not in TEXT_TYPES or entry.size == 0:
            continue
        if entry.inline or not protected.overlaps(entry.value_at, entry.value_at + entry.size):
            plan.zero(EditPlan.TEXT, entry.value_at, entry.size)


def _zero_orphan(
    fh: Source, layout: Layout, plan: EditPlan, page: tifffile.TiffPage, protected: Intervals
) -> None:
    """Once unlinked, a removed page's IFD block and remaining values become zeros."""
    ranges = [layout.ifd_span(fh, page.offset)]
    for entry in layout.entries(fh, page.offset):
        if not entry.inline:
            ranges.append((entry.value_at, entry.value_at + entry.size))
    for start, end in ranges:
        if not protected.overlaps(start, end):
            plan.zero(EditPlan.ORPHANS, start, end - start)
