"""The picture of a result (`workers.render`) and the slide thumbnail under it (`workers.thumbnail`).

Oracles, none of them our drawing code:
- where a shape must be: Sectra's coordinate rule written out here (DESIGN.md "Sectra coordinates":
  x and y are both divided by the slide width), carried to thumbnail pixels by the thumbnail's own
  scale; the picture is read back pixel by pixel with Pillow and numpy;
- how a translucent fill looks: the canvas "source-over" rule, out = fill * a + under * (1 - a);
- what the slide looks like: tifffile reading the SVS pyramid page, and wsidicom reading the DICOM
  levels (independent readers; the thumbnail is read by tiffslide / OpenSlide).
"""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import pytest
import redis
import tifffile
from PIL import Image
from sectra_client.schemas import (
    Label,
    Point,
    Polygon,
    PrimitiveItem,
    PrimitiveResultContent,
    Result,
    ResultData,
    Style,
)
from sectra_client.schemas.results import Patch, PatchContent, PatchResultContent, Polyline
from wsidicom import WsiDicom

from tests.fixtures.dicom_slides import make_dicom_slide
from tests.fixtures.mrxs import make_mrxs
from tests.fixtures.slides import glass_on_the_right, make_svs
from workers.apps import load_apps
from workers.context import PipelineContext
from workers.metering import InFlight
from workers.render import (
    NEUTRAL,
    PANEL_WIDTH,
    PATCH_COLOUR,
    STORED_SIDE,
    keep_slide_thumbnail,
    render_result,
    store_thumbnail,
)
from workers.runstore import THUMBNAIL_BLOB, RunRecord, RunStore
from workers.settings import Settings
from workers.staging import BUNDLE_SUFFIX, bundle, describe
from workers.thumbnail import slide_thumbnail
from workers.upload_index import UploadIndex

SLIDE_W, SLIDE_H = 8000, 5000
THUMB_W, THUMB_H = 640, 400  # 12.5 slide pixels per thumbnail pixel on both axes
GREY = (128, 128, 128)
GREEN = (0, 255, 0)
PHI = {"patientName": "DOE^JANE^Q", "accessionNumber": "ACC-2026-000917"}
LABEL_MARKER = b"LABEL-MARKER-render-77"


def box_polygon(x0: float, y0: float, x1: float, y1: float) -> Polygon:
    return Polygon(points=[Point(x=x, y=y) for x, y in ((x0, y0), (x1, y0), (x1, y1), (x0, y1))])


def primitive(*items: PrimitiveItem, line: str = "CD8 12.0%", rows: dict[str, str] | None = None) -> Result:
    return Result(
        slideId="slide-1",
        displayResult=line,
        applicationVersion="1.0",
        data=ResultData(result=PrimitiveResultContent(content=list(items))),
        displayProperties=rows or {"CD8 positive tissue": "12.0%"},
    )


def to_thumbnail(x: float, y: float, width: int = THUMB_W, height: int = THUMB_H) -> tuple[float, float]:
    """Sectra's rule: slide pixels are (x * slide width, y * slide width); then the thumbnail's scale."""
    return (x * SLIDE_W * width / SLIDE_W, y * SLIDE_W * height / SLIDE_H)


def pixels_of(image: Image.Image, colour: tuple[int, int, int], width: int, height: int) -> np.ndarray:
    """(row, col) of every pixel of exactly `colour` inside the slide area (the panel left out)."""
    area = np.asarray(image.convert("RGB"))[:height, :width]
    return np.argwhere(np.all(area == colour, axis=-1))


def distance_to_outline(rows: np.ndarray, cols: np.ndarray, rect: tuple[float, ...]) -> np.ndarray:
    """Distance of each pixel centre to the rectangle's boundary, in continuous thumbnail coordinates."""
    x0, y0, x1, y1 = rect
    cx, cy = cols + 0.5, rows + 0.5
    # Chebyshev (per axis): "within one pixel" means within one pixel across and one down.
    outside = np.maximum(
        np.maximum(np.maximum(x0 - cx, cx - x1), 0), np.maximum(np.maximum(y0 - cy, cy - y1), 0)
    )
    inside = np.minimum.reduce([cx - x0, x1 - cx, cy - y0, y1 - cy])
    return np.where(outside > 0, outside, inside)


