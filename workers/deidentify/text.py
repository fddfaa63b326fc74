"""Same-length rewrites of the text a slide carries: Aperio key/value descriptions and vendor XML.

Every function takes the raw bytes of one tag value and returns bytes of the
same length (so the edit stays in place) plus the *names* of what it removed,
for the audit trail. The rules are allowlists: a key or attribute we do not
know is blanked, because a field added by a future scanner release is more
likely to carry a name or a barcode than something the analysis needs.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable

# Aperio ImageDescription keys the analysis (or a slide reader) needs; everything else goes.
SVS_KEEP = frozenset(
    {
        "AppMag",
        "MPP",
        "StripeWidth",
        "Left",
        "Top",
        "LineCameraSkew",
        "LineAreaXOffset",
        "LineAreaYOffset",
        "Focus Offset",
        "OriginalWidth",
        "OriginalHeight",
        "Originalheight",
        "Filtered",
        "Exposure Time",
        "Exposure Scale",
        "Gamma",
        "Display Color",
        "ICC Profile",
    }
)

# Philips TIFF <Attribute Name=...> leaves needed to read the pyramid and its pixel size.
PHILIPS_KEEP = frozenset(
    {
        "DICOM_PIXEL_SPACING",
        "PIM_DP_IMAGE_TYPE",
        "PIM_DP_IMAGE_COLUMNS",
        "PIM_DP_IMAGE_ROWS",
        "PIIM_PIXEL_DATA_REPRESENTATION_NUMBER",
        "PIIM_PIXEL_DATA_REPRESENTATION_COLUMNS",
        "PIIM_PIXEL_DATA_REPRESENTATION_ROWS",
        "PIIM_DP_SCANNER_OPERATING_MODE",
        "PIM_DP_UFS_INTERFACE_VERSION",
        "DICOM_BITS_ALLOCATED",
        "DICOM_BITS_STORED",
        "DICOM_HIGH_BIT",
        "DICOM_PIXEL_REPRESENTATION",
        "DICOM_SAMPLES_PER_PIXEL",
        "DICOM_PHOTOMETRIC_INTERPRETATION",
        "DICOM_PLANAR_CONFIGURATION",
        "DICOM_LOSSY_IMAGE_COMPRESSION",
        "DICOM_LOSSY_IMAGE_COMPRESSION_METHOD",
        "DICOM_LOSSY_IMAGE_COMPRESSION_RATIO",
        "DICOM_MANUFACTURER",
        "DICOM_MANUFACTURERS_MODEL_NAME",
        "DICOM_SOFTWARE_VERSIONS",
        "DICOM_ICCPROFILE",
    }
)

# Ventana iScan attributes: kept when named here, or when a bare number not named in BIF_ALWAYS_BLANK.
BIF_KEEP = frozenset({"Magnification", "ScanRes", "Z-layers", "Z-spacing", "Direction", "ScannerModel"})
_BIF_ALWAYS_BLANK = re.compile(r"(?i)barcode|name|date|time|user|unit|serial|id$|label|slide|case|patient")
_NUMBER = re.compile(rb"^\s*[-+]?\d+(\.\d+)?([eE][-+]?\d+)?\s*$")
_ENUM = frozenset({b"RIGHT", b"LEFT", b"UP", b"DOWN", b"true", b"false", b"True", b"False"})

_DATE = re.compile(
    rb"(19|20)\d\d[-:/.](0?[1-9]|1[0-2])[-:/.][0-3]?\d"
    rb"|\b[0-3]?\d/[0-3]?\d/(\d\d)?\d\d\b"
    rb"|\b[0-3]?\d\.[01]?\d\.(19|20)\d\d\b"
)
_SAFE_NAME = re.compile(r"^[A-Za-z0-9 _.:\-]{1,64}$")


def audit_name(name: str) -> str:
    """A key name is fit for the audit trail only if it looks like one (a malformed pair could be a name)."""
    name = name.strip()
    return name if _SAFE_NAME.match(name) else "<unnamed>"


def looks_like_date(raw: bytes) -> bool:
    return bool(_DATE.search(raw))


_MAKER = re.compile(rb"^[A-Za-z][A-Za-z .&-]{0,31}$")


def is_plain_maker(raw: bytes) -> bool:
    """A manufacturer's name ("Hamamatsu"): letters only, so no serial number, date or barcode."""
    return bool(_MAKER.match(raw.rstrip(b"\0").strip()))


def is_blank(raw: bytes) -> bool:
    return not raw.strip(b"\0 \t\r\n")


def blank(raw: bytes, fill: bytes = b"\0") -> bytes:
    return fill * len(raw)


def _pad(text: bytes, length: int) -> bytes:
    return text + b"\0" * (length - len(text))


def scrub_svs_description(raw: bytes) -> tuple[bytes, list[str]]:
    """Drop Aperio `key = value` pairs not in SVS_KEEP; the header lines (scanner, dimensions) stay.

    The pairs are removed rather than emptied, and the freed bytes become NULs, so
    readers see a shorter, well-formed description.
    """
    body = raw.rstrip(b"\0")
    head, *pairs = body.split(b"|")
    kept, removed = [head], []
    for pair in pairs:
        key = pair.split(b"=", 1)[0].decode("latin-1").strip() if b"=" in pair else ""
        if key in SVS_KEEP:
            kept.append(pair)
        elif pair.strip():
            removed.append(f"ImageDescription.{audit_name(key) if key else '<unnamed>'}")
    if not removed:
        return raw, []
    return _pad(b"|".join(kept), len(raw)), removed


