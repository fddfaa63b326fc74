"""Is a slide one the app can analyse? Decided from Sectra's metadata before any byte is downloaded.

Answers in words a pathologist reads in Sectra, not in codes: the refusal is
shown as the result on the slide. The limits are plain parameters so this
package need not know the apps configuration.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from sectra_client.schemas import ImageMetadata


def check_slide(
    metadata: ImageMetadata,
    *,
    stain_patterns: Sequence[str],
    min_width_px: int,
    min_height_px: int,
    max_pixels: int,
    max_microns_per_pixel: float,
) -> str | None:
    """None when the slide is suitable, else the reason it is not (first failing check).

    `stain_patterns` are case-insensitive regular expressions searched in the
    stain's display name (e.g. `^h\\s*&?\\s*e$` accepts "H&E", "HE", "h & e").
    """
    stain = metadata.staining.displayName.strip()
    if not any(re.search(pattern, stain, re.IGNORECASE) for pattern in stain_patterns):
        shown = f"Stain is '{stain}'" if stain else "The slide has no stain recorded"
        return f"{shown}; this app analyses H&E slides"
    width, height = metadata.imageSize.width, metadata.imageSize.height
    if width < min_width_px or height < min_height_px:
        return (
            f"Slide is too small to analyse ({width} x {height} pixels; "
            f"at least {min_width_px} x {min_height_px} needed)"
        )
    if width * height > max_pixels:
        return (
            f"Slide is too large to analyse ({width * height / 1e9:.1f} gigapixels; "
            f"the limit is {max_pixels / 1e9:.1f})"
        )
    mpp = metadata.micronsPerPixel
    if not mpp > 0:
        return "Slide has no valid resolution (microns per pixel) recorded"
    if mpp > max_microns_per_pixel:
        return (
            f"Slide resolution is too coarse ({mpp:g} µm per pixel; "
            f"this app needs {max_microns_per_pixel:g} µm per pixel or finer)"
        )
    return None