def test_a_box_is_drawn_where_its_normalised_coordinates_put_it_and_nowhere_else() -> None:
    # y is normalised by the width too: 0.1 of the width is 800 slide rows, 64 thumbnail rows.
    corners = (0.25, 0.1, 0.5, 0.4)
    item = PrimitiveItem(style=Style(strokeStyle="#00FF00"), polygons=[box_polygon(*corners)])
    picture = render_result(Image.new("RGB", (THUMB_W, THUMB_H), GREY), SLIDE_W, SLIDE_H, [primitive(item)])

    x0, y0 = to_thumbnail(corners[0], corners[1])
    x1, y1 = to_thumbnail(corners[2], corners[3])
    assert (x0, y0, x1, y1) == (160.0, 64.0, 320.0, 256.0)
    found = pixels_of(picture, GREEN, THUMB_W, THUMB_H)
    assert len(found) > 2 * ((x1 - x0) + (y1 - y0))  # a closed outline, at least one pixel wide
    distance = distance_to_outline(found[:, 0], found[:, 1], (x0, y0, x1, y1))
    # Every stroke pixel touches the outline (its centre within a pixel and a half of it) ...
    assert distance.max() <= 1.5, f"stroke pixel {distance.max():.2f} px from the box"
    # ... and the whole outline is drawn: every point along each edge has a stroke pixel within 1 px.
    centres = found[:, ::-1] + 0.5
    edge_points = [(x, y) for x in np.arange(x0, x1, 2.0) for y in (y0, y1)]
    edge_points += [(x, y) for y in np.arange(y0, y1, 2.0) for x in (x0, x1)]
    for point in edge_points:
        nearest = np.min(np.max(np.abs(centres - point), axis=1))
        assert nearest <= 1.0, f"no stroke pixel within 1 px of {point}"
    # The rest of the slide area is the thumbnail as it was.
    area = np.asarray(picture)[:THUMB_H, :THUMB_W]
    untouched = np.all(area == GREY, axis=-1)
    assert untouched.sum() + len(found) == THUMB_W * THUMB_H
    # The panel sits beside the slide, which keeps its size.
    assert picture.size[0] == THUMB_W + PANEL_WIDTH and picture.size[1] >= THUMB_H


def test_translucent_fills_blend_with_what_lies_beneath_and_nested_ones_blend_twice() -> None:
    under = (200, 100, 50)
    fill = "#0000FF40"  # alpha 0x40 = 64 / 255
    outer, inner = box_polygon(0.1, 0.1, 0.6, 0.5), box_polygon(0.2, 0.2, 0.4, 0.4)
    item = PrimitiveItem(style=Style(strokeStyle="#FF00FF", fillStyle=fill), polygons=[outer, inner])
    picture = np.asarray(
        render_result(Image.new("RGB", (THUMB_W, THUMB_H), under), SLIDE_W, SLIDE_H, [primitive(item)])
    ).astype(float)

    alpha = 0x40 / 255
    once = np.array(under) * (1 - alpha) + np.array((0, 0, 255)) * alpha
    twice = once * (1 - alpha) + np.array((0, 0, 255)) * alpha
    between = to_thumbnail(0.15, 0.15)  # inside the outer band only
    centre = to_thumbnail(0.3, 0.3)  # inside both
    away = to_thumbnail(0.8, 0.55)
    assert np.abs(picture[int(between[1]), int(between[0])] - once).max() <= 1.0
    assert np.abs(picture[int(centre[1]), int(centre[0])] - twice).max() <= 1.0
    assert tuple(picture[int(away[1]), int(away[0])]) == under


def test_labels_are_drawn_in_full_inside_the_picture_even_at_its_corner() -> None:
    def label_pixels(x: float, y: float) -> int:
        item = PrimitiveItem(
            style=Style(strokeStyle="#00FF00"),
            labels=[Label(location=Point(x=x, y=y), label="Ki67 14.2% (Tumour)")],
        )
        picture = render_result(
            Image.new("RGB", (THUMB_W, THUMB_H), GREY), SLIDE_W, SLIDE_H, [primitive(item)]
        )
        return len(pixels_of(picture, GREEN, THUMB_W, THUMB_H))

    in_the_middle = label_pixels(0.4, 0.3)
    assert in_the_middle > 50
    # A label at the top right corner (and one off the slide) is moved in, not cut off.
    assert label_pixels(0.999, 0.0) == in_the_middle
    assert label_pixels(1.5, 0.7) == in_the_middle


