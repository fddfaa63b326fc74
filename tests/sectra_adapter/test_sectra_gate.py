"""Slide gate: suitable slides pass, others get a reason a pathologist understands."""

from __future__ import annotations

from typing import Any

import pytest
from sectra_client.schemas import ImageMetadata

from sectra_adapter._gate import check_slide

PATTERNS = [r"^h\s*(?:&\s*)?e$", r"hematoxylin", r"^he$"]
LIMITS: dict[str, Any] = {
    "stain_patterns": PATTERNS,
    "min_width_px": 256,
    "min_height_px": 256,
    "max_pixels": 200_000 * 200_000,
    "max_microns_per_pixel": 2.0,
}


def slide(stain: str = "H&E", width: int = 80_000, height: int = 60_000, mpp: float = 0.25) -> ImageMetadata:
    return ImageMetadata.model_validate(
        {
            "id": "s",
            "isStreamable": True,
            "imageSize": {"width": width, "height": height},
            "tileSize": {"width": 256, "height": 256},
            "micronsPerPixel": mpp,
            "focalPlanes": [],
            "opticalPaths": [],
            "storedTileFormat": {"mimeType": "image/jpeg", "extension": "jpg"},
            "availableTileFormats": [],
            "fileFormat": {"mimeType": "image/tiff"},
            "staining": {"displayName": stain},
            "block": {"displayName": "A1"},
        }
    )


@pytest.mark.parametrize("stain", ["H&E", "HE", "h & e", "he", "Hematoxylin and eosin", " H&E "])
def test_he_slides_pass(stain: str) -> None:
    assert check_slide(slide(stain), **LIMITS) is None


@pytest.mark.parametrize(
    ("metadata", "reason"),
    [
        (slide("Ki67 IHC"), "Stain is 'Ki67 IHC'; this app analyses H&E slides"),
        (slide(""), "The slide has no stain recorded; this app analyses H&E slides"),
        (
            slide(width=200, height=150),
            "Slide is too small to analyse (200 x 150 pixels; at least 256 x 256 needed)",
        ),
        (
            slide(width=300_000, height=200_000),
            "Slide is too large to analyse (60.0 gigapixels; the limit is 40.0)",
        ),
        (
            slide(mpp=4.0),
            "Slide resolution is too coarse (4 µm per pixel; this app needs 2 µm per pixel or finer)",
        ),
        (slide(mpp=0.0), "Slide has no valid resolution (microns per pixel) recorded"),
    ],
)
def test_unsuitable_slides_get_a_plain_reason(metadata: ImageMetadata, reason: str) -> None:
    assert check_slide(metadata, **LIMITS) == reason
