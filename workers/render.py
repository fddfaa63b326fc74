"""A picture of a run's result: the slide's thumbnail with exactly what was posted to Sectra drawn on it.

What is drawn is read from the Sectra `Result`s themselves (the primitives and
the hotspot gallery's patches), not rebuilt from the summary, so the picture
shows what the pathologist sees in Sectra. Coordinates follow Sectra's rule
(DESIGN.md "Sectra coordinates"): x and y are both divided by the slide's
width, so a point maps to thumbnail pixels as (x * width, y * width) scaled.

Drawing follows the HTML canvas Sectra uses: each polygon is filled and then
stroked on its own, so translucent fills (`#RRGGBBAA`) blend with what lies
beneath, and nested bands darken towards their centre. A side panel repeats
the figures (`displayResult` and the first rows of the property table) and a
legend of the marker colours, in the words the pathologist reads in Sectra.
"""

from __future__ import annotations

import functools
import hashlib
import io
import logging
import textwrap
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from PIL import Image, ImageColor, ImageDraw, ImageFont
from sectra_client.schemas import PrimitiveResultContent, Result
from sectra_client.schemas.results import PatchResultContent, Style

from workers.runstore import THUMBNAIL_BLOB

if TYPE_CHECKING:
    from workers.context import PipelineContext
    from workers.runstore import RunRecord

log = logging.getLogger(__name__)

CANVAS_SIDE = 1024  # the longer side of the neutral canvas drawn when there is no slide picture
PANEL_WIDTH = 380
NEUTRAL = (232, 232, 228)  # light grey glass: every palette colour stands out on it
PATCH_COLOUR = "#FFD400"  # hotspot-gallery patches carry no style of their own in Sectra's schema
DEFAULT_STROKE = "#000000"
PROPERTY_ROWS = 12
# The stored picture's slide side: /ui shows it ~400 px wide, so it is smaller than the command's
# (`workers.thumbnail.MAX_SIDE`). The page shows the newest completed runs only and `sectra-bridge
# render` draws any run anew, so a picture is kept two days, not the run's whole retention: at
# ~70 KiB a picture (480 px of textured stain, JPEG 80 without chroma subsampling) that is about
# 140 MiB of Redis for 1,000 runs a day.
STORED_SIDE = 480
STORED_SECONDS = 2 * 86400
JPEG_QUALITY = 80
_LINE_WIDTH = 2
_MAX_LINE_WIDTH = 8
_FONT_SIZE = 14
_PANEL_FONT_SIZE = 13
_MARGIN = 14
_SWATCH = 14
_WRAP = 46

Legend = Sequence[tuple[str, str]]  # (name, colour) in the order Sectra's property table lists them


def parse_colour(value: str | None) -> tuple[int, int, int, int] | None:
    """`#RGB`, `#RRGGBB`, `#RRGGBBAA`, `rgb()`/`rgba()` or a CSS name; None for none or one we cannot read."""
    if not value:
        return None
    try:
        rgb = ImageColor.getrgb(value.strip())
    except ValueError:
        return None
    return (rgb[0], rgb[1], rgb[2], rgb[3] if len(rgb) == 4 else 255)