def test_polylines_patches_and_a_neutral_canvas_of_the_slides_aspect() -> None:
    line = PrimitiveItem(
        style=Style(strokeStyle="#00FF00"),
        polylines=[Polyline(points=[Point(x=0.1, y=0.3), Point(x=0.9, y=0.3)])],
    )
    gallery = Result(
        slideId="slide-1",
        displayResult="Hotspots for review",
        applicationVersion="1.0",
        data=ResultData(
            result=PatchResultContent(
                content=PatchContent(
                    description="Hotspots",
                    polygons=[box_polygon(0.5, 0.05, 0.6, 0.15)],
                    patches=[Patch(tag=0, position=Point(x=0.55, y=0.1), sortKeyValue=0.4)],
                    actions=[],
                    tags=["Hotspot", "Agree", "Artefact"],
                    patchSize=256,
                    magnification=20.0,
                )
            )
        ),
    )
    picture = render_result(None, SLIDE_W, SLIDE_H, [primitive(line), gallery])
    width = picture.width - PANEL_WIDTH
    height = round(width * SLIDE_H / SLIDE_W)
    assert width == 1024 and height == 640
    assert tuple(np.asarray(picture)[5, 5]) == NEUTRAL

    found = pixels_of(picture, GREEN, width, height)
    y = to_thumbnail(0, 0.3, width, height)[1]
    assert np.abs(found[:, 0] + 0.5 - y).max() <= 1.5
    x_left, x_right = to_thumbnail(0.1, 0, width, height)[0], to_thumbnail(0.9, 0, width, height)[0]
    assert abs(found[:, 1].min() - x_left) <= 1.5 and abs(found[:, 1].max() + 1 - x_right) <= 1.5

    yellow = tuple(int(PATCH_COLOUR[i : i + 2], 16) for i in (1, 3, 5))
    patch = pixels_of(picture, yellow, width, height)  # type: ignore[arg-type]
    rect = (*to_thumbnail(0.5, 0.05, width, height), *to_thumbnail(0.6, 0.15, width, height))
    assert len(patch) > 100
    assert distance_to_outline(patch[:, 0], patch[:, 1], rect).max() <= 1.5


def test_thumbnail_of_an_svs_is_its_pyramid_level_and_never_reads_level_0_whole(tmp_path: Path) -> None:
    slide = make_svs(tmp_path / "slide.svs", width=2048, height=1024, phi=PHI, label_marker=LABEL_MARKER)
    with tifffile.TiffFile(slide) as tif:
        level_1 = tif.series[0].levels[1].asarray()  # 512 x 256: the pyramid level 4x down
    assert level_1.shape == (256, 512, 3)

    exact = slide_thumbnail([slide], max_side=512)
    assert exact.size == (512, 256)
    assert np.array_equal(np.asarray(exact), level_1)

    # Half that size: each thumbnail pixel is the mean of 2 x 2 level-1 pixels (box filter).
    half = np.asarray(slide_thumbnail([slide], max_side=256)).astype(float)
    expected = level_1.reshape(128, 2, 256, 2, 3).mean(axis=(1, 3))
    assert half.shape == expected.shape
    assert np.abs(half - expected).max() <= 1.0


class HugeSlide:
    """An OpenSlide-shaped reader of a 100 000 x 80 000 slide that records every read asked of it."""

    level_dimensions = ((100_000, 80_000), (25_000, 20_000), (6_250, 5_000), (1_562, 1_250))
    level_downsamples = (1.0, 4.0, 16.0, 64.0)

    def __init__(self) -> None:
        self.reads: list[tuple[tuple[int, int], int, tuple[int, int]]] = []

    def get_best_level_for_downsample(self, factor: float) -> int:
        return max(i for i, d in enumerate(self.level_downsamples) if d <= factor)

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> Image.Image:
        self.reads.append((location, level, size))
        return Image.new("RGBA", size, (200, 120, 170, 255))


