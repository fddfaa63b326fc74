"""The hotspot gallery round trip end to end: webhook, a real worker, MockSectraServer and the fake Strand.

A run completes and posts its final result and a gallery of its hotspots. The test then does what
Sectra does when the pathologist retags patches: it sends `modify` with the stored gallery, two
patches tagged Artefact and one Agree. The figures that reach the primitive result are checked
against plain numpy on the fake Strand's ground-truth maps: the marker's positive fraction over the
tissue pixels whose centres lie outside both Artefact boxes, where each box is the truth's own
densest window (the summariser's documented definition, brute-forced on the truth map by
`tests.e2e.test_figures`) that the patch's centre falls in. No second Strand job may be submitted.
"""

from __future__ import annotations

import re
from typing import Any

import httpx
import numpy as np
import pytest
from sectra_client.schemas import PatchResultContent, ResultResponse

from tests.e2e.conftest import APP, Bridge
from tests.e2e.test_figures import MAP_SHAPE, MARKERS, SLIDE_H, SLIDE_W, THRESHOLD, truth_hotspots
from workers.runstore import RunStatus

AREA = re.compile(r"^(\S+)% \((\S+) mm² of (\S+) mm²\)")
SLIDE_MPP = 0.5
Box = tuple[float, float, float, float]  # left, top, right, bottom in slide pixels
MAP_PIXEL = SLIDE_W / MAP_SHAPE[1]  # slide pixels per map pixel across (the larger side)


def metric(bridge: Bridge, verdict: str) -> float:
    text = httpx.get(f"{bridge.webhook_url}/metrics", timeout=10).text
    line = re.search(
        rf'^bridge_hotspot_reviews_total{{app="{APP}",verdict="{verdict}"}} (\S+)$', text, re.MULTILINE
    )
    return float(line.group(1)) if line else 0.0


def stored(bridge: Bridge, slide_id: str, result_id: int | None) -> ResultResponse:
    (result,) = [r for r in bridge.all_results(slide_id) if r.id == result_id]
    return result


def retagged(gallery: ResultResponse, tags: dict[int, str]) -> dict[str, Any]:
    """The gallery as Sectra sends it in `modify` after the pathologist tagged patch i with tags[i]."""
    body = gallery.model_dump(mode="json")
    content = body["data"]["result"]["content"]
    for index, tag in tags.items():
        content["patches"][index]["tag"] = content["tags"].index(tag)
    return body


def truth_without(fixture: Any, marker: str, boxes: list[Box]) -> tuple[float, float, float]:
    """(percent, positive mm², tissue mm²) over the tissue whose map-pixel centres lie outside `boxes`."""
    (scale_y, scale_x), (off_y, off_x) = fixture.slide_scale, fixture.translation
    values = fixture.truth[marker]
    rows, cols = np.indices(values.shape)
    centre_x, centre_y = (cols + 0.5) * scale_x + off_x, (rows + 0.5) * scale_y + off_y
    keep = ~np.isnan(values)
    for left, top, right, bottom in boxes:
        keep &= ~((centre_x >= left) & (centre_x < right) & (centre_y >= top) & (centre_y < bottom))
    positive = keep & (np.nan_to_num(values, nan=0.0) >= THRESHOLD)
    pixel_mm2 = (SLIDE_MPP * scale_y) * (SLIDE_MPP * scale_x) / 1e6
    return (
        100 * int(positive.sum()) / int(keep.sum()),
        int(positive.sum()) * pixel_mm2,
        int(keep.sum()) * pixel_mm2,
    )


def assert_figures(result: ResultResponse, fixture: Any, boxes: list[Box]) -> None:
    for marker in MARKERS:
        percent, positive, tissue = truth_without(fixture, marker, boxes)
        shown = AREA.match(str(result.displayProperties[f"{marker} positive tissue"]))
        assert shown is not None, result.displayProperties
        got = [float(v.lstrip("<")) for v in shown.groups()]
        truth = f"{percent:.2f}% ({positive:.4f} of {tissue:.4f})"
        print(f"{marker} after review: shown {shown.group(0)}; truth {truth}")  # for the record (-s)
        if shown.group(1).startswith("<"):  # a tiny non-zero share reads "<0.1%"
            assert 0 < percent < 0.05, marker
        else:
            assert got[0] == pytest.approx(percent, abs=0.05), marker
        assert got[1] == pytest.approx(positive, rel=5e-3), marker
        assert got[2] == pytest.approx(tissue, rel=5e-3), marker
        assert f"{marker} {shown.group(1)}%" in result.displayResult


