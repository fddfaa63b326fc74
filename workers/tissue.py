"""Does a drawn region hold tissue? Asked of the slide itself, before a Strand job is paid for.

A region drawn on bare glass would otherwise cost a whole-slide job only for
the summary to find no tissue in it. The de-identified copy is on this pod by
then, so a thumbnail of it (a pyramid level, never level 0 of a big slide)
answers the question locally.

The test is deliberately lenient, because refusing a region that does hold
tissue costs the pathologist more than a wasted job: a thumbnail pixel is
tissue when it is coloured at all (HSV saturation >= `MIN_SATURATION`, which
glass, its grey background and the scanner's black border are not; H&E
stain, even pale, is), and a region is refused only when fewer than one in a
thousand of its thumbnail pixels are. A region too small to judge on the
thumbnail, or a slide the readers cannot open, is never refused here: the
summary then decides, from Strand's own tissue map.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from sectra_adapter import Region
from workers.regions import RegionRaster
from workers.thumbnail import slide_thumbnail

log = logging.getLogger(__name__)

MIN_SATURATION = 20  # of 255: about 8 %; H&E tissue sits far above, glass and grey far below
MIN_TISSUE_SHARE = 0.001
MIN_JUDGED_PIXELS = 16  # a region covering fewer thumbnail pixels is too small to judge
THUMBNAIL_SIDE = 1024


def tissue_mask(thumbnail: Image.Image) -> np.ndarray:
    """Bool [rows, cols]: the thumbnail's coloured (stained) pixels."""
    saturation = np.asarray(thumbnail.convert("RGB").convert("HSV"))[..., 1]
    return saturation >= MIN_SATURATION


def regions_hold_tissue(
    mask: np.ndarray, regions: Sequence[Region], *, slide_width: int, slide_height: int
) -> bool | None:
    """Whether the union of `regions` (level-0 px) holds tissue on `mask`; None when it cannot tell.

    A thumbnail pixel belongs to a region when its centre does (the rule the summariser uses).
    """
    rows, cols = mask.shape
    if not regions or rows == 0 or cols == 0 or slide_width <= 0 or slide_height <= 0:
        return None
    raster = RegionRaster(regions, scale=(slide_height / rows, slide_width / cols), offset=(0.0, 0.0))
    inside = raster.union_mask(0, rows, 0, cols)
    covered = int(np.count_nonzero(inside))
    if covered < MIN_JUDGED_PIXELS:
        return None
    stained = int(np.count_nonzero(mask & inside))
    return stained >= max(1.0, MIN_TISSUE_SHARE * covered)


def slide_regions_hold_tissue(
    paths: Sequence[Path], regions: Sequence[Region], *, slide_width: int, slide_height: int
) -> bool | None:
    """`regions_hold_tissue` on a thumbnail of the slide's files; None when they cannot be read."""
    try:
        thumbnail = slide_thumbnail(paths, THUMBNAIL_SIDE)
    except Exception as exc:  # any reader failure: the summary decides instead
        log.warning("no thumbnail to look for tissue in the region", extra={"error_type": type(exc).__name__})
        return None
    return regions_hold_tissue(
        tissue_mask(thumbnail), regions, slide_width=slide_width, slide_height=slide_height
    )
