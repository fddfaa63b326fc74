"""Property: whatever tags a scanner adds, only the allow-list survives, and the slide still reads the same.

Hypothesis draws extra tags (private and public-but-unneeded codes, every common type, values
inline and out of line) carrying a name on level 0 and on a reduced level, in classic TIFF and
BigTIFF. Oracles: tifffile lists the output's tags, openslide and tiffslide read the pixels, a
byte search looks for the name in every form it was written.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import openslide
import tifffile
import tiffslide
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import ImageCms

from tests.fixtures.slides import MPP, tissue
from workers.deidentify import deidentify_slide, verify_deidentified

NAME = b"DOE^JANE"
# TIFF 6.0 decoding/placement tags tifffile writes for an RGB tiled pyramid; nothing else may stay.
_ALLOWED = {254, 256, 257, 258, 259, 262, 277, 282, 283, 284, 296, 322, 323, 324, 325, 338, 339, 270}
# Codes a scanner might use: public tags no reader needs, and private ones (never NDPI's, which
# tifffile would take for an NDPI file).
_CODES = st.one_of(st.sampled_from([269, 285, 315, 316, 33432, 37724]), st.integers(32768, 65400))
_TYPES = {"ASCII": 2, "BYTE": 1, "SHORT": 3, "LONG": 4, "UNDEFINED": 7}


def _value(dtype: int, repeat: int) -> tuple[Any, int]:
    """The name, `repeat` times, as a value of `dtype` (count in values, as an IFD entry counts)."""
    raw = NAME * repeat
    if dtype == 2:
        return raw.decode(), 0
    if dtype in (1, 7):
        return raw, len(raw)
    width = 2 if dtype == 3 else 4
    padded = raw.ljust(-(-len(raw) // width) * width, b"\0")
    values = np.frombuffer(padded, dtype="<u2" if width == 2 else "<u4")
    return tuple(int(v) for v in values), len(values)


_EXTRA = st.lists(
    st.tuples(_CODES, st.sampled_from(sorted(_TYPES.values())), st.integers(1, 12)),
    min_size=1,
    max_size=6,
    unique_by=lambda item: item[0],
)


def _write(path: Path, extra: list[tuple[int, int, int]], bigtiff: bool) -> None:
    tags = []
    for code, dtype, repeat in extra:
        value, count = _value(dtype, repeat)
        tags.append((code, dtype, count, value, True))
    with tifffile.TiffWriter(path, bigtiff=bigtiff, byteorder="<") as tw:
        for number, (width, height) in enumerate([(1024, 768), (512, 384), (256, 192)]):
            tw.write(
                tissue(height, width, seed=number),
                tile=(256, 256),
                photometric="rgb",
                metadata=None,
                subfiletype=1 if number else 0,
                resolution=(1e4 / MPP / 2**number, 1e4 / MPP / 2**number),
                resolutionunit="CENTIMETER",
                extratags=tags if number < 2 else None,
            )


def _pixels(path: Path) -> list[np.ndarray]:
    found = []
    for reader in (openslide.OpenSlide, tiffslide.TiffSlide):
        with reader(path) as slide:
            for level in range(slide.level_count):
                found.append(np.asarray(slide.read_region((0, 0), level, (300, 200)).convert("RGB")))
    return found


@settings(
    max_examples=25,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(extra=_EXTRA, bigtiff=st.booleans())
# A "profile" under the ICC code that is only a name: once kept because the code is allowed.
@example(extra=[(34675, 1, 1)], bigtiff=False)
@example(extra=[(347, 7, 3)], bigtiff=True)
def test_only_the_allow_list_survives_any_extra_tags(
    extra: list[tuple[int, int, int]], bigtiff: bool, tmp_path_factory: Any
) -> None:
    folder = tmp_path_factory.mktemp("tags")
    staged = folder / "slide.tif"
    _write(staged, extra, bigtiff)
    assert NAME in staged.read_bytes()
    before = _pixels(staged)

    files, _ = deidentify_slide([staged], run_id="run-1", out_dir=folder / "out")

    assert NAME not in files[0].read_bytes()
    with tifffile.TiffFile(files[0]) as tif:
        codes = {code for page in tif.pages for code in page.tags.keys()}  # type: ignore[union-attr]  # noqa: SIM118
    assert codes <= _ALLOWED, sorted(codes - _ALLOWED)
    after = _pixels(files[0])
    assert all(np.array_equal(a, b) for a, b in zip(after, before, strict=True))
    verify_deidentified(files, identifiers={})


def _icc_naming(name: bytes) -> bytes:
    """littleCMS's own sRGB profile with its description (a v4 'mluc', UTF-16BE) made to hold `name`."""
    raw = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    ours = "sRGB built-in".encode("utf-16-be")
    assert ours in raw
    return raw.replace(ours, name.decode().ljust(13).encode("utf-16-be"))


def test_an_icc_profile_keeps_its_colours_and_loses_its_text(tmp_path: Path) -> None:
    """Oracle: littleCMS (Pillow's ImageCms) parses the kept profile; its description is empty."""
    profile = _icc_naming(NAME)
    staged = tmp_path / "slide.tif"
    with tifffile.TiffWriter(staged, byteorder="<") as tw:
        for number, (width, height) in enumerate([(1024, 768), (512, 384)]):
            tw.write(
                tissue(height, width, seed=number),
                tile=(256, 256),
                photometric="rgb",
                metadata=None,
                subfiletype=1 if number else 0,
                iccprofile=profile,
            )
    before = _pixels(staged)

    files, _ = deidentify_slide([staged], run_id="run-1", out_dir=tmp_path / "out")

    data = files[0].read_bytes()
    assert NAME.decode().encode("utf-16-be") not in data and NAME not in data
    with tifffile.TiffFile(files[0]) as tif:
        kept = tif.pages[0].tags[34675].value  # type: ignore[union-attr]
    parsed = ImageCms.ImageCmsProfile(io.BytesIO(kept)).profile
    assert not (parsed.profile_description or "").strip()
    assert parsed.red_colorant == ImageCms.ImageCmsProfile(io.BytesIO(profile)).profile.red_colorant
    assert all(np.array_equal(a, b) for a, b in zip(_pixels(files[0]), before, strict=True))
    verify_deidentified(files, identifiers={})