def test_a_huge_slide_is_read_from_a_small_level_a_stripe_at_a_time() -> None:
    from workers.thumbnail import _read_scaled

    slide = HugeSlide()
    picture = _read_scaled(slide, 1024)
    assert picture.size == (1024, 819)
    assert {level for _, level, _ in slide.reads} == {3}  # 64x down: never level 0, 1 or 2
    assert max(w * h for _, _, (w, h) in slide.reads) <= 800 * 800  # one stripe's region at a time
    # The reads tile the level: together they cover it, each level pixel once or (at seams) twice.
    covered = np.zeros((1_250, 1_562), dtype=np.uint8)
    for (x, y), _, (w, h) in slide.reads:
        covered[y // 64 : y // 64 + h, x // 64 : x // 64 + w] += 1
    assert covered.min() >= 1 and covered.max() <= 4
    assert np.all(np.asarray(picture) == (200, 120, 170))


def test_thumbnail_of_a_dicom_slide_matches_an_independent_reader(tmp_path: Path) -> None:
    made = make_dicom_slide(tmp_path / "dicom", width=1024, height=768)
    picture = slide_thumbnail(made.paths, max_side=512)
    assert picture.size == (512, 384)
    with WsiDicom.open(tmp_path / "dicom") as reference:
        expected = np.asarray(reference.read_region((0, 0), 1, (512, 384)).convert("RGB")).astype(float)
    difference = np.abs(np.asarray(picture).astype(float) - expected)
    assert difference.mean() < 2.0  # two JPEG decoders: off by a unit here and there, not a shift


def test_thumbnail_of_the_mrxs_bundle_strand_gets_is_the_slides_level(tmp_path: Path) -> None:
    import openslide

    made = make_mrxs(tmp_path / "src" / "slide.mrxs", phi=PHI)  # 512 x 384, levels 2x apart
    with openslide.OpenSlide(str(made.mrxs)) as reference:
        assert reference.level_dimensions[1] == (256, 192)
        rgba = reference.read_region((0, 0), 1, (256, 192))
    expected = Image.new("RGB", rgba.size, (255, 255, 255))
    expected.paste(rgba, mask=rgba.getchannel("A"))

    packed = bundle(made.files, tmp_path / "src", "run-" + "b" * 24)  # what the de-identify stage sends
    assert packed.name.endswith(BUNDLE_SUFFIX)
    picture = slide_thumbnail([packed], max_side=256)
    assert np.array_equal(np.asarray(picture), np.asarray(expected))
    # The bundle was unpacked beside it for reading, and the unpacked copy is gone.
    assert sorted(p.name for p in packed.parent.iterdir()) == [packed.name]


@pytest.fixture
def ctx(redis_client: redis.Redis, key_prefix: str, tmp_path: Path) -> PipelineContext:
    settings = Settings(BRIDGE_WORK_DIR=tmp_path / "work", SECTRA_ALLOW_HTTP=True)
    return PipelineContext(
        settings=settings,
        apps=load_apps(None),
        store=RunStore(redis_client, prefix=key_prefix, retention_seconds=3600),
        strand_factory=lambda: None,  # type: ignore[arg-type,return-value]
        uploads=UploadIndex(redis_client, prefix=key_prefix),
        in_flight=InFlight(redis_client, prefix=key_prefix),
    )


def new_run(ctx: PipelineContext, slide_id: str, token: str) -> RunRecord:
    record, _ = ctx.store.create_or_get(
        app_id="strand-default",
        slide_id=slide_id,
        cancellation_token=token,
        callback_url="http://127.0.0.1:1",
        callback_token="tok",
        source="create",
    )
    return record


def test_store_thumbnail_keeps_the_drawing_on_the_staged_slide_beside_the_run(ctx: PipelineContext) -> None:
    record = new_run(ctx, "slide-1", "ct-1")
    out = ctx.staging.outgoing_dir(record.run_id)
    slide = make_svs(out / f"{record.run_id}.svs", width=2048, height=1024, phi={}, label_marker=LABEL_MARKER)
    record = ctx.store.update(
        record.run_id, slide_width=2048, slide_height=1024, outgoing_files=describe([slide], out)
    )
    item = PrimitiveItem(style=Style(strokeStyle="#00FF00"), polygons=[box_polygon(0.5, 0.25, 0.75, 0.375)])
    store_thumbnail(ctx, record, [primitive(item)], max_side=1024)

    blob = ctx.store.get_blob(record.run_id, THUMBNAIL_BLOB)
    assert blob is not None and blob[:3] == b"\xff\xd8\xff"  # JPEG: the kept copy is small
    picture = Image.open(io.BytesIO(blob)).convert("RGB")
    # The slide's longer side at 1024: level 1 (512 wide) scaled up is not what is read; level 0
    # (2048) halved is, so a pixel is the mean of a 2 x 2 block of level 0.
    assert picture.width == 1024 + PANEL_WIDTH
    with tifffile.TiffFile(slide) as tif:
        level_0 = tif.series[0].levels[0].asarray().astype(float)
    expected = level_0[80:120, 80:120].reshape(20, 2, 20, 2, 3).mean(axis=(1, 3))
    kept = np.asarray(picture)[40:60, 40:60].astype(float)
    # JPEG is lossy: on this noise (its worst case) a pixel is off by ~10 levels, yet the picture follows
    # the 2 x 2 means closely (a wrong level or a shift would not). The CLI's PNG matches to 1.
    assert np.abs(kept - expected).mean() <= 14.0
    shifted = np.asarray(picture)[40:60, 41:61].astype(float)
    assert np.abs(shifted - expected).mean() > 2 * np.abs(kept - expected).mean()  # the check can fail
    assert np.corrcoef(kept.ravel(), expected.ravel())[0, 1] > 0.9
    # The box (exact pixels are checked on PNG renders above): along its outline the JPEG is the
    # stroke's green; three pixels off it, on either side, it is the slide's noise again.
    area = np.asarray(picture).astype(float)[:512, :1024]

    def ring(inset: int) -> np.ndarray:
        x0, y0, x1, y1 = 512 + inset, 256 + inset, 767 - inset, 383 - inset
        return np.concatenate([area[y0, x0:x1], area[y1, x0:x1], area[y0:y1, x0], area[y0:y1, x1]])

    on_line = ring(0)
    assert on_line[:, 1].mean() > 200 and on_line[:, [0, 2]].mean() < 60
    for off in (ring(-3), ring(3)):
        assert abs(off.mean() - 128) < 20 and off[:, 1].mean() < 170

    # By default the kept picture is smaller: every run holds one in Redis for its retention period.
    store_thumbnail(ctx, record, [primitive(item)])
    smaller = ctx.store.get_blob(record.run_id, THUMBNAIL_BLOB)
    assert smaller is not None
    assert Image.open(io.BytesIO(smaller)).width == STORED_SIDE + PANEL_WIDTH


def test_a_run_without_a_staged_copy_is_drawn_on_the_slide_an_earlier_run_kept(ctx: PipelineContext) -> None:
    """A region run that reused results has no staged copy: its picture uses the slide's kept thumbnail."""
    first = new_run(ctx, "slide-kept", "ct-k1")
    out = ctx.staging.outgoing_dir(first.run_id)
    slide = make_svs(out / f"{first.run_id}.svs", width=2048, height=1024, phi={}, label_marker=LABEL_MARKER)
    first = ctx.store.update(
        first.run_id, slide_width=2048, slide_height=1024, outgoing_files=describe([slide], out)
    )
    store_thumbnail(ctx, first, [primitive()])
    later = new_run(ctx, "slide-kept", "ct-k2")
    later = ctx.store.update(later.run_id, slide_width=2048, slide_height=1024)  # nothing staged
    store_thumbnail(ctx, later, [primitive()])
    pictures = [ctx.store.get_blob(r.run_id, THUMBNAIL_BLOB) for r in (first, later)]
    assert all(p is not None for p in pictures)
    first_px, later_px = (
        np.asarray(Image.open(io.BytesIO(p or b"")).convert("RGB")).astype(float) for p in pictures
    )
    assert first_px.shape == later_px.shape
    # The slide's noise, twice JPEG-coded, not the neutral canvas (flat grey). Compared by luma
    # (JFIF's BT.601 weights): the kept thumbnail is 4:2:0, full resolution in luma only, and
    # per-pixel colour noise is exactly what chroma subsampling averages away.
    patch = (slice(40, 80), slice(40, 80))
    assert later_px[patch].std() > 10  # the canvas is one flat grey: std 0
    first_y, later_y = (px[patch] @ np.array([0.299, 0.587, 0.114]) for px in (first_px, later_px))
    assert np.corrcoef(first_y.ravel(), later_y.ravel())[0, 1] > 0.9


def test_store_thumbnail_never_raises(ctx: PipelineContext, caplog: pytest.LogCaptureFixture) -> None:
    record = new_run(ctx, "slide-2", "ct-2")
    # No slide size and no staged copy: nothing can be placed; the publish must go on regardless.
    with caplog.at_level(logging.WARNING, logger="workers.render"):
        store_thumbnail(ctx, record, [primitive()])
    assert ctx.store.get_blob(record.run_id, THUMBNAIL_BLOB) is None
    assert "result picture not stored" in caplog.text


def test_a_kept_thumbnail_outlives_the_staged_copy_and_an_unreadable_one_is_only_logged(
    ctx: PipelineContext, caplog: pytest.LogCaptureFixture
) -> None:
    """What the pipeline does when Strand holds the upload: keep the thumbnail, then remove the files."""
    record = new_run(ctx, "slide-released", "ct-r1")
    out = ctx.staging.outgoing_dir(record.run_id)
    path = out / f"{record.run_id}.svs"
    slide = make_svs(
        path, width=2048, height=1024, phi={}, label_marker=LABEL_MARKER, content=glass_on_the_right
    )
    record = ctx.store.update(
        record.run_id, slide_width=2048, slide_height=1024, outgoing_files=describe([slide], out)
    )
    keep_slide_thumbnail(ctx, record)
    assert ctx.staging.remove(record.run_id)
    store_thumbnail(ctx, record, [])  # publish, with no staged copy left
    blob = ctx.store.get_blob(record.run_id, THUMBNAIL_BLOB)
    assert blob is not None
    # The kept slide thumbnail is tissue only, so 4:2:0; the picture with results on it is 4:4:4.
    (kept_key,) = ctx.store.client.keys(f"{ctx.store.prefix}:slide-thumbnail:*")
    kept = ctx.store.client.get(kept_key)
    assert isinstance(kept, bytes)
    assert jpeg_sampling(kept) == [(2, 2), (1, 1), (1, 1)]
    assert jpeg_sampling(blob) == [(1, 1), (1, 1), (1, 1)]
    picture = np.asarray(Image.open(io.BytesIO(blob)).convert("RGB")).astype(float)
    assert picture.shape[1] == STORED_SIDE + PANEL_WIDTH
    # The slide at 480 x 240: stain on its left half, glass (243, 243, 241) on its right; the neutral
    # canvas drawn without a thumbnail is one flat (232, 232, 228).
    left, right = picture[:240, 10:230], picture[:240, 250:470]
    assert np.median(left[..., 1]) < 150 < np.median(left[..., 0])
    assert (np.median(right.reshape(-1, 3), axis=0) >= 238).all()

    broken = new_run(ctx, "slide-broken", "ct-r2")
    out = ctx.staging.outgoing_dir(broken.run_id)
    out.mkdir(parents=True)
    (out / f"{broken.run_id}.svs").write_bytes(b"II*\x00" + b"\x00" * 60)  # a TIFF header and nothing more
    broken = ctx.store.update(
        broken.run_id,
        slide_width=2048,
        slide_height=1024,
        outgoing_files=describe([out / f"{broken.run_id}.svs"], out),
    )
    with caplog.at_level(logging.WARNING, logger="workers.render"):
        keep_slide_thumbnail(ctx, broken)
    assert "slide thumbnail unreadable; not kept" in caplog.text


def jpeg_sampling(data: bytes) -> list[tuple[int, int]]:
    """Each component's (H, V) sampling factors, read from the frame header as ITU T.81 B.2.2 lays
    it out (written here, not Pillow's reading of what Pillow wrote)."""
    at = 2  # after SOI
    while at < len(data):
        assert data[at] == 0xFF, "not at a marker"
        marker = data[at + 1]
        length = int.from_bytes(data[at + 2 : at + 4], "big")
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # a start of frame
            count = data[at + 9]
            factors = data[at + 10 : at + 10 + 3 * count]
            return [(factors[i + 1] >> 4, factors[i + 1] & 0x0F) for i in range(0, 3 * count, 3)]
        at += 2 + length
    raise AssertionError("no frame header")