def test_retagging_two_patches_artefact_recomputes_the_figures_without_them(bridge: Bridge) -> None:
    bridge.strand.options.results_shape = MAP_SHAPE
    slide_id = "slide-review"
    bridge.add_slide(slide_id, width=SLIDE_W, height=SLIDE_H)
    create = bridge.invocation(slide_id)
    assert bridge.post(create).status_code == 200
    run_id = bridge.store.find(APP, slide_id, create["cancellationToken"])
    assert run_id is not None
    record = bridge.wait_final(run_id, timeout=120)
    assert record.status == RunStatus.completed, record.error
    assert record.job_id is not None and record.review_result_id is not None, "the gallery is posted"
    fixture = bridge.strand.results_fixture(record.job_id)
    primitive = stored(bridge, slide_id, record.sectra_result_id)
    assert_figures(primitive, fixture, [])  # before the review: the whole slide's figures

    # One patch per drawn hotspot: each patch's centre lies in one of the truth's hotspot windows.
    gallery = stored(bridge, slide_id, record.review_result_id)
    content = gallery.data.result
    assert isinstance(content, PatchResultContent)
    assert content.content.tags == ["Hotspot", "Agree", "Artefact"]
    assert content.content.statuses["allowVerify"].value is False
    windows = {marker: truth_hotspots(fixture, marker) for marker in MARKERS}
    assert len(content.content.patches) == sum(len(w) for w in windows.values())
    sort_keys = [patch.sortKeyValue for patch in content.content.patches]
    assert sort_keys == sorted(sort_keys, reverse=True)

    def window_of(index: int) -> Box:
        """The truth window the patch is centred on (markers' windows may overlap, so by centre)."""
        patch = content.content.patches[index]
        x, y = patch.position.x * SLIDE_W, patch.position.y * SLIDE_W
        near = {
            w
            for boxes in windows.values()
            for w in boxes
            if abs((w[0] + w[2]) / 2 - x) <= MAP_PIXEL and abs((w[1] + w[3]) / 2 - y) <= MAP_PIXEL
        }
        assert len(near) == 1, (index, x, y, near)
        return near.pop()

    artefacts = [window_of(0), window_of(1)]
    kept_before, rejected_before = metric(bridge, "kept"), metric(bridge, "rejected")

    modify = {**bridge.invocation(slide_id, create["cancellationToken"], action="modify")}
    modify["input"] = retagged(gallery, {0: "Artefact", 1: "Artefact", 2: "Agree"})
    answer = bridge.post(modify)
    assert answer.status_code == 200, answer.text
    reviewed = stored(bridge, slide_id, record.review_result_id)
    assert answer.json() == reviewed.model_dump(mode="json"), "modify answers with the stored gallery"
    assert isinstance(reviewed.data.result, PatchResultContent)
    assert reviewed.data.result.content.statuses["allowVerify"].value is True

    primitive = stored(bridge, slide_id, record.sectra_result_id)
    assert_figures(primitive, fixture, artefacts)
    assert len(bridge.strand.jobs) == 1, "a review submits no Strand job"
    events = [e for e in bridge.store.events(run_id) if e["event"] == "hotspot_review"]
    untouched = len(content.content.patches) - 3
    assert [e["data"] for e in events] == [
        {"outcome": "applied", "kept": 1, "rejected": 2, "untouched": untouched}
    ]
    assert metric(bridge, "kept") - kept_before == 1
    assert metric(bridge, "rejected") - rejected_before == 2
    record = bridge.store.require(run_id)
    assert record.review is not None and record.review["rejected"] == 2
    assert record.sectra_version_id == primitive.versionId

    # Sectra retries the modify (under another invocation's token): same answer, nothing counted again.
    repeat = {**bridge.invocation(slide_id, action="modify"), "input": modify["input"]}
    again = bridge.post(repeat)
    assert again.status_code == 200, again.text
    assert again.json() == answer.json()
    assert stored(bridge, slide_id, record.sectra_result_id) == primitive
    assert metric(bridge, "rejected") - rejected_before == 2
    assert len([e for e in bridge.store.events(run_id) if e["event"] == "hotspot_review"]) == 1

    # A malformed review: 422 naming the problem, and nothing changes.
    broken = retagged(reviewed, {})
    broken["data"]["result"]["content"]["patches"][0]["tag"] = 9
    refused = bridge.post({**modify, "input": broken})
    assert refused.status_code == 422, refused.text
    assert refused.json()["error"] == "malformed_review" and "tag 9" in refused.json()["message"]
    assert stored(bridge, slide_id, record.sectra_result_id) == primitive

    # Sectra down: 503 with Retry-After, as the create path answers.
    bridge.sectra.stop()
    down = bridge.post({**modify, "input": retagged(reviewed, {3: "Artefact"})})
    assert down.status_code == 503, down.text
    assert down.headers["Retry-After"]
    assert down.json()["error"] == "sectra_unavailable"
