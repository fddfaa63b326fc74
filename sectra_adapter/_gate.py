"""Is a slide one the app can analyse? Decided from Sectra's metadata before any byte is downloaded.

Answers in words a pathologist reads in Sectra, not in codes: the refusal is
shown as the result on the slide. The limits are plain parameters so this
package need not know the apps configuration.
"""

from __future__ import annotations

from collections.abc import Sequence

from sectra_client.schemas import ImageMetadata

from sectra_adapter._patterns import compile_safe

# Stain names are a few words ("H&E", "Hematoxylin and eosin"); a longer one is not a stain we know,
# and the bound keeps every pattern's matching time small whatever a caller sends.
MAX_STAIN_CHARS = 128
_SHOWN_STAIN_CHARS = 60


def check_stain(display_name: str, stain_patterns: Sequence[str]) -> str | None:
    """None when the stain is one the app analyses, else why not: the gate's first check, alone.

    A case's image list (IA-API 1.9 `/slides/{id}/request/images/info`) names each slide's stain
    but not its size, so choosing a case's H&E slides needs this check without the others.
    """
    stain = display_name.strip()
    known = len(stain) <= MAX_STAIN_CHARS
    if known and any(compile_safe(pattern).search(stain) for pattern in stain_patterns):
        return None
    if not stain:
        return "The slide has no stain recorded; this app analyses H&E slides"
    shown = stain if known else stain[:_SHOWN_STAIN_CHARS] + "…"
    return f"Stain is '{shown}'; this app analyses H&E slides"


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
    stain's display name (e.g. `^h\\s*(?:&\\s*)?e$` accepts "H&E", "HE", "h & e"); each
    must have a linear-time shape (`sectra_adapter._patterns`), or `UnsafePattern` is raised.
    """
    refusal = check_stain(metadata.staining.displayName, stain_patterns)
    if refusal:
        return refusal
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