def render_result(
    thumbnail: Image.Image | None,
    slide_width: int,
    slide_height: int,
    results: Sequence[Result],
    *,
    legend: Legend | None = None,
) -> Image.Image:
    """The slide (or a neutral canvas of its aspect) with every primitive of `results`, and a side panel.

    `legend` names the marker colours (`marker_legend`); without it, each colour is named by the
    first label drawn in it.
    """
    if slide_width <= 0 or slide_height <= 0:
        raise ValueError("slide width and height must be positive to place the drawing")
    if thumbnail is not None:
        base = thumbnail.convert("RGB")
    else:
        factor = CANVAS_SIDE / max(slide_width, slide_height)
        size = (max(1, round(slide_width * factor)), max(1, round(slide_height * factor)))
        base = Image.new("RGB", size, NEUTRAL)
    draw = ImageDraw.Draw(base, "RGBA")  # RGBA mode: each shape blends by its own alpha
    # Sectra divides both axes by the slide width. Pillow centres a line on its integer coordinate's
    # pixel, so an outline lands within a pixel of the edge it draws (the tests hold it to that).
    scale_x, scale_y = base.width / slide_width, base.height / slide_height

    def to_pixels(x: float, y: float) -> tuple[float, float]:
        return (x * slide_width * scale_x, y * slide_width * scale_y)

    labels: list[tuple[tuple[float, float], str, tuple[int, int, int, int]]] = []
    for result in results:
        content = result.data.result
        if isinstance(content, PrimitiveResultContent):
            for item in content.content:
                stroke, fill, width = _style(item.style)
                for polygon in item.polygons:
                    points = [to_pixels(p.x, p.y) for p in polygon.points]
                    if len(points) >= 3:
                        draw.polygon(points, fill=fill)
                        draw.line([*points, points[0]], fill=stroke, width=width, joint="curve")
                    elif len(points) == 2:
                        draw.line(points, fill=stroke, width=width)
                for polyline in item.polylines:
                    points = [to_pixels(p.x, p.y) for p in polyline.points]
                    if len(points) >= 2:
                        draw.line(points, fill=stroke, width=width, joint="curve")
                labels += [(to_pixels(lb.location.x, lb.location.y), lb.label, stroke) for lb in item.labels]
        elif isinstance(content, PatchResultContent):
            stroke = parse_colour(PATCH_COLOUR) or (255, 212, 0, 255)
            for polygon in content.content.polygons:
                points = [to_pixels(p.x, p.y) for p in polygon.points]
                if len(points) >= 2:
                    draw.line([*points, points[0]], fill=stroke, width=_LINE_WIDTH, joint="curve")
    font = _font(_FONT_SIZE)
    for (x, y), text, colour in labels:
        _label(draw, base.size, (x, y), text, colour, font)
    return _with_panel(base, results, list(legend) if legend is not None else _legend_from(results))


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def jpeg_bytes(image: Image.Image, *, drawn: bool = True) -> bytes:
    """The kept copy: H&E tissue compresses ~10x better as JPEG than as PNG at the same look
    (a 640 px picture of real tissue is ~60 KB instead of ~600 KB), and Redis holds one per run.

    A `drawn` picture (the results on the slide) is 4:4:4, no chroma subsampling, so thin coloured
    outlines keep their colour and place. The slide's own thumbnail is tissue only, drawn on after
    it is decoded: 4:2:0 loses only colour detail finer than two pixels, which an overview does not
    show, and halves it (0.48-0.52 x at 480 px, on noise and on stain beside glass; Redis keeps one
    per slide for two days).
    """
    buffer = io.BytesIO()
    # No `optimize`: with it Pillow's encoder fails on some noisy pictures ("broken data stream").
    subsampling = 0 if drawn else 2
    image.convert("RGB").save(buffer, format="JPEG", quality=JPEG_QUALITY, subsampling=subsampling)
    return buffer.getvalue()


def marker_legend(summary: Mapping[str, Any] | None) -> Legend | None:
    """The markers of a stored summary (`RunRecord.summary`) in the colours the result builder gives them."""
    from sectra_adapter import colour_for

    markers = (summary or {}).get("markers") or []
    names = [str(m.get("marker")) for m in markers if isinstance(m, Mapping) and m.get("marker")]
    return [(name, colour_for(index)) for index, name in enumerate(names)] or None


