"""Region runs and results reuse end to end: webhook, a real worker, MockSectraServer and the fake Strand.

A region app's first run on a slide submits one Strand job of the whole slide and gives the figures
inside the drawn region; a later region run on the same slide (another app, a subset of the
markers, two overlapping areas around the densest spot the fake placed) reads that job's results:
no download, no upload, no job, no credits, and its table names the job it read. The figures are
checked against the fake's ground-truth maps with numpy and shapely (which map-pixel centres lie in
the drawn polygon), never against our rasteriser or summariser. Bad regions end in plain words
without a job; whole-slide runs reuse only when their app says so.
"""

from __future__ import annotations

import math
import time
import uuid
from typing import Any

import numpy as np
import pytest
import shapely

from tests.e2e import conftest as harness
from tests.e2e.conftest import Bridge
from tests.fixtures.slides import glass_on_the_right
from workers.runstore import RunRecord, RunStatus

SLIDE_W, SLIDE_H = 4096, 3072  # 2 x 1.5 mm at 0.5 µm/px
SLIDE_MPP = 0.5
MAP_SHAPE = (192, 320)  # 16 x 12.8 slide pixels per map pixel: anisotropic
THRESHOLD = 0.5
# Apps of the harness's apps file (tests/e2e/conftest.py): a tagged polygon, multiArea, reuse.
REGION_APP, AREAS_APP, REUSE_APP = "strand-region", "strand-areas", "strand-reuse"

Ring = list[tuple[float, float]]  # level-0 slide pixels


def polygon_json(ring: Ring) -> dict[str, Any]:
    """A ring in Sectra's coordinates: normalised by the slide's width on both axes."""
    return {"points": [{"x": x / SLIDE_W, "y": y / SLIDE_W} for x, y in ring]}


def create(bridge: Bridge, slide_id: str, app: str, content: dict[str, Any] | None) -> dict[str, Any]:
    kind = {REGION_APP: "taggedPolygon", AREAS_APP: "multiArea"}.get(app, "wholeSlide")
    body = bridge.invocation(slide_id, app=app)
    body["input"] = {"type": kind, **({"content": content} if content is not None else {})}
    return body


def start(bridge: Bridge, slide_id: str, app: str, content: dict[str, Any] | None = None) -> str:
    body = create(bridge, slide_id, app, content)
    answer = bridge.post(body)
    assert answer.status_code == 200, answer.text
    run_id = bridge.store.find(app, slide_id, body["cancellationToken"])
    assert run_id is not None
    return run_id


def finish(bridge: Bridge, run_id: str) -> RunRecord:
    record = bridge.wait_final(run_id, timeout=120)
    assert record.status == RunStatus.completed, record.error
    return record


def result_of(bridge: Bridge, slide_id: str, app: str) -> Any:
    (result,) = bridge.results(slide_id, app)
    return result


def strand_calls(bridge: Bridge, endpoint: str) -> int:
    return bridge.strand.requests.by_endpoint()[endpoint]


def same_ring(got: Ring, want: Ring) -> bool:
    """The same corners in the same order, within the rounding of Sectra's coordinates (< 0.05 px)."""
    return len(got) == len(want) and bool(np.allclose(np.array(got), np.array(want), atol=0.05))


def hexagon(cx: float, cy: float, r: float) -> Ring:
    return [(cx + r * math.cos(a), cy + r * math.sin(a)) for a in np.linspace(0, 2 * math.pi, 7)[:-1]]


def truth_inside(fixture: Any, marker: str, rings: list[Ring]) -> dict[str, float]:
    """The marker's figures over the tissue whose map-pixel centres lie in the union of `rings`.

    Only map pixels over the slide count (the truth is NaN in any padding); a pixel in two
    overlapping rings counts once.
    """
    (scale_y, scale_x), (off_y, off_x) = fixture.slide_scale, fixture.translation
    values = fixture.truth[marker][: fixture.height, : fixture.width]
    rows, cols = np.indices(values.shape)
    xs, ys = (cols + 0.5) * scale_x + off_x, (rows + 0.5) * scale_y + off_y
    on_slide = (xs < SLIDE_W) & (ys < SLIDE_H)
    area = shapely.union_all([shapely.Polygon(r) for r in rings])
    inside = shapely.contains_xy(area, xs, ys) & on_slide
    tissue = inside & ~np.isnan(values)
    positive = tissue & (np.nan_to_num(values, nan=0.0) >= THRESHOLD)
    pixel_mm2 = (SLIDE_MPP * scale_y) * (SLIDE_MPP * scale_x) / 1e6
    return {
        "fraction": int(positive.sum()) / int(tissue.sum()),
        "tissue_mm2": int(tissue.sum()) * pixel_mm2,
        "positive_mm2": int(positive.sum()) * pixel_mm2,
    }


