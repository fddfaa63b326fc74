"""The local tissue check of a drawn region, against geometry written in the test (a disc of stain)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from sectra_adapter import Region
from workers.tissue import MIN_SATURATION, regions_hold_tissue, tissue_mask

SLIDE_W, SLIDE_H = 40_000, 30_000  # level-0 px; the thumbnail below is 400 x 300 (100 px per pixel)
DISC = (10_000.0, 15_000.0, 6_000.0)  # centre x, centre y, radius in slide px: the stained tissue


def thumbnail(stain: tuple[int, int, int] = (205, 110, 170)) -> Image.Image:
    """Glass (near white, a little grey noise) with one disc of stain."""
    rng = np.random.default_rng(3)
    grey = rng.integers(225, 246, size=(300, 400), dtype=np.uint8)
    pixels = np.stack([grey, grey, grey], axis=-1)
    rows, cols = np.indices((300, 400))
    cx, cy, r = (v / 100 for v in DISC)
    pixels[(cols + 0.5 - cx) ** 2 + (rows + 0.5 - cy) ** 2 <= r**2] = stain
    return Image.fromarray(pixels)


def square(x: float, y: float, side: float) -> Region:
    return Region(points=((x, y), (x + side, y), (x + side, y + side), (x, y + side)))


def holds(region: Region, image: Image.Image | None = None) -> bool | None:
    mask = tissue_mask(image or thumbnail())
    return regions_hold_tissue(mask, [region], slide_width=SLIDE_W, slide_height=SLIDE_H)


def test_glass_is_not_tissue_and_pale_stain_is() -> None:
    mask = tissue_mask(thumbnail(stain=(238, 205, 226)))  # pale eosin: saturation ~35 of 255
    cx, cy, _ = (v / 100 for v in DISC)
    assert mask[int(cy), int(cx)]
    assert not mask[10, 390] and not mask[290, 300]  # glass with its grey noise
    assert MIN_SATURATION < 35


def test_a_region_on_the_disc_holds_tissue_and_one_on_glass_does_not() -> None:
    assert holds(square(8_000, 13_000, 4_000)) is True
    assert holds(square(28_000, 10_000, 8_000)) is False
    # Half on the disc's edge still counts: the check never refuses a region that touches stain.
    cx, cy, r = DISC
    assert holds(square(cx + r - 1_000, cy - 2_000, 4_000)) is True


def test_a_region_just_outside_the_disc_is_glass_by_the_pixel_centre_rule() -> None:
    cx, cy, r = DISC
    gap = 300  # slide px beyond the rim: three thumbnail pixels
    side = 3_000
    left = cx + r + gap
    assert math.hypot(left - cx, 0) > r
    assert holds(square(left, cy - side / 2, side)) is False


@pytest.mark.parametrize("side", [150.0, 250.0])
def test_a_region_too_small_to_judge_is_left_to_the_summary(side: float) -> None:
    assert holds(square(30_000, 20_000, side)) is None  # fewer than 16 thumbnail pixels


def test_no_regions_or_no_picture_cannot_tell() -> None:
    empty = np.zeros((0, 0), dtype=bool)
    whole = [square(0, 0, 10_000)]
    assert regions_hold_tissue(empty, whole, slide_width=SLIDE_W, slide_height=SLIDE_H) is None
    mask = tissue_mask(thumbnail())
    assert regions_hold_tissue(mask, [], slide_width=SLIDE_W, slide_height=SLIDE_H) is None
