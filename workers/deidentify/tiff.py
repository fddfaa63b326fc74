"""De-identify a TIFF-family slide in place: unlink and zero the glass photographs, blank the PHI text.

Cost is proportional to the headers and the removed images, never to the
tissue pyramid, whose bytes are not read or written (an `EditPlan` guard
enforces it). Text tags follow an allowlist: ASCII tags other than Make, Model
and Software are emptied, Software too when it carries a date; the
description of each vendor is rewritten by its own rules (see `text`).
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

from workers.deidentify.errors import UnsupportedSlideFormat
from workers.deidentify.pages import associated_kind, carries_slide_metadata
from workers.deidentify.text import (
    audit_name,
    blank,
    is_bif_level_description,
    is_blank,
    is_harmless_generic_description,
    looks_like_date,
    scrub_bif_xmp,
    scrub_philips_xml,
    scrub_svs_description,
)
from workers.deidentify.tiffio import (
    ASCII,
    TEXT_TYPES,
    EditPlan,
    Intervals,
    Layout,
    Source,
    data_ranges,
    iter_subpages,
    read_bytes,
    value_range,
)

_KEEP_ASCII = frozenset({271, 272, 305})  # Make, Model, Software: needed to recognise the format
_BLANK_BINARY = frozenset({700, 33723, 34377, 37510, 40091, 40092, 40093, 40094, 40095})  # XMP, IPTC, ...
_EXIF_IFDS = frozenset({34665, 34853})  # Exif and GPS sub-IFDs: only their text entries matter here


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
        kinds = [associated_kind(flavour, i, page, pages[0]) for i, page in enumerate(pages)]
        tissue = [page for page, kind in zip(pages, kinds, strict=True) if kind is None]
        removed = [(page, kind) for page, kind in zip(pages, kinds, strict=True) if kind is not None]
        if not tissue:
            raise UnsupportedSlideFormat(f"{flavour} without a tissue image")
        carrier = pages[0] if kinds[0] is not None and carries_slide_metadata(flavour, 0, pages[0]) else None
        tissue_nodes = [node for page in tissue for node in iter_subpages(tif, page)]
        removed_nodes = [node for page, _ in removed for node in iter_subpages(tif, page)]
        pixels = _pixel_intervals(tissue_nodes)
        plan = EditPlan(pixels)

        outcome.removed_images.extend(kind for _, kind in removed)
        for node in removed_nodes:
            offsets, counts = data_ranges(node)
            for offset, count in zip(offsets.tolist(), counts.tolist(), strict=True):
                if count > 0:
                    plan.zero(EditPlan.ZERO_IMAGES, offset, count)

        linked_nodes = tissue_nodes if carrier is None else [carrier, *tissue_nodes]
        protected = pixels.union(_structure_intervals(fh, layout, linked_nodes))
        for node in linked_nodes:
            _scrub_page_text(fh, layout, plan, flavour, node, outcome)
        orphans = [node for node in removed_nodes if node is not carrier]
        for node in orphans:
            _zero_orphan_text(fh, layout, plan, node, protected)
        linked = [page for page in pages if page in tissue or page is carrier]
        _relink(fh, layout, plan, [page.offset for page in linked])
        for node in orphans:
            _zero_orphan(fh, layout, plan, node, protected)
    plan.apply(path)
    outcome.blanked_fields = list(dict.fromkeys(outcome.blanked_fields))
    return outcome


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


def _structure_intervals(fh: Source, layout: Layout, nodes: list[tifffile.TiffPage]) -> Intervals:
    """IFDs and out-of-line values of kept pages: zeroing an orphan must not reach into them."""
    ranges = []
    for node in nodes:
        span = layout.ifd_span(fh, node.offset)
        ranges.append(span)
        for tag in node.tags.values():
            where = value_range(tag, span)
            if where is not None:
                ranges.append(where)
    return Intervals.of(ranges)


def _tag_name(flavour: str, tag: tifffile.TiffTag) -> str:
    if flavour == "ndpi" and tag.code in tifffile.TIFF.NDPI_TAGS:
        return str(tifffile.TIFF.NDPI_TAGS[tag.code])
    return audit_name(tag.name)


def _scrub_page_text(
    fh: Source, layout: Layout, plan: EditPlan, flavour: str, page: tifffile.TiffPage, outcome: TiffOutcome
) -> None:
    for tag in page.tags.values():
        if tag.code in _EXIF_IFDS:
            _scrub_exif(fh, layout, plan, _sub_ifd_offset(fh, layout, tag), outcome)
        else:
            _scrub_tag(fh, plan, flavour, tag, outcome)


def _scrub_tag(fh: Source, plan: EditPlan, flavour: str, tag: tifffile.TiffTag, outcome: TiffOutcome) -> None:
    if tag.code != 270 and tag.code not in _BLANK_BINARY and tag.dtype != ASCII:
        return
    raw = read_bytes(fh, int(tag.valueoffset), int(tag.valuebytecount))
    if is_blank(raw):
        return
    name = _tag_name(flavour, tag)
    new, names = _rewrite(flavour, tag.code, raw, name)
    if new != raw:
        plan.write(EditPlan.TEXT, int(tag.valueoffset), new)
        outcome.blanked_fields.extend(names)


def _rewrite(flavour: str, code: int, raw: bytes, name: str) -> tuple[bytes, list[str]]:
    if code == 270:
        return _rewrite_description(flavour, raw)
    if code == 700 and flavour == "ventana-bif":
        return scrub_bif_xmp(raw)
    if code in _BLANK_BINARY:
        return blank(raw, b" "), [name]
    if code in _KEEP_ASCII and not looks_like_date(raw):
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


def _sub_ifd_offset(fh: Source, layout: Layout, tag: tifffile.TiffTag) -> int:
    """Read the pointer from the IFD entry itself (tifffile reports a resolved offset for IFD tags)."""
    code = tifffile.TIFF.DATA_FORMATS[tag.dtype][-1]
    field_at = int(tag.offset) + 4 + (4 if layout.entry_size == 12 else 8)
    raw = read_bytes(fh, field_at, struct.calcsize(code))
    return int(struct.unpack(f"{layout.byteorder}{code}", raw)[0])


def _scrub_exif(fh: Source, layout: Layout, plan: EditPlan, offset: int, outcome: TiffOutcome) -> None:
    """Exif/GPS sub-IFDs: empty every ASCII entry (dates, owner and serial names)."""
    count = layout.entry_count(fh, offset)
    first = offset + layout.count_size
    width = "I" if layout.entry_size == 12 else "Q"  # count and value fields: 4 bytes, or 8 in BigTIFF
    entry = struct.Struct(f"{layout.byteorder}HH{width}")
    value = struct.Struct(f"{layout.byteorder}{width}")
    for number in range(count):
        at = first + number * layout.entry_size
        code, dtype, length = entry.unpack(read_bytes(fh, at, entry.size))
        if dtype != ASCII or length == 0:
            continue
        inline = length <= value.size
        value_at = at + entry.size if inline else value.unpack(read_bytes(fh, at + entry.size, value.size))[0]
        raw = read_bytes(fh, value_at, length)
        if not is_blank(raw):
            plan.write(EditPlan.TEXT, value_at, blank(raw))
            outcome.blanked_fields.append(f"Exif.{audit_name(tifffile.TIFF.TAGS.get(code, str(code)))}")


def _relink(fh: Source, layout: Layout, plan: EditPlan, chain: list[int]) -> None:
    """Point the header at the first linked IFD and each at the next: removed ones drop out."""
    links = [(layout.header_pointer_at, chain[0])]
    for number, offset in enumerate(chain):
        following = chain[number + 1] if number + 1 < len(chain) else 0
        links.append((layout.next_pointer_at(fh, offset), following))
    for at, target in links:
        if layout.read_pointer(fh, at) != target:
            plan.write(EditPlan.RELINK, at, layout.pack_pointer(target))


def _zero_orphan_text(
    fh: Source, layout: Layout, plan: EditPlan, page: tifffile.TiffPage, protected: Intervals
) -> None:
    """Before unlinking, a removed page's text values (its description among them) become zeros, so
    even a process dying right after the unlink leaves no PHI in the orphaned IFD. Its numeric
    values (strip offsets) stay until then: a re-run must still find the page's image bytes."""
    span = layout.ifd_span(fh, page.offset)
    for tag in page.tags.values():
        if tag.dtype not in TEXT_TYPES or tag.valuebytecount == 0:
            continue
        start = int(tag.valueoffset)
        end = start + int(tag.valuebytecount)
        inline = span[0] <= start < span[1]
        if inline or not protected.overlaps(start, end):
            plan.zero(EditPlan.TEXT, start, end - start)


def _zero_orphan(
    fh: Source, layout: Layout, plan: EditPlan, page: tifffile.TiffPage, protected: Intervals
) -> None:
    """Once unlinked, a removed page's IFD block and remaining values become zeros."""
    span = layout.ifd_span(fh, page.offset)
    ranges = [span]
    for tag in page.tags.values():
        where = value_range(tag, span)
        if where is not None:
            ranges.append(where)
    for start, end in ranges:
        if not protected.overlaps(start, end):
            plan.zero(EditPlan.ORPHANS, start, end - start)