def is_harmless_generic_description(raw: bytes) -> bool:
    """Empty, or the shape-only JSON tifffile writes; any other free text may name the patient."""
    body = raw.rstrip(b"\0").strip()
    if not body:
        return True
    try:
        parsed = json.loads(body)
    except ValueError:
        return False
    return isinstance(parsed, dict) and set(parsed) <= {"shape", "axes"}


_BIF_LEVEL = re.compile(rb"^level=\d+ mag=[\d.]+ quality=\d+$")


def is_bif_level_description(raw: bytes) -> bool:
    return bool(_BIF_LEVEL.match(raw.rstrip(b"\0").strip()))


# --- XML ------------------------------------------------------------------------------------------

_XML_TOKEN = re.compile(rb"<!--.*?-->|<!\[CDATA\[.*?\]\]>|<\?.*?\?>|<[^>]*>", re.S)
_XML_ATTR = re.compile(rb"([\w:.\-]+)\s*=\s*(\"[^\"]*\"|'[^']*')")
_XML_TAG_NAME = re.compile(rb"<\s*([\w:.\-]+)")

KeepAttr = Callable[[str, str, bytes], bool]
KeepText = Callable[[str, dict[str, str], bytes], bool]


def scrub_xml(raw: bytes, keep_attr: KeepAttr, keep_text: KeepText, label: str) -> tuple[bytes, list[str]]:
    """Blank (with spaces, same length) attribute values and element texts the callbacks do not keep.

    Not a full XML parser on purpose: it edits bytes where they are, so the
    document keeps its structure and every offset; comments and CDATA are
    always blanked, processing instructions and namespace declarations kept.
    """
    out = bytearray(raw)
    removed: list[str] = []
    last_tag, last_attrs = "", dict[str, str]()
    position = 0
    for token in _XML_TOKEN.finditer(raw):
        _text_between(raw, out, position, token.start(), last_tag, last_attrs, keep_text, label, removed)
        position = token.end()
        chunk = token.group(0)
        if chunk.startswith((b"<!--", b"<![CDATA[")):
            inner_start = token.start() + (4 if chunk.startswith(b"<!--") else 9)
            inner_end = token.end() - 3
            if not is_blank(raw[inner_start:inner_end]):
                out[inner_start:inner_end] = b" " * (inner_end - inner_start)
                removed.append(f"{label}.<comment>")
            continue
        if chunk.startswith(b"<?"):
            continue
        if chunk.startswith(b"</"):
            last_tag, last_attrs = "", {}  # text after a closing tag belongs to no allowlisted element
            continue
        name_match = _XML_TAG_NAME.match(chunk)
        tag = name_match.group(1).decode("latin-1") if name_match else ""
        attrs: dict[str, str] = {}
        for attr in _XML_ATTR.finditer(chunk):
            key = attr.group(1).decode("latin-1")
            value = attr.group(2)[1:-1]
            attrs[key] = value.decode("latin-1")
            if key.startswith("xmlns") or key.startswith("xml:") or not value.strip():
                continue
            if keep_attr(tag, key, value):
                continue
            start = token.start() + attr.start(2) + 1
            out[start : start + len(value)] = b" " * len(value)
            removed.append(f"{label}.{audit_name(key)}")
        last_tag, last_attrs = ("", {}) if chunk.endswith(b"/>") else (tag, attrs)
    _text_between(raw, out, position, len(raw), last_tag, last_attrs, keep_text, label, removed)
    return bytes(out), list(dict.fromkeys(removed))


def _text_between(
    raw: bytes,
    out: bytearray,
    start: int,
    end: int,
    tag: str,
    attrs: dict[str, str],
    keep_text: KeepText,
    label: str,
    removed: list[str],
) -> None:
    text = raw[start:end]
    if is_blank(text) or keep_text(tag, attrs, text):
        return
    out[start:end] = bytes(b if b in b"\0" else 0x20 for b in text)
    removed.append(f"{label}.{audit_name(attrs.get('Name', tag))}")


def scrub_philips_xml(raw: bytes) -> tuple[bytes, list[str]]:
    """Philips keeps everything in <Attribute Name="...">value</Attribute>; keep only PHILIPS_KEEP values.

    The label and macro photographs live here too, base64 in PIM_DP_IMAGE_DATA,
    and go with everything else not on the list.
    """

    def keep_attr(tag: str, key: str, value: bytes) -> bool:
        return tag in {"Attribute", "DataObject", "Array"} and key in {
            "Name",
            "Group",
            "Element",
            "PMSVR",
            "ObjectType",
        }

    def keep_text(tag: str, attrs: dict[str, str], text: bytes) -> bool:
        return tag == "Attribute" and attrs.get("Name", "") in PHILIPS_KEEP

    return scrub_xml(raw, keep_attr, keep_text, "ImageDescription")


def scrub_bif_xmp(raw: bytes) -> tuple[bytes, list[str]]:
    """Ventana XMP: iScan attributes by allowlist; stitching info (numbers, directions) kept for readers."""

    def keep_value(key: str, value: bytes) -> bool:
        if _BIF_ALWAYS_BLANK.search(key):
            return False
        return key in BIF_KEEP or bool(_NUMBER.match(value)) or value.strip() in _ENUM

    def keep_attr(tag: str, key: str, value: bytes) -> bool:
        if tag == "iScan":
            return key in BIF_KEEP and not looks_like_date(value)
        return keep_value(key, value)

    def keep_text(tag: str, attrs: dict[str, str], text: bytes) -> bool:
        return bool(_NUMBER.match(text))

    return scrub_xml(raw, keep_attr, keep_text, "XMP")