def store_thumbnail(
    ctx: PipelineContext, record: RunRecord, results: Sequence[Result], *, max_side: int = STORED_SIDE
) -> None:
    """Draw the run's posted results on its staged slide and keep the PNG beside the run (`/ui` shows it).

    Called at publish, after Sectra holds the result: a picture that cannot be drawn is logged and
    skipped, never a reason to fail the run. No download here. The slide's own thumbnail (the
    de-identified copy's tissue, no label) is kept for the same two days under a digest of the
    slide id (`keep_slide_thumbnail`, before the pipeline releases the files once Strand holds
    the upload), so this run, and a later one that reused this slide's results, is drawn on it;
    with neither a copy nor a kept thumbnail, the drawing goes on a neutral canvas
    (`sectra-bridge render` fetches the slide instead).
    """
    from workers.thumbnail import staged_thumbnail

    try:
        try:
            picture = staged_thumbnail(ctx, record, max_side)
        except Exception as exc:
            log.warning(
                "slide thumbnail unreadable; drawing on a plain canvas",
                extra={"error_type": type(exc).__name__},
            )
            picture = None
        picture = _with_slide_cache(ctx, record, picture)
        width = record.slide_width or (picture.width if picture else 0)
        height = record.slide_height or (picture.height if picture else 0)
        image = render_result(picture, width, height, results, legend=marker_legend(record.summary))
        ctx.store.put_blob(record.run_id, THUMBNAIL_BLOB, jpeg_bytes(image), ttl_seconds=STORED_SECONDS)
    except Exception as exc:
        log.warning("result picture not stored", extra={"error_type": type(exc).__name__})


def keep_slide_thumbnail(ctx: PipelineContext, record: RunRecord, *, max_side: int = STORED_SIDE) -> None:
    """Keep the staged copy's thumbnail (the slide cache `store_thumbnail` reads) before its files go.

    The pipeline releases a run's slide files once Strand holds its upload, long before publish
    draws on them; this is what publish then draws on. A courtesy like the picture itself: a slide
    the readers cannot open, or a Redis blip, leaves publish a neutral canvas, never a failed run.
    """
    from workers.thumbnail import staged_thumbnail

    try:
        picture = staged_thumbnail(ctx, record, max_side)
    except Exception as exc:
        log.warning("slide thumbnail unreadable; not kept", extra={"error_type": type(exc).__name__})
        return
    if picture is not None:
        _with_slide_cache(ctx, record, picture)


def _slide_key(ctx: PipelineContext, slide_id: str) -> str:
    digest = hashlib.sha256(slide_id.encode()).hexdigest()[:32]  # keys carry no slide identifiers
    return f"{ctx.store.prefix}:slide-thumbnail:{digest}"


def _with_slide_cache(
    ctx: PipelineContext, record: RunRecord, picture: Image.Image | None
) -> Image.Image | None:
    """Keep this slide's thumbnail for later runs of it, or use the one an earlier run kept."""
    key = _slide_key(ctx, record.slide_id)
    try:
        if picture is not None:
            ctx.store.client.set(key, jpeg_bytes(picture, drawn=False), ex=STORED_SECONDS)
            return picture
        kept = ctx.store.client.get(key)
        if kept is None:
            return None
        data = kept if isinstance(kept, bytes) else str(kept).encode("latin-1")
        return Image.open(io.BytesIO(data)).convert("RGB")
    except Exception as exc:  # a courtesy: the picture is drawn without it
        log.warning("slide thumbnail cache unavailable", extra={"error_type": type(exc).__name__})
        return picture


# -- drawing helpers -----------------------------------------------------------------------------


def _style(style: Style | None) -> tuple[tuple[int, int, int, int], tuple[int, int, int, int] | None, int]:
    stroke = parse_colour(style.strokeStyle if style else None) or parse_colour(DEFAULT_STROKE)
    assert stroke is not None
    fill = parse_colour(style.fillStyle if style else None)
    width = _LINE_WIDTH
    if style is not None and style.size is not None:
        width = min(max(int(style.size), 1), _MAX_LINE_WIDTH)
    return stroke, fill, width


# A system font with the signs the property table uses (mm², ≥, µm); Pillow's own font lacks them.
_FONT_FILES = ("DejaVuSans.ttf", "LiberationSans-Regular.ttf", "FreeSans.ttf")
# What those signs become when only Pillow's own font is at hand (a container image without fonts).
_PLAIN = str.maketrans({"²": "2", "≥": ">=", "≤": "<=", "µ": "u", "…": "...", "·": "-"})


@functools.lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    for name in _FONT_FILES:
        try:
            return ImageFont.truetype(name, size)  # found in the system's font directories
        except OSError:
            continue
    return ImageFont.load_default(size=size)


