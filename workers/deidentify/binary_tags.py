"""The two opaque tags a slide keeps (ICC profile, JPEG tables), kept only when well-formed, text emptied.

Both are binary blobs a decoder needs as they are, yet both have room for free
text: an ICC profile's description, copyright and device tags, and a JPEG stream's
COM and APPn segments. A scanner's private tag given one of these codes, or a
profile that names its site or operator, would carry identifiers through an
allow-list that only looks at tag numbers. So:

- an ICC profile (ICC.1:2022 section 7: 128-byte header with the 'acsp' signature at
  byte 36, then a tag table of (signature, offset, size)) is kept only if its header
  and table are consistent with its length; the data of every text-typed element
  ('text', 'desc', 'mluc', section 10) is zeroed past its type signature, which
  leaves an empty string of the same type, and the profile ID (bytes 84-99, an MD5
  over the profile) is zeroed, meaning "not computed" (section 7.2.18);
- JPEG tables (TIFF Technical Note 2: an abbreviated stream SOI ... EOI of DQT/DHT
  segments) are kept only if they parse as marker segments; COM and APPn payloads
  (ITU-T T.81 B.2.4.5, B.2.4.6) are zeroed, lengths kept.

Anything else under these codes is removed.
"""

from __future__ import annotations

import struct

ICC_PROFILE, JPEG_TABLES = 34675, 347

_ICC_HEADER = 128
_ICC_TEXT_TYPES = frozenset({b"text", b"desc", b"mluc"})
_ICC_PROFILE_ID = slice(84, 100)


def scrub_binary(code: int, raw: bytes) -> tuple[bytes | None, list[str]]:
    """(the value to keep, or None to remove the tag; names of what was emptied)."""
    if code == ICC_PROFILE:
        return _scrub_icc(raw)
    if code == JPEG_TABLES:
        return _scrub_jpeg_tables(raw)
    return None, []


def icc_elements(raw: bytes) -> list[tuple[bytes, int, int]] | None:
    """The (signature, offset, size) of each element of a well-formed profile, else None."""
    if len(raw) < _ICC_HEADER + 4 or raw[36:40] != b"acsp":
        return None
    declared = struct.unpack_from(">I", raw, 0)[0]
    count = struct.unpack_from(">I", raw, _ICC_HEADER)[0]
    if declared != len(raw) or _ICC_HEADER + 4 + 12 * count > len(raw):
        return None
    elements = []
    for index in range(count):
        signature, offset, size = struct.unpack_from(">4sII", raw, _ICC_HEADER + 4 + 12 * index)
        if offset < _ICC_HEADER or size < 8 or offset + size > len(raw):
            return None
        elements.append((signature, offset, size))
    return elements


def _scrub_icc(raw: bytes) -> tuple[bytes | None, list[str]]:
    elements = icc_elements(raw)
    if elements is None:
        return None, []
    out = bytearray(raw)
    out[_ICC_PROFILE_ID] = bytes(16)
    emptied = []
    for signature, offset, size in elements:
        if raw[offset : offset + 4] in _ICC_TEXT_TYPES:
            out[offset + 8 : offset + size] = bytes(size - 8)
            if any(raw[offset + 8 : offset + size]):
                emptied.append(f"ICC profile {signature.decode('latin-1').strip()}")
    return bytes(out), emptied


def jpeg_segments(raw: bytes) -> list[tuple[int, int, int]] | None:
    """The (marker, payload start, payload end) of each segment of a tables-only stream, else None."""
    if raw[:2] != b"\xff\xd8":
        return None
    segments: list[tuple[int, int, int]] = []
    at = 2
    while at + 2 <= len(raw):
        if raw[at] != 0xFF:
            return None
        marker = raw[at + 1]
        if marker == 0xD9:  # EOI ends the stream; nothing may follow but padding
            return segments if not any(raw[at + 2 :]) else None
        if at + 4 > len(raw):
            return None
        length = struct.unpack_from(">H", raw, at + 2)[0]
        end = at + 2 + length
        if length < 2 or end > len(raw):
            return None
        segments.append((marker, at + 4, end))
        at = end
    return None


def _scrub_jpeg_tables(raw: bytes) -> tuple[bytes | None, list[str]]:
    segments = jpeg_segments(raw)
    if segments is None:
        return None, []
    out = bytearray(raw)
    emptied = []
    for marker, start, end in segments:
        if marker == 0xFE or 0xE0 <= marker <= 0xEF:
            if any(raw[start:end]):
                emptied.append("JPEG tables comment" if marker == 0xFE else f"JPEG tables APP{marker - 0xE0}")
            out[start:end] = bytes(end - start)
    return bytes(out), emptied