def tissue_free_box(fixture: Any, size: int = 4) -> Ring:
    """A box of `size` x `size` map pixels holding no tissue in the truth, in slide pixels."""
    (scale_y, scale_x), (off_y, off_x) = fixture.slide_scale, fixture.translation
    tissue = fixture.tissue[: fixture.height, : fixture.width]
    for row in range(0, tissue.shape[0] - size):
        for col in range(0, tissue.shape[1] - size):
            if not tissue[row : row + size, col : col + size].any():
                left, top = col * scale_x + off_x + 1, row * scale_y + off_y + 1
                right, bottom = left + size * scale_x - 2, top + size * scale_y - 2
                return [(left, top), (right, top), (right, bottom), (left, bottom)]
    raise AssertionError("the fake's slide has tissue everywhere")


def stored_figures(record: RunRecord, marker: str) -> dict[str, Any]:
    assert record.summary is not None
    figures: dict[str, Any] = next(m for m in record.summary["markers"] if m["marker"] == marker)
    return figures


def check_against_truth(record: RunRecord, result: Any, fixture: Any, marker: str, rings: list[Ring]) -> None:
    """Union figures, and each region's own, within 1 percentage point of the truth (and shown)."""
    figures = stored_figures(record, marker)
    union = truth_inside(fixture, marker, rings)
    assert figures["positive_fraction"] == pytest.approx(union["fraction"], abs=0.01)
    assert figures["tissue_area_mm2"] == pytest.approx(union["tissue_mm2"], rel=0.02)
    shown = result.displayProperties[f"{marker} positive tissue"]
    assert shown.startswith(f"{figures['positive_fraction'] * 100:.1f}%"), shown
    print(  # for the record (`pytest -s`): what the pathologist reads against the truth
        f"{marker} in {len(rings)} region(s): shown {shown}; truth {union['fraction'] * 100:.2f}% "
        f"of {union['tissue_mm2']:.4f} mm²"
    )
    assert len(figures["regions"]) == len(rings)
    for own, ring in zip(figures["regions"], rings, strict=True):
        truth = truth_inside(fixture, marker, [ring])
        assert own["positive_fraction"] == pytest.approx(truth["fraction"], abs=0.01)
        assert own["tissue_area_mm2"] == pytest.approx(truth["tissue_mm2"], rel=0.02)


def outline_points(result: Any) -> list[list[tuple[float, float]]]:
    """Every drawn polygon of a result, back in slide pixels."""
    return [
        [(p.x * SLIDE_W, p.y * SLIDE_W) for p in polygon.points]
        for item in result.data.result.content
        for polygon in item.polygons
    ]


