"""A small picture of a slide's tissue, for the drawing of its result (`workers.render`).

Read from a pyramid level near the wanted size and resampled stripe by stripe,
so memory is bounded by the output and one stripe, never by level 0 of a large
slide. Only the tissue pyramid is read (`read_region`): a slide's label and
macro images (associated images, which show the patient's name and barcode) are
never opened.

The source is the de-identified copy staged for Strand while it is on this pod
(`staged_thumbnail`); once the run is finished and its files are gone, the
slide is streamed from Sectra into a temporary directory on the work volume,
read, and deleted (`sectra_thumbnail`).
"""

from __future__ import annotations

import logging
import math
import tempfile
import zipfile
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from workers.staging import BUNDLE_SUFFIX

if TYPE_CHECKING:
    from workers.context import PipelineContext
    from workers.runstore import RunRecord

log = logging.getLogger(__name__)

MAX_SIDE = 1024
# Output pixels per stripe side: one stripe's source region stays a few MiB at any level.
_STRIPE = 512
_DICOM_PREAMBLE = 128
_WHITE = (255, 255, 255)


class ThumbnailError(Exception):
    """No reader could open the slide; the message names the format, never a file name."""


def slide_thumbnail(paths: Sequence[Path], max_side: int = MAX_SIDE) -> Image.Image:
    """An RGB picture of the slide, its longer side at most `max_side`, the slide's aspect kept.

    `paths` are one slide's files as staged: one TIFF-like file (SVS, NDPI, generic TIFF, ...), a set
    of DICOM instances, an MRXS index with its data directory, or the `.mrxs.zip` bundle Strand gets.
    """
    if not paths:
        raise ThumbnailError("no slide files to read")
    with ExitStack() as stack:
        slide = _open(paths, stack)
        stack.callback(slide.close)
        return _read_scaled(slide, max_side)


def staged_thumbnail(ctx: PipelineContext, record: RunRecord, max_side: int = MAX_SIDE) -> Image.Image | None:
    """The thumbnail of the run's de-identified copy when it is on this pod, else None."""
    paths = _staged_paths(ctx.staging.outgoing_dir(record.run_id), record.outgoing_files)
    return slide_thumbnail(paths, max_side) if paths else None


def sectra_thumbnail(ctx: PipelineContext, record: RunRecord, max_side: int = MAX_SIDE) -> Image.Image:
    """Stream the slide from Sectra into a temporary directory, read its thumbnail, delete the files.

    The download is the original (identifiable) slide, so it stays on the work volume, is read for
    its tissue pyramid only, and is removed whatever happens.
    """
    ctx.settings.work_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="thumbnail-", dir=ctx.settings.work_dir) as folder:
        with ctx.sectra(record) as sectra:
            files = sectra.download_slide(record.slide_id, Path(folder))
        return slide_thumbnail([f.path for f in files], max_side)


def run_thumbnail(
    ctx: PipelineContext, record: RunRecord, *, download: bool, max_side: int = MAX_SIDE
) -> Image.Image | None:
    """The staged copy's thumbnail, else (with `download`) Sectra's; None when neither is to be had."""
    picture = staged_thumbnail(ctx, record, max_side)
    if picture is None and download:
        picture = sectra_thumbnail(ctx, record, max_side)
    return picture


# -- opening -------------------------------------------------------------------------------------


def _staged_paths(folder: Path, entries: Sequence[Any]) -> list[Path] | None:
    paths = [folder / entry["name"] for entry in entries]
    if not entries or not all(
        p.is_file() and p.stat().st_size == e["size"] for p, e in zip(paths, entries, strict=True)
    ):
        return None
    return paths


def _is_dicom(path: Path) -> bool:
    try:
        with path.open("rb") as handle:
            handle.seek(_DICOM_PREAMBLE)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


