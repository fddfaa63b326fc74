"""`sectra-bridge render RUN_ID --out result.png`, run as the installed console script.

Real parts: Sectra's own mock server on a real port holding the posted result and serving the
slide's files, a real Redis holding the run record written through the run store, and a
generated Aperio SVS. The run's staged copy is gone (as for every completed run), so the slide
must come from Sectra.

Oracles: where the box must be is Sectra's coordinate rule written out here (x and y divided by
the slide width); what the slide looks like is tifffile reading level 0 of the SVS; the PNG is
read back with Pillow.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import redis
import tifffile
from PIL import Image
from sectra_client.schemas import (
    Point,
    Polygon,
    PrimitiveItem,
    PrimitiveResultContent,
    Result,
    ResultData,
    Style,
)

from sectra_adapter import SectraAdapter
from tests.fixtures.slides import make_svs
from tests.service.conftest import SECTRA_TOKEN, RecordingSectra, slide_metadata
from workers.render import PANEL_WIDTH
from workers.runstore import RunStatus, RunStore
from workers.states import WORKING_ORDER

CLI = Path(sys.executable).with_name("sectra-bridge")
APP = "strand-default"
SLIDE = "slide-render-1"
SLIDE_W, SLIDE_H = 2048, 1024
BOX = (0.5, 0.25, 0.75, 0.375)  # normalised by the width: slide pixels 1024..1536 x 512..768
DEAD_SECTRA = "http://127.0.0.1:1"


class TrackedStore(RunStore):
    """The run store under the default key prefix (the command reads it so), minding what it created."""

    def __init__(self, client: redis.Redis) -> None:
        super().__init__(client)
        self.created: list[str] = []


@pytest.fixture
def store(redis_url: str) -> Iterator[TrackedStore]:
    client = redis.Redis.from_url(redis_url)
    made = TrackedStore(client)
    yield made
    for run_id in made.created:
        made.delete(run_id)
    client.close()


def new_run(store: TrackedStore, token: str, callback_url: str, to: RunStatus = RunStatus.completed) -> str:
    record, _ = store.create_or_get(
        app_id=APP,
        slide_id=SLIDE,
        cancellation_token=token,
        callback_url=callback_url,
        callback_token=SECTRA_TOKEN,
        source="create",
    )
    store.created.append(record.run_id)
    last = WORKING_ORDER.index(to) if to in WORKING_ORDER else len(WORKING_ORDER) - 1
    for status in WORKING_ORDER[1 : last + 1]:
        store.transition(record.run_id, status)
    if to not in WORKING_ORDER:
        store.transition(record.run_id, to)
    store.update(record.run_id, slide_width=SLIDE_W, slide_height=SLIDE_H)
    return record.run_id


def render(tmp_path: Path, redis_url: str, run_id: str, sectra_url: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STRAND_", "BRIDGE_", "SECTRA_"))}
    env.update(
        REDIS_URL=redis_url,
        SECTRA_ALLOWED_CALLBACK_URLS=f"{sectra_url},{DEAD_SECTRA}",
        SECTRA_ALLOW_HTTP="true",
        BRIDGE_WORK_DIR=str(tmp_path / "work"),
    )
    return subprocess.run(
        [str(CLI), "render", run_id, "--out", str(tmp_path / "out" / "result.png")],
        env=env,
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def posted(sectra: RecordingSectra, tmp_path: Path) -> tuple[int, Path]:
    """A slide Sectra serves, and a result with one green box that Sectra holds for it."""
    slide = make_svs(tmp_path / "slide.svs", width=SLIDE_W, height=SLIDE_H, phi={}, label_marker=b"LABEL-77")
    sectra.add_slide(slide_metadata(SLIDE, width=SLIDE_W))
    sectra.add_slide_files(SLIDE, slide)
    x0, y0, x1, y1 = BOX
    corners = [Point(x=x, y=y) for x, y in ((x0, y0), (x1, y0), (x1, y1), (x0, y1))]
    result = Result(
        slideId=SLIDE,
        displayResult="CD8 12.0%",
        applicationVersion="1.0",
        data=ResultData(
            result=PrimitiveResultContent(
                content=[
                    PrimitiveItem(style=Style(strokeStyle="#00FF00"), polygons=[Polygon(points=corners)])
                ]
            )
        ),
        displayProperties={"CD8 positive tissue": "12.0%"},
    )
    with SectraAdapter(sectra.url, SECTRA_TOKEN, allow_http=True) as adapter:
        return adapter.create_results(APP, result).id, slide


def test_render_draws_what_sectra_holds_on_the_slide_streamed_from_sectra(
    sectra: RecordingSectra, store: TrackedStore, redis_url: str, tmp_path: Path, posted: tuple[int, Path]
) -> None:
    result_id, slide = posted
    run_id = new_run(store, "ct-render-ok", sectra.url)
    store.update(run_id, sectra_result_id=result_id)

    done = render(tmp_path, redis_url, run_id, sectra.url)
    assert done.returncode == 0, done.stderr
    out = tmp_path / "out" / "result.png"
    assert done.stdout.strip() == str(out)
    assert ("GET", f"/applications/{APP}/results/{result_id}") in sectra.requests
    assert ("GET", f"/slides/{SLIDE}/files") in sectra.requests
    # The downloaded (identifiable) original is gone once read.
    assert not [p for p in (tmp_path / "work").rglob("*") if p.is_file()]

    picture = np.asarray(Image.open(out).convert("RGB"))
    assert picture.shape[1] == 1024 + PANEL_WIDTH  # 2048 wide slide at the default 1024
    scale = 1024 / SLIDE_W
    x0, y0, x1, y1 = (v * SLIDE_W * scale for v in BOX)  # Sectra's rule, then the thumbnail's scale
    green = np.argwhere(np.all(picture[:512, :1024] == (0, 255, 0), axis=-1))
    assert len(green) > 2 * ((x1 - x0) + (y1 - y0))
    rows, cols = green[:, 0] + 0.5, green[:, 1] + 0.5
    near_vertical = (
        (np.minimum(abs(cols - x0), abs(cols - x1)) <= 1.5) & (rows >= y0 - 1.5) & (rows <= y1 + 1.5)
    )
    near_horizontal = (
        (np.minimum(abs(rows - y0), abs(rows - y1)) <= 1.5) & (cols >= x0 - 1.5) & (cols <= x1 + 1.5)
    )
    assert np.all(near_vertical | near_horizontal)
    # Away from the box, the picture is the slide: each pixel the mean of a 2 x 2 block of level 0.
    with tifffile.TiffFile(slide) as tif:
        level_0 = tif.series[0].levels[0].asarray().astype(float)
    for row, col in ((10, 10), (300, 100), (500, 1000)):
        expected = level_0[2 * row : 2 * row + 2, 2 * col : 2 * col + 2].mean(axis=(0, 1))
        assert np.abs(picture[row, col].astype(float) - expected).max() <= 1.0


def test_render_refuses_in_plain_words(
    sectra: RecordingSectra, store: TrackedStore, redis_url: str, tmp_path: Path, posted: tuple[int, Path]
) -> None:
    result_id, _ = posted
    unknown = "run-" + "0" * 24
    waiting = new_run(store, "ct-render-waiting", sectra.url, to=RunStatus.waiting)
    unreachable = new_run(store, "ct-render-dead", DEAD_SECTRA)
    store.update(unreachable, sectra_result_id=result_id)
    cases = {
        unknown: f"no run {unknown}",
        waiting: "is waiting; only a completed run has a result to draw",
        unreachable: "Sectra could not be reached",
        "not-a-run-id": "must be",
    }
    for run_id, words in cases.items():
        done = render(tmp_path, redis_url, run_id, sectra.url)
        assert done.returncode != 0, run_id
        assert words in done.stderr, done.stderr
        assert "Traceback" not in done.stderr
        assert SECTRA_TOKEN not in done.stderr + done.stdout
    assert not (tmp_path / "out" / "result.png").exists()