def test_a_second_region_reads_the_first_job_and_matches_the_truth_at_no_cost(bridge: Bridge) -> None:
    bridge.strand.options.results_shape = MAP_SHAPE
    bridge.strand.options.results_layout = "flat"
    slide = "slide-regions"
    bridge.add_slide(slide, width=SLIDE_W, height=SLIDE_H)

    # 1. A tagged polygon around the middle of the slide: one whole-slide job, figures inside it.
    first_ring = hexagon(SLIDE_W / 2, SLIDE_H / 2, 700)
    content = {"polygon": polygon_json(first_ring), "tags": ["Tumour", "Stroma"], "tagIndex": 0}
    first = finish(bridge, start(bridge, slide, REGION_APP, content))
    assert first.input_type == "taggedPolygon" and first.reused_job is None
    assert first.job_id is not None and first.reserved_credits
    assert len(bridge.strand.jobs) == 1
    fixture = bridge.strand.results_fixture(first.job_id)
    first_result = result_of(bridge, slide, REGION_APP)
    for marker in ("CD8", "PanCK", "Ki67"):
        check_against_truth(first, first_result, fixture, marker, [first_ring])
    assert first_result.displayProperties["Area analysed"] == "The drawn region (Tumour)"

    # The pending result framed the drawn region where it was drawn, labelled "Queued".
    assert first.pending_result is not None
    pending = first.pending_result["data"]["result"]["content"]
    framed = [p for item in pending for p in item["polygons"]]  # a dark and a light stroke of one ring
    assert framed
    for polygon in framed:
        points = [(p["x"] * SLIDE_W, p["y"] * SLIDE_W) for p in polygon["points"]]
        assert same_ring(points, first_ring)
    (label,) = [label["label"] for item in pending for label in item.get("labels") or []]
    assert label == first.pending_result["displayResult"] and label.startswith("Queued")

    # 2. Two overlapping areas around the densest spot the fake placed in Ki67, by another app
    # asking for a subset of the markers: the first job's results are read, nothing is spent.
    row, col = fixture.hotspots["Ki67"][0]
    (scale_y, scale_x), (off_y, off_x) = fixture.slide_scale, fixture.translation
    cx, cy = (col + 0.5) * scale_x + off_x, (row + 0.5) * scale_y + off_y
    rings = [hexagon(cx, cy, 250), hexagon(cx + 150, cy + 60, 200)]
    jobs, predicts, uploads = (
        len(bridge.strand.jobs),
        strand_calls(bridge, "POST /api/v1/predict"),
        strand_calls(bridge, "POST /api/v1/uploads"),
    )
    balance = bridge.strand.balance
    started = time.monotonic()
    second = finish(bridge, start(bridge, slide, AREAS_APP, {"polygons": [polygon_json(r) for r in rings]}))
    print(f"second region answered in {time.monotonic() - started:.1f} s")
    assert len(bridge.strand.jobs) == jobs, "a second region submitted a Strand job"
    assert strand_calls(bridge, "POST /api/v1/predict") == predicts
    assert strand_calls(bridge, "POST /api/v1/uploads") == uploads
    assert bridge.strand.balance == balance
    assert second.job_id == first.job_id and second.reserved_credits == 0
    assert second.reused_job is not None and second.reused_job["job_id"] == first.job_id
    events = [e["event"] for e in bridge.store.events(second.run_id)]
    assert "results_reused" in events
    assert not {"downloaded", "submitted", "estimated"} & set(events)
    assert second.staged_files == [] and second.upload_id is None

    result = result_of(bridge, slide, AREAS_APP)
    day = time.strftime("%Y-%m-%d", time.gmtime(second.reused_job["completed_at"]))
    assert result.displayProperties["Strand results"] == f"from Strand job {first.job_id} of {day}"
    assert result.displayProperties["Strand credits used"] == "0 (results reused)"
    for marker in ("Ki67", "CD8"):
        check_against_truth(second, result, fixture, marker, rings)
    assert "PanCK positive tissue" not in result.displayProperties
    # The area is dense: well above the slide's Ki67 fraction as a whole.
    whole = truth_inside(fixture, "Ki67", [[(0, 0), (SLIDE_W, 0), (SLIDE_W, SLIDE_H), (0, SLIDE_H)]])
    assert stored_figures(second, "Ki67")["positive_fraction"] > whole["fraction"] + 0.05
    # Both outlines are drawn where they were drawn.
    drawn = outline_points(result)
    for ring in rings:
        assert any(same_ring(points, ring) for points in drawn), ring

    # 3. A region where the fake put no tissue: plain words, no job, and the earlier job it read is
    # left alone (a failing run that read earlier results has no job of its own to cancel).
    empty = tissue_free_box(fixture)
    third = bridge.wait_final(start(bridge, slide, AREAS_APP, {"polygons": [polygon_json(empty)]}))
    assert third.status == RunStatus.failed and third.message == "The drawn region holds no tissue"
    assert len(bridge.strand.jobs) == jobs
    assert not [k for k in bridge.strand.requests.by_endpoint() if k.endswith("/cancel")]
    assert bridge.strand.jobs[first.job_id].status == "completed"


def test_progress_frames_the_drawn_region_while_strand_runs(bridge: Bridge) -> None:
    bridge.strand.options.results_shape = MAP_SHAPE
    slide = "slide-frame"
    bridge.add_slide(slide, width=SLIDE_W, height=SLIDE_H)
    ring = hexagon(1500, 1200, 400)
    run_id = start(bridge, slide, AREAS_APP, {"polygons": [polygon_json(ring)]})
    progress = strand_progress(bridge, slide, AREAS_APP, run_id)
    framed = outline_points(progress)
    assert framed and all(same_ring(points, ring) for points in framed)
    labels = [label.label for item in progress.data.result.content for label in item.labels or []]
    assert labels == [progress.displayResult]
    finish(bridge, run_id)