def _open(paths: Sequence[Path], stack: ExitStack) -> Any:
    """An OpenSlide-like reader (`read_region`, `level_dimensions`, ...) of the slide in `paths`."""
    bundles = [p for p in paths if p.name.endswith(BUNDLE_SUFFIX)]
    if bundles:
        folder = Path(
            stack.enter_context(tempfile.TemporaryDirectory(prefix="thumbnail-", dir=bundles[0].parent))
        )
        with zipfile.ZipFile(bundles[0]) as archive:
            archive.extractall(folder)  # our own bundle; extractall also refuses absolute and `..` names
        paths = sorted(p for p in folder.rglob("*") if p.is_file())
    index = [p for p in paths if p.suffix.lower() == ".mrxs"]
    if index:
        return _openslide(index[0], "MRXS")
    dicom = [p for p in paths if _is_dicom(p)]
    if dicom:
        # OpenSlide finds the other instances of the series in the same directory.
        return _openslide(max(dicom, key=lambda p: p.stat().st_size), "DICOM")
    main = max(paths, key=lambda p: p.stat().st_size)
    try:
        import tiffslide

        return tiffslide.TiffSlide(main)
    except Exception as exc:  # tiffslide refuses what it cannot place; OpenSlide reads more vendors
        log.info(
            "tiffslide could not open the slide; trying OpenSlide", extra={"error_type": type(exc).__name__}
        )
    return _openslide(main, "TIFF")


def _openslide(path: Path, kind: str) -> Any:
    import openslide

    try:
        return openslide.OpenSlide(str(path))
    except (openslide.OpenSlideError, OSError) as exc:
        raise ThumbnailError(f"the {kind} slide could not be read ({type(exc).__name__})") from exc


# -- reading -------------------------------------------------------------------------------------


def _read_scaled(slide: Any, max_side: int) -> Image.Image:
    width, height = (int(v) for v in slide.level_dimensions[0])
    if width <= 0 or height <= 0:
        raise ThumbnailError("the slide reports no size")
    factor = max(1.0, max(width, height) / max_side)
    out_w, out_h = max(1, round(width / factor)), max(1, round(height / factor))
    level = int(slide.get_best_level_for_downsample(factor))
    level_w, level_h = (int(v) for v in slide.level_dimensions[level])
    down_x, down_y = width / level_w, height / level_h
    scale_x, scale_y = out_w / level_w, out_h / level_h
    out = Image.new("RGB", (out_w, out_h), _WHITE)
    for oy0 in range(0, out_h, _STRIPE):
        oy1 = min(out_h, oy0 + _STRIPE)
        for ox0 in range(0, out_w, _STRIPE):
            ox1 = min(out_w, ox0 + _STRIPE)
            # The output block's exact extent on the level, then the whole level pixels that cover it.
            sx0, sx1, sy0, sy1 = ox0 / scale_x, ox1 / scale_x, oy0 / scale_y, oy1 / scale_y
            rx0, ry0 = math.floor(sx0), math.floor(sy0)
            rx1, ry1 = min(level_w, math.ceil(sx1)), min(level_h, math.ceil(sy1))
            region = slide.read_region(
                (round(rx0 * down_x), round(ry0 * down_y)), level, (max(1, rx1 - rx0), max(1, ry1 - ry0))
            )
            piece = _rgb(region).resize(
                (ox1 - ox0, oy1 - oy0),
                Image.Resampling.BOX,
                box=(sx0 - rx0, sy0 - ry0, min(sx1, rx1) - rx0, min(sy1, ry1) - ry0),
            )
            out.paste(piece, (ox0, oy0))
    return out


def _rgb(region: Any) -> Image.Image:
    """OpenSlide answers RGBA with transparent pixels outside the scanned area: those read as glass."""
    image = region if isinstance(region, Image.Image) else Image.fromarray(region)
    if image.mode == "RGBA":
        background = Image.new("RGB", image.size, _WHITE)
        background.paste(image, mask=image.getchannel("A"))
        return background
    return image.convert("RGB")