def _shown(text: str, font: ImageFont.FreeTypeFont | ImageFont.ImageFont) -> str:
    """The text as the font can draw it: no empty boxes where a sign would be."""
    path = getattr(font, "path", "")
    return text if any(str(path).endswith(name) for name in _FONT_FILES) else text.translate(_PLAIN)


def _halo(colour: tuple[int, int, int, int]) -> tuple[int, int, int]:
    """Black around light text, white around dark: a label reads on pink tissue and on glass."""
    red, green, blue = colour[:3]
    return (0, 0, 0) if 0.299 * red + 0.587 * green + 0.114 * blue > 150 else (255, 255, 255)


def _label(
    draw: ImageDraw.ImageDraw,
    size: tuple[int, int],
    at: tuple[float, float],
    text: str,
    colour: tuple[int, int, int, int],
    font: ImageFont.FreeTypeFont | ImageFont.ImageFont,
) -> None:
    """The label just above and right of its point (as Sectra shows it), moved inside the picture."""
    text = _shown(" ".join(text.split())[:120], font)
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font, stroke_width=1)
    text_w, text_h = right - left, bottom - top
    x = min(max(at[0], 0.0), max(0.0, size[0] - text_w))
    y = min(max(at[1] - text_h - 2, 0.0), max(0.0, size[1] - text_h))
    draw.text(
        (x - left, y - top),
        text,
        fill=(*colour[:3], 255),
        font=font,
        stroke_width=1,
        stroke_fill=_halo(colour),
    )


def _legend_from(results: Sequence[Result]) -> list[tuple[str, str]]:
    seen: dict[str, str] = {}
    for result in results:
        content = result.data.result
        if isinstance(content, PrimitiveResultContent):
            for item in content.content:
                colour = (item.style.strokeStyle if item.style else None) or DEFAULT_STROKE
                if colour.upper() not in {c.upper() for c in seen.values()}:
                    name = item.labels[0].label.split(" ")[0] if item.labels else colour
                    seen[name if name not in seen else f"{name} ({colour})"] = colour
        elif isinstance(content, PatchResultContent) and content.content.polygons:
            seen.setdefault("Hotspot gallery", PATCH_COLOUR)
    return list(seen.items())


def _panel_lines(results: Sequence[Result]) -> list[str]:
    lines: list[str] = []
    for result in results:
        content = result.data.result
        if isinstance(content, PatchResultContent):
            lines += textwrap.wrap(f"Hotspot gallery: {len(content.content.patches)} patches", _WRAP) or [""]
            continue
        lines += textwrap.wrap(result.displayResult, _WRAP) or [""]
        for key, value in list(result.displayProperties.items())[:PROPERTY_ROWS]:
            lines += textwrap.wrap(f"{key}: {value}", _WRAP, subsequent_indent="   ") or [""]
        lines.append("")
    return lines


def _with_panel(base: Image.Image, results: Sequence[Result], legend: Legend) -> Image.Image:
    font, bold = _font(_PANEL_FONT_SIZE), _font(_PANEL_FONT_SIZE + 3)
    step = _PANEL_FONT_SIZE + 6
    lines = _panel_lines(results)
    needed = _MARGIN * 3 + step * (len(lines) + len(legend) + 3)
    canvas = Image.new("RGB", (base.width + PANEL_WIDTH, max(base.height, needed)), (255, 255, 255))
    canvas.paste(base, (0, 0))
    draw = ImageDraw.Draw(canvas)
    x, y = base.width + _MARGIN, _MARGIN
    draw.text((x, y), "Result", fill=(20, 20, 20), font=bold)
    y += step + 4
    for line in lines:
        draw.text((x, y), _shown(line, font), fill=(30, 30, 30), font=font)
        y += step
    if legend:
        draw.text((x, y), "Legend", fill=(20, 20, 20), font=bold)
        y += step + 2
        for name, colour in legend:
            rgba = parse_colour(colour) or (0, 0, 0, 255)
            draw.rectangle((x, y, x + _SWATCH, y + _SWATCH), fill=rgba[:3], outline=(60, 60, 60))
            draw.text((x + _SWATCH + 8, y), _shown(name[:40], font), fill=(30, 30, 30), font=font)
            y += step
    return canvas