def strand_progress(bridge: Bridge, slide: str, app: str, run_id: str) -> Any:
    """The first "Strand: ..." progress result Sectra stores for the run."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        (result,) = bridge.results(slide, app)
        if result.displayResult.startswith("Strand: "):
            return result
        assert not bridge.store.require(run_id).is_final, "the run ended before any Strand progress"
        time.sleep(0.02)  # polling Sectra's stored result, not standing in for synchronisation
    raise AssertionError("no Strand progress was seen in Sectra")


@pytest.mark.parametrize(
    ("ring", "words"),
    [
        (
            [(SLIDE_W + 100, 10), (SLIDE_W + 500, 10), (SLIDE_W + 300, 400)],
            "The drawn region lies outside the slide",
        ),
        ([(100, 100), (900, 900)], "The drawn region needs at least three points"),
    ],
)
def test_a_bad_region_ends_in_plain_words_without_a_job(bridge: Bridge, ring: Ring, words: str) -> None:
    slide = f"slide-bad-{uuid.uuid4().hex[:6]}"
    bridge.add_slide(slide, width=SLIDE_W, height=SLIDE_H)
    record = bridge.wait_final(start(bridge, slide, AREAS_APP, {"polygons": [polygon_json(ring)]}))
    assert record.status == RunStatus.failed
    assert record.message == words
    assert result_of(bridge, slide, AREAS_APP).displayResult == words
    assert len(bridge.strand.jobs) == 0 and strand_calls(bridge, "POST /api/v1/uploads") == 0
    assert "downloaded" not in [e["event"] for e in bridge.store.events(record.run_id)]


def test_an_input_the_app_does_not_take_is_refused_naming_the_field(bridge: Bridge) -> None:
    bridge.add_slide("slide-input")
    region = {"polygons": [polygon_json([(10, 10), (200, 10), (100, 200)])]}
    wrong = create(bridge, "slide-input", AREAS_APP, None)  # a region app asked for the whole slide
    wrong["input"] = {"type": "wholeSlide"}
    answer = bridge.post(wrong)
    assert answer.status_code == 422
    assert answer.json()["error"] == "invalid_invocation" and "'input.type'" in answer.json()["message"]
    drawn = create(bridge, "slide-input", harness.APP, None)  # a whole-slide app sent a region
    drawn["input"] = {"type": "multiArea", "content": region}
    assert bridge.post(drawn).status_code == 422
    assert bridge.store.list_runs() == [] and bridge.results("slide-input") == []


def test_whole_slide_runs_reuse_only_when_their_app_says_so(bridge: Bridge) -> None:
    bridge.strand.options.results_shape = MAP_SHAPE
    slide = "slide-whole"
    bridge.add_slide(slide, width=SLIDE_W, height=SLIDE_H)
    first_id = bridge.start_run(slide).run_id
    # While Strand runs, the progress frames the whole slide.
    framed = outline_points(strand_progress(bridge, slide, harness.APP, first_id))
    whole = [(0.0, 0.0), (SLIDE_W, 0.0), (SLIDE_W, SLIDE_H), (0.0, SLIDE_H)]
    assert framed and all(same_ring(points, whole) for points in framed)
    first = finish(bridge, first_id)
    assert first.job_id is not None and len(bridge.strand.jobs) == 1

    reusing = finish(bridge, start(bridge, slide, REUSE_APP))
    assert reusing.job_id == first.job_id and reusing.reserved_credits == 0
    assert len(bridge.strand.jobs) == 1
    shown = result_of(bridge, slide, REUSE_APP).displayProperties
    assert shown["Strand credits used"] == "0 (results reused)"
    assert (
        shown["CD8 positive tissue"]
        == result_of(bridge, slide, harness.APP).displayProperties["CD8 positive tissue"]
    )

    again = finish(bridge, bridge.start_run(slide).run_id)  # the default app: a new job, as before
    assert again.job_id not in (None, first.job_id) and again.reused_job is None
    assert len(bridge.strand.jobs) == 2


def test_a_first_region_on_bare_glass_is_refused_before_any_upload_or_job(bridge: Bridge) -> None:
    """No earlier results to read: the verified copy's thumbnail shows glass, so nothing is sent."""
    slide = "slide-glass"
    bridge.add_slide(slide, width=SLIDE_W, height=SLIDE_H, content=glass_on_the_right)
    on_glass = hexagon(SLIDE_W * 0.75, SLIDE_H / 2, 500)
    record = bridge.wait_final(start(bridge, slide, AREAS_APP, {"polygons": [polygon_json(on_glass)]}))
    assert record.status == RunStatus.failed and record.message == "The drawn region holds no tissue"
    assert result_of(bridge, slide, AREAS_APP).displayResult == "The drawn region holds no tissue"
    assert len(bridge.strand.jobs) == 0 and strand_calls(bridge, "POST /api/v1/uploads") == 0
    checked = [e for e in bridge.store.events(record.run_id) if e["event"] == "region_tissue_checked"]
    assert [e["data"]["holds_tissue"] for e in checked] == ["false"]

    # The same slide, a region on the stained half: judged to hold tissue, so it goes to Strand (what
    # the fake's maps then find there is their own business: its tissue is not the slide's pixels).
    on_tissue = hexagon(SLIDE_W * 0.25, SLIDE_H / 2, 500)
    done = bridge.wait_final(start(bridge, slide, AREAS_APP, {"polygons": [polygon_json(on_tissue)]}), 120)
    assert done.job_id is not None and strand_calls(bridge, "POST /api/v1/uploads") == 1
    checked = [e for e in bridge.store.events(done.run_id) if e["event"] == "region_tissue_checked"]
    assert [e["data"]["holds_tissue"] for e in checked] == ["true"]
    assert len(bridge.strand.jobs) == 1
