"""Which TIFF tags a de-identified slide may keep, per vendor: an allow-list, so an unknown tag goes.

A tag is kept only if a reader needs it to decode the pyramid or to place it
(pixel size, level order, focal plane). Everything else is removed from its
IFD, whatever its type and number: private tags (>= 32768) included, because a
scanner's private ASCII or UNDEFINED tag is exactly where a name or a barcode
hides, and Exif/GPS sub-IFDs, which no slide reader needs.

Three kinds of kept tag:
- structural: numbers only; a text-typed value in one of them is removed;
- binary: opaque data a decoder needs as is (JPEG tables, the ICC profile);
- text: kept, but only with content the vendor's rules allow (see `text`).
"""

from __future__ import annotations

from workers.deidentify.tiffio import TEXT_TYPES

# TIFF 6.0 (Adobe, 1992) tags needed to decode and lay out an image, by section:
# Section 8 baseline (254-284, 296, 320, 338), Section 14 Predictor (317), Section 15 tiles (322-325),
# Section 19 SampleFormat/SMin/SMax (339-341), Section 20 colorimetry (301, 318, 319, 532),
# Section 21 YCbCr (529-531), Section 8 XPosition/YPosition (286, 287: where the image sits);
# TIFF Technical Note 1 SubIFDs (330: pyramids stored as sub-IFDs); TIFF Technical Note 2 JPEGTables
# (347); SGI ImageDepth/TileDepth (32997, 32998), read by libtiff and tifffile to size the image.
STRUCTURAL = frozenset(
    {
        254, 255, 256, 257, 258, 259, 262, 266, 273, 274, 277, 278, 279, 280, 281, 282, 283, 284,
        286, 287, 296, 301, 317, 318, 319, 320, 322, 323, 324, 325, 330, 338, 339, 340, 341,
        529, 530, 531, 532, 32997, 32998,
    }
)  # fmt: skip
# JPEGTables (TIFF TN2) and InterColorProfile (ICC.1:2010 Annex B.4, "embedding ICC profiles in TIFF").
BINARY = frozenset({347, 34675})

IMAGE_DESCRIPTION, MAKE, SOFTWARE, XMP = 270, 271, 305, 700

# Hamamatsu NDPI private tags (openslide's Hamamatsu format notes; tifffile TIFF.NDPI_TAGS):
# 65420 FileFormat (marks NDPI), 65421 Magnification (source lens; -1 macro, -2 map),
# 65422/65423 X/YOffsetFromSlideCentre and 65424 ZOffsetFromSlideCentre (placement and focal plane),
# 65426 McuStarts and 65432 McuStartsHighBytes (JPEG restart offsets for random access).
# Left out on purpose: 65427 SlideLabel (the label text), 65442 ScannerSerialNumber,
# 65449 PropertyMap (free key=value text), 65468 and every other NDPI tag.
NDPI_STRUCTURAL = frozenset({65420, 65421, 65422, 65423, 65424, 65426, 65432})

# Text tags each vendor keeps, and why (the content rules are in `text`):
_TEXT_BY_FLAVOUR: dict[str, frozenset[int]] = {
    # Aperio SVS: ImageDescription carries the level's geometry, AppMag and MPP (Aperio's
    # "ImageDescription" key/value convention; openslide detects SVS by its "Aperio" prefix).
    "aperio-svs": frozenset({IMAGE_DESCRIPTION}),
    # Hamamatsu NDPI: tifffile recognises NDPI by FileFormat *and* Make; Make stays, as a bare word.
    "ndpi": frozenset({MAKE}),
    # Philips TIFF: the DPUfsImport XML in ImageDescription holds the pixel spacing of every level, and
    # readers (openslide, tifffile) recognise the format by Software starting with "Philips".
    "philips-tiff": frozenset({IMAGE_DESCRIPTION, SOFTWARE}),
    # Ventana BIF: "level=N mag=M" descriptions order the levels, the iScan/EncodeInfo XMP holds
    # magnification, pixel size and tile stitching (openslide's Ventana format notes); tifffile
    # recognises BIF by Software "ScanOutputManager".
    "ventana-bif": frozenset({IMAGE_DESCRIPTION, SOFTWARE, XMP}),
    # Generic pyramidal TIFF: only tifffile's own shape-only JSON description.
    "generic-tiff": frozenset({IMAGE_DESCRIPTION}),
}


def text_tags(flavour: str) -> frozenset[int]:
    return _TEXT_BY_FLAVOUR.get(flavour, frozenset())


def structural_tags(flavour: str) -> frozenset[int]:
    return STRUCTURAL | NDPI_STRUCTURAL if flavour == "ndpi" else STRUCTURAL


def allowed_tags(flavour: str) -> frozenset[int]:
    """Every tag code a de-identified slide of this flavour may carry."""
    return structural_tags(flavour) | BINARY | text_tags(flavour)


def may_keep_entry(flavour: str, code: int, dtype: int) -> bool:
    """An entry may stay if its code is allowed and, for a structural tag, its type holds numbers."""
    if code in text_tags(flavour) or code in BINARY:
        return True
    return code in structural_tags(flavour) and dtype not in TEXT_TYPES
