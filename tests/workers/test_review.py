"""The hotspot gallery round trip (`workers.review`) against Sectra's mock over HTTP and a real Redis.

The run's summary and density grids are built here from counts drawn at random; the oracle is the
rule written out with numpy: a hotspot box is a whole window of grid cells, so the figures without
the Artefact boxes are the counts of the cells outside every such box, over the tissue outside them.
Which patch shows which hotspot is read from the patch's position (its centre on the slide), not
from the gallery's context, which is the code under test's own bookkeeping.
"""

from __future__ import annotations

import dataclasses
import re
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import redis
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import REGISTRY
from sectra_client.mock_server import MockSectraServer
from sectra_client.schemas import PatchResultContent, ResultResponse

from sectra_adapter import (
    Backoff,
    Hotspot,
    MarkerSummary,
    Overlay,
    RunSummary,
    SectraAdapter,
    SectraError,
    build_final_result,
)
from service.app import create_app
from tests.service.conftest import ServerThread
from workers import review
from workers.apps import AppConfig
from workers.context import PipelineContext
from workers.grid import DensityGrid, grids_to_bytes
from workers.runstore import GRIDS_BLOB, RunRecord, RunStore
from workers.settings import Settings
from workers.summary_record import StoredSummary

APP_ID = "strand-default"
TOKEN = "sectra-review-token-0123456789"
SLIDE_W, SLIDE_H = 4000, 3000
CELL = 100  # slide pixels per grid cell side
ROWS, COLS = SLIDE_H // CELL, SLIDE_W // CELL
PIXEL_MM2 = (10 * 0.5 / 1000) ** 2  # a map pixel of 10 x 10 slide pixels at 0.5 µm
WINDOW = 4  # cells per hotspot side
MARKERS = ("CD8", "Ki67")
# (row, col) of each hotspot window's first cell, per marker; none overlap within a marker, and one
# CD8 window is also a Ki67 window, so tagging it on both markers' patches must count the box once.
SPOTS = {"CD8": [(2, 3), (10, 20), (20, 30)], "Ki67": [(10, 20), (4, 30), (22, 5)]}
AREA = re.compile(r"^(\S+)% \((\S+) mm² of (\S+) mm²\)")


class VersionedSectra(MockSectraServer):
    """Sectra's mock, made to refuse a stale `versionId` (409) as Sectra does, and to fail on request."""

    def __init__(self) -> None:
        super().__init__(token=TOKEN)
        self.fail_puts_of: set[int] = set()  # result ids whose PUT answers 503 (Sectra overloaded)
        self.lose_create_answers = 0  # creates stored, but the answer is lost (a dropped connection)
        self.refuse_creates: int | None = None  # status every create answers, stored nothing
        self.puts: list[int] = []
        self.creates = 0

    def create_app(self) -> FastAPI:
        app = super().create_app()

        @app.middleware("http")
        async def versions(request: Request, call_next: Callable[[Request], Any]) -> Response:
            parts = request.url.path.strip("/").split("/")
            if request.method == "PUT" and len(parts) == 4 and parts[2] == "results":
                result_id = int(parts[3])
                self.puts.append(result_id)
                if result_id in self.fail_puts_of:
                    return JSONResponse({"detail": "overloaded"}, status_code=503)
                body = await request.json()
                stored = self._results.get((parts[1], result_id))
                if stored is not None and body.get("versionId") != stored.versionId:
                    return JSONResponse({"detail": "versionId is not current"}, status_code=409)
            if request.method == "POST" and parts[-1] == "results" and self.refuse_creates:
                return JSONResponse({"detail": "request entity too large"}, status_code=self.refuse_creates)
            response: Response = await call_next(request)
            if request.method == "POST" and parts[-1] == "results":
                self.creates += 1
                if self.lose_create_answers:
                    self.lose_create_answers -= 1
                    return JSONResponse({"detail": "connection dropped"}, status_code=502)
            return response

        return app


@pytest.fixture
def sectra() -> Iterator[VersionedSectra]:
    server = VersionedSectra()
    server.run(port=0, host="127.0.0.1")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def store(redis_client: redis.Redis, key_prefix: str) -> Iterator[RunStore]:
    yield RunStore(redis_client, prefix=key_prefix, retention_seconds=3600)
    for key in redis_client.scan_iter(f"{key_prefix}:*"):
        redis_client.delete(key)


def adapter(sectra: MockSectraServer) -> SectraAdapter:
    backoff = Backoff(max_retries=1, base_delay=0.001, max_delay=0.002)
    return SectraAdapter(sectra.url, TOKEN, allow_http=True, backoff=backoff)


# -- the run's figures, built here -----------------------------------------------------------------


@dataclasses.dataclass
class Scenario:
    store: RunStore
    sectra: VersionedSectra
    app: AppConfig
    record: RunRecord
    grids: dict[str, DensityGrid]

    def fresh(self) -> RunRecord:
        return self.store.require(self.record.run_id)

    def primitive(self) -> ResultResponse:
        record = self.fresh()
        assert record.sectra_result_id is not None
        return self.sectra._results[(APP_ID, record.sectra_result_id)]

    def gallery(self) -> ResultResponse:
        record = self.fresh()
        assert record.review_result_id is not None
        return self.sectra._results[(APP_ID, record.review_result_id)]


def _grid(marker: str, rng: np.random.Generator) -> DensityGrid:
    tissue = rng.integers(60, 101, size=(ROWS, COLS)).astype(np.int64)
    positive = (tissue * rng.uniform(0.02, 0.15, size=(ROWS, COLS))).astype(np.int64)
    for row, col in SPOTS[marker]:  # dense windows: excluding one moves the figure by far more than 0.1 %
        window = np.s_[row : row + WINDOW, col : col + WINDOW]
        positive[window] = (tissue[window] * 0.9).astype(np.int64)
    return DensityGrid(
        marker=marker,
        origin=(0.0, 0.0),
        cell=(float(CELL), float(CELL)),
        extent=(float(SLIDE_W), float(SLIDE_H)),
        pixel_mm2=PIXEL_MM2,
        positive=positive,
        tissue=tissue,
        value_sum=positive.astype(np.float64) * 0.8,
    )


def _box(row: int, col: int) -> tuple[int, int, int, int]:
    return col * CELL, row * CELL, WINDOW * CELL, WINDOW * CELL


def _summary(grid: DensityGrid) -> MarkerSummary:
    spots = []
    for row, col in SPOTS[grid.marker]:
        window = np.s_[row : row + WINDOW, col : col + WINDOW]
        fraction = int(grid.positive[window].sum()) / int(grid.tissue[window].sum())
        spots.append(Hotspot(*_box(row, col), positive_fraction=fraction))
    spots.sort(key=lambda s: -s.positive_fraction)
    return MarkerSummary(
        marker=grid.marker,
        positive_fraction=int(grid.positive.sum()) / int(grid.tissue.sum()),
        positive_area_mm2=int(grid.positive.sum()) * PIXEL_MM2,
        tissue_area_mm2=int(grid.tissue.sum()) * PIXEL_MM2,
        mean=0.3,
        p50=0.2,
        p90=0.6,
        p99=0.9,
        hotspots=spots,
    )


def make_run(
    store: RunStore, sectra: VersionedSectra, *, overlay: Overlay = "both", hotspots: bool = True
) -> Scenario:
    rng = np.random.default_rng(16)
    app = AppConfig(id=APP_ID, display_name="Strand marker panel", markers=list(MARKERS), overlay=overlay)
    grids = {marker: _grid(marker, rng) for marker in MARKERS}
    markers = [_summary(grid) for grid in grids.values()]
    if not hotspots:
        markers = [dataclasses.replace(m, hotspots=[]) for m in markers]
    slide_id = f"slide-{uuid.uuid4().hex[:8]}"
    record, _ = store.create_or_get(
        app_id=APP_ID,
        slide_id=slide_id,
        cancellation_token=uuid.uuid4().hex,
        callback_url=sectra.url,
        callback_token=TOKEN,
        source="create",
    )
    summary = RunSummary(
        slide_id=slide_id,
        slide_width=SLIDE_W,
        slide_height=SLIDE_H,
        markers=markers,
        job_id="job-review-1",
        app_version=app.version,
        threshold=app.positivity_threshold,
        overlay=app.overlay,
    )
    with adapter(sectra) as client:
        final = client.create_results(APP_ID, build_final_result(summary))
    store.put_blob(record.run_id, GRIDS_BLOB, grids_to_bytes(grids))
    record = store.update(
        record.run_id,
        slide_width=SLIDE_W,
        slide_height=SLIDE_H,
        job_id=summary.job_id,
        summary=StoredSummary(markers=markers).to_record(),
        sectra_result_id=final.id,
        sectra_version_id=final.versionId,
    )
    return Scenario(store, sectra, app, record, grids)


def context_for(scenario: Scenario, tmp_path: Path) -> PipelineContext:
    settings = Settings(BRIDGE_WORK_DIR=tmp_path)
    return PipelineContext(
        settings=settings,
        apps={APP_ID: scenario.app},
        store=scenario.store,
        strand_factory=lambda: pytest.fail("a review never talks to Strand"),
        uploads=None,  # type: ignore[arg-type]
        in_flight=None,  # type: ignore[arg-type]
    )


def run_summary_of(scenario: Scenario) -> RunSummary:
    from workers.summary_record import run_summary

    return run_summary(scenario.fresh(), scenario.app)


def publish(scenario: Scenario, tmp_path: Path) -> ResultResponse:
    with adapter(scenario.sectra) as client:
        review.publish_review(
            context_for(scenario, tmp_path), scenario.fresh(), client, run_summary_of(scenario)
        )
    return scenario.gallery()


# -- the oracle ----------------------------------------------------------------------------------


def patch_boxes(scenario: Scenario, gallery: ResultResponse) -> list[tuple[int, int, int, int]]:
    """The hotspot box each patch shows: the one of the run's hotspots its position (centre) lies in."""
    content = gallery.data.result
    assert isinstance(content, PatchResultContent)
    boxes = [_box(row, col) for spots in SPOTS.values() for row, col in spots]
    found = []
    for patch in content.content.patches:
        x, y = patch.position.x * SLIDE_W, patch.position.y * SLIDE_W
        inside = {b for b in boxes if b[0] <= x <= b[0] + b[2] and b[1] <= y <= b[1] + b[3]}
        assert len(inside) == 1, (patch, inside)
        found.append(inside.pop())
    return found


def expected_figures(
    scenario: Scenario, boxes: set[tuple[int, int, int, int]]
) -> dict[str, tuple[float, float, float]]:
    """(percent, positive mm², tissue mm²) per marker over the cells outside every box."""
    keep = np.ones((ROWS, COLS), dtype=bool)
    for x, y, w, h in boxes:
        keep[y // CELL : (y + h) // CELL, x // CELL : (x + w) // CELL] = False
    out = {}
    for marker, grid in scenario.grids.items():
        positive, tissue = int(grid.positive[keep].sum()), int(grid.tissue[keep].sum())
        out[marker] = (100 * positive / tissue, positive * PIXEL_MM2, tissue * PIXEL_MM2)
    return out


def shown_figures(result: ResultResponse) -> dict[str, tuple[float, float, float]]:
    shown = {}
    for marker in MARKERS:
        match = AREA.match(str(result.displayProperties[f"{marker} positive tissue"]))
        assert match is not None, result.displayProperties
        percent, positive, tissue = (float(v) for v in match.groups())
        shown[marker] = (percent, positive, tissue)
    return shown


def assert_shows(result: ResultResponse, want: dict[str, tuple[float, float, float]]) -> None:
    for marker, (percent, positive, tissue) in shown_figures(result).items():
        assert percent == pytest.approx(want[marker][0], abs=0.05), marker
        assert positive == pytest.approx(want[marker][1], rel=5e-3), marker
        assert tissue == pytest.approx(want[marker][2], rel=5e-3), marker
        assert f"{marker} {want[marker][0]:.1f}%" in result.displayResult


def retag(gallery: ResultResponse, tags: dict[int, str]) -> ResultResponse:
    """The gallery as Sectra sends it back after the pathologist tagged patch i with tags[i]."""
    content = gallery.data.result
    assert isinstance(content, PatchResultContent)
    names = content.content.tags
    patches = [
        patch.model_copy(update={"tag": names.index(tags[i])}) if i in tags else patch
        for i, patch in enumerate(content.content.patches)
    ]
    inner = content.content.model_copy(update={"patches": patches})
    data = gallery.data.model_copy(update={"result": content.model_copy(update={"content": inner})})
    return gallery.model_copy(update={"data": data})


def reviews_metric(verdict: str) -> float:
    value = REGISTRY.get_sample_value("bridge_hotspot_reviews_total", {"app": APP_ID, "verdict": verdict})
    return value or 0.0


def apply(scenario: Scenario, sent: ResultResponse) -> ResultResponse:
    with adapter(scenario.sectra) as client:
        return review.apply_review(scenario.store, scenario.app, scenario.fresh(), client, sent)


def review_events(scenario: Scenario) -> list[dict[str, Any]]:
    return [e for e in scenario.store.events(scenario.record.run_id) if e["event"] == "hotspot_review"]


# -- publishing the gallery ----------------------------------------------------------------------


def test_the_gallery_is_posted_once_with_a_patch_per_hotspot(
    store: RunStore, sectra: VersionedSectra, tmp_path: Path
) -> None:
    scenario = make_run(store, sectra)
    gallery = publish(scenario, tmp_path)
    content = gallery.data.result
    assert isinstance(content, PatchResultContent)
    assert content.content.tags == ["Hotspot", "Agree", "Artefact"]
    assert sorted(patch_boxes(scenario, gallery)) == sorted(
        _box(r, c) for spots in SPOTS.values() for r, c in spots
    )
    record = scenario.fresh()
    assert (record.review_result_id, record.review_version_id) == (gallery.id, gallery.versionId)
    publish(scenario, tmp_path)  # a retried publish: the record knows its gallery
    assert sectra.creates == 2  # the final result (built here) and one gallery
    assert review.find_gallery_run(store, APP_ID, gallery.id) == record.run_id


def test_a_lost_create_answer_is_reconciled_not_posted_twice(
    store: RunStore, sectra: VersionedSectra, tmp_path: Path
) -> None:
    scenario = make_run(store, sectra)
    sectra.lose_create_answers = 1
    with pytest.raises(SectraError):
        publish(scenario, tmp_path)
    assert scenario.fresh().review_result_id is None
    gallery = publish(scenario, tmp_path)
    assert sectra.creates == 2, "the retried publish found the gallery the lost create had stored"
    galleries = [
        r
        for r in sectra.get_results(APP_ID, scenario.record.slide_id)
        if r.id != scenario.record.sectra_result_id
    ]
    assert [g.id for g in galleries] == [gallery.id]


@pytest.mark.parametrize(("overlay", "hotspots"), [("bands", True), ("both", False)])
def test_no_gallery_without_hotspots_to_review(
    store: RunStore, sectra: VersionedSectra, tmp_path: Path, overlay: Overlay, hotspots: bool
) -> None:
    scenario = make_run(store, sectra, overlay=overlay, hotspots=hotspots)
    with adapter(sectra) as client:
        review.publish_review(
            context_for(scenario, tmp_path), scenario.fresh(), client, run_summary_of(scenario)
        )
    assert scenario.fresh().review_result_id is None
    assert sectra.creates == 1


def test_a_gallery_sectra_refuses_for_good_leaves_the_run_without_one(
    store: RunStore, sectra: VersionedSectra, tmp_path: Path
) -> None:
    scenario = make_run(store, sectra)
    sectra.refuse_creates = 413
    with adapter(sectra) as client:
        review.publish_review(
            context_for(scenario, tmp_path), scenario.fresh(), client, run_summary_of(scenario)
        )
    assert scenario.fresh().review_result_id is None
    events = [e for e in store.events(scenario.record.run_id) if e["event"] == "review_not_published"]
    assert [e["data"] for e in events] == [{"status": 413}]


# -- applying a review ---------------------------------------------------------------------------


def test_artefact_patches_come_out_of_every_markers_figures(
    store: RunStore, sectra: VersionedSectra, tmp_path: Path
) -> None:
    scenario = make_run(store, sectra)
    gallery = publish(scenario, tmp_path)
    boxes = patch_boxes(scenario, gallery)
    shared = _box(10, 20)  # drawn for CD8 and for Ki67
    artefacts = {i for i, box in enumerate(boxes) if box in (shared, _box(2, 3))}
    assert len(artefacts) == 3  # the shared box's two patches and one CD8-only patch
    agree = next(i for i in range(len(boxes)) if i not in artefacts)
    kept_before, rejected_before = reviews_metric("kept"), reviews_metric("rejected")

    answer = apply(scenario, retag(gallery, {**{i: "Artefact" for i in artefacts}, agree: "Agree"}))

    want = expected_figures(scenario, {shared, _box(2, 3)})
    assert_shows(scenario.primitive(), want)
    assert (
        want["CD8"][0] < 100 * scenario.grids["CD8"].positive.sum() / scenario.grids["CD8"].tissue.sum() - 1
    )
    assert answer == scenario.gallery(), "modify is answered with what Sectra stores"
    content = answer.data.result
    assert isinstance(content, PatchResultContent)
    assert content.content.statuses["allowVerify"].value is True
    record = scenario.fresh()
    assert record.review_version_id == answer.versionId
    assert record.sectra_version_id == scenario.primitive().versionId
    assert record.review is not None
    assert (record.review["kept"], record.review["rejected"], record.review["untouched"]) == (1, 3, 2)
    assert sorted(
        tuple(b[k] for k in ("x", "y", "width", "height")) for b in record.review["excluded_boxes"]
    ) == sorted({shared, _box(2, 3)})
    for marker, (percent, _, _) in want.items():
        assert 100 * record.review["figures"][marker]["positive_fraction"] == pytest.approx(percent, abs=1e-9)
    (event,) = review_events(scenario)
    assert event["data"] == {"outcome": "applied", "kept": 1, "rejected": 3, "untouched": 2}
    assert reviews_metric("kept") - kept_before == 1
    assert reviews_metric("rejected") - rejected_before == 3


def test_the_same_review_twice_changes_nothing_and_counts_once(
    store: RunStore, sectra: VersionedSectra, tmp_path: Path
) -> None:
    scenario = make_run(store, sectra)
    gallery = publish(scenario, tmp_path)
    sent = retag(gallery, {0: "Artefact", 1: "Agree"})
    first = apply(scenario, sent)
    primitive = scenario.primitive()
    rejected = reviews_metric("rejected")
    again = apply(scenario, sent)  # Sectra retried the modify
    assert again == first == scenario.gallery()
    assert scenario.primitive() == primitive, "no second version of the primitive result"
    assert reviews_metric("rejected") == rejected
    assert len(review_events(scenario)) == 1
    # A changed mind on one patch counts that patch alone, and the figures follow the new tags.
    kept = reviews_metric("kept")
    apply(scenario, retag(first, {0: "Artefact", 1: "Artefact"}))
    assert (reviews_metric("kept"), reviews_metric("rejected")) == (kept, rejected + 1)
    boxes = patch_boxes(scenario, gallery)
    assert_shows(scenario.primitive(), expected_figures(scenario, {boxes[0], boxes[1]}))
    # Back to no artefact at all: the original figures, exactly (recomputed from the stored summary).
    apply(scenario, retag(first, {0: "Agree", 1: "Agree"}))
    assert_shows(scenario.primitive(), expected_figures(scenario, set()))


def test_everything_tagged_artefact_is_answered_in_plain_words(
    store: RunStore, sectra: VersionedSectra, tmp_path: Path
) -> None:
    scenario = make_run(store, sectra)
    gallery = publish(scenario, tmp_path)
    primitive = scenario.primitive()
    content = gallery.data.result
    assert isinstance(content, PatchResultContent)
    answer = apply(scenario, retag(gallery, {i: "Artefact" for i in range(len(content.content.patches))}))
    assert "Every hotspot was tagged Artefact" in answer.displayResult
    assert scenario.primitive() == primitive, "the figures are unchanged"
    assert review_events(scenario)[0]["data"]["outcome"] == "all_artefact"


def test_a_stale_primitive_version_is_reread_and_the_review_still_lands(
    store: RunStore, sectra: VersionedSectra, tmp_path: Path
) -> None:
    scenario = make_run(store, sectra)
    gallery = publish(scenario, tmp_path)
    # Someone (a pathologist's edit, another worker) moved the primitive result on meanwhile.
    record = scenario.fresh()
    assert record.sectra_result_id is not None
    with adapter(sectra) as client:
        current = client.get_result(APP_ID, record.sectra_result_id)
        from sectra_client.schemas import AdaptedResult

        client.update_results(APP_ID, current.id, AdaptedResult(**current.model_dump(exclude={"id"})))
    assert scenario.primitive().versionId != record.sectra_version_id
    boxes = patch_boxes(scenario, gallery)
    apply(scenario, retag(gallery, {0: "Artefact"}))
    assert_shows(scenario.primitive(), expected_figures(scenario, {boxes[0]}))


def test_a_failure_between_the_two_results_converges_on_the_next_modify(
    store: RunStore, sectra: VersionedSectra, tmp_path: Path
) -> None:
    scenario = make_run(store, sectra)
    gallery = publish(scenario, tmp_path)
    sent = retag(gallery, {0: "Artefact", 2: "Agree"})
    rejected = reviews_metric("rejected")
    sectra.fail_puts_of = {gallery.id}
    with pytest.raises(SectraError):
        apply(scenario, sent)
    boxes = patch_boxes(scenario, gallery)
    want = expected_figures(scenario, {boxes[0]})
    assert_shows(scenario.primitive(), want)  # the primitive result was updated first
    assert scenario.fresh().review is None and review_events(scenario) == []
    assert reviews_metric("rejected") == rejected, "nothing counted before the review is complete"
    sectra.fail_puts_of = set()
    answer = apply(scenario, sent)  # Sectra's retried modify
    assert_shows(scenario.primitive(), want)
    assert answer == scenario.gallery()
    assert reviews_metric("rejected") == rejected + 1
    assert len(review_events(scenario)) == 1


def test_a_malformed_review_is_refused_and_changes_nothing(
    store: RunStore, sectra: VersionedSectra, tmp_path: Path
) -> None:
    scenario = make_run(store, sectra)
    gallery = publish(scenario, tmp_path)
    primitive = scenario.primitive()
    content = gallery.data.result
    assert isinstance(content, PatchResultContent)
    bad = content.content.patches[0].model_copy(update={"tag": 7})
    inner = content.content.model_copy(update={"patches": [bad, *content.content.patches[1:]]})
    data = gallery.data.model_copy(update={"result": content.model_copy(update={"content": inner})})
    with pytest.raises(review.MalformedReview, match="tag 7"):
        apply(scenario, gallery.model_copy(update={"data": data}))
    with pytest.raises(review.MalformedReview, match="not this run's hotspot gallery"):
        apply(scenario, primitive)
    assert scenario.primitive() == primitive and scenario.gallery() == gallery
    assert scenario.fresh().review is None


def test_without_its_grids_a_run_refuses_the_review(
    store: RunStore, sectra: VersionedSectra, tmp_path: Path, redis_client: redis.Redis
) -> None:
    scenario = make_run(store, sectra)
    gallery = publish(scenario, tmp_path)
    primitive = scenario.primitive()
    redis_client.delete(f"{store.prefix}:run:{scenario.record.run_id}:blob:{GRIDS_BLOB}")
    with pytest.raises(review.ReviewUnavailable, match="grids"):
        apply(scenario, retag(gallery, {0: "Artefact"}))
    assert scenario.primitive() == primitive and scenario.gallery() == gallery


# -- through the webhook (`service.webhook.modify_sync`), no worker ------------------------------


@pytest.fixture
def webhook(
    store: RunStore, sectra: VersionedSectra, tmp_path: Path
) -> Iterator[Callable[[Scenario], httpx.Client]]:
    servers: list[ServerThread] = []
    clients: list[httpx.Client] = []

    def start(scenario: Scenario) -> httpx.Client:
        settings = Settings(
            SECTRA_ALLOWED_CALLBACK_URLS=sectra.url,
            SECTRA_ALLOW_HTTP=True,
            BRIDGE_WORK_DIR=tmp_path / "work",
            REDIS_URL="redis://127.0.0.1:1/0",  # never used: the store is passed in
        )
        app = create_app(settings, {APP_ID: scenario.app}, store=store, enqueue=lambda run_id: None)
        servers.append(ServerThread(app).__enter__())
        clients.append(httpx.Client(base_url=servers[-1].url, timeout=30))
        return clients[-1]

    yield start
    for client in clients:
        client.close()
    for server in servers:
        server.__exit__()


def modify_body(scenario: Scenario, sent: ResultResponse, token: str | None = None) -> dict[str, Any]:
    record = scenario.fresh()
    return {
        "action": "modify",
        "applicationId": APP_ID,
        "slideId": record.slide_id,
        "callbackInfo": {"url": scenario.sectra.url, "token": TOKEN},
        "cancellationToken": token or record.cancellation_token,
        "context": {},
        "input": sent.model_dump(mode="json"),
    }


def test_the_webhook_answers_a_gallery_modify_with_the_stored_gallery(
    store: RunStore,
    sectra: VersionedSectra,
    tmp_path: Path,
    webhook: Callable[[Scenario], httpx.Client],
) -> None:
    scenario = make_run(store, sectra)
    gallery = publish(scenario, tmp_path)
    client = webhook(scenario)
    sent = retag(gallery, {0: "Artefact", 1: "Agree"})
    # Sectra's modify of the gallery need not carry the create's token: the gallery id finds the run.
    answer = client.post(f"/sectra/{APP_ID}", json=modify_body(scenario, sent, token="another-invocation"))
    assert answer.status_code == 200, answer.text
    assert answer.json() == scenario.gallery().model_dump(mode="json")
    assert "X-Sectra-ApiVersion" in answer.headers
    assert_shows(scenario.primitive(), expected_figures(scenario, {patch_boxes(scenario, gallery)[0]}))
    # A modify of the primitive result is still only recorded, as before.
    primitive = scenario.primitive()
    noted = client.post(f"/sectra/{APP_ID}", json=modify_body(scenario, primitive))
    assert noted.status_code == 200 and noted.json() == {"note": "modification recorded"}
    assert scenario.primitive() == primitive


def test_the_webhook_refuses_a_malformed_review_with_422_and_a_sectra_outage_with_503(
    store: RunStore,
    sectra: VersionedSectra,
    tmp_path: Path,
    webhook: Callable[[Scenario], httpx.Client],
) -> None:
    scenario = make_run(store, sectra)
    gallery = publish(scenario, tmp_path)
    client = webhook(scenario)
    body = modify_body(scenario, retag(gallery, {0: "Agree"}))
    body["input"]["data"]["context"]["patches"] = "gone"
    refused = client.post(f"/sectra/{APP_ID}", json=body)
    assert refused.status_code == 422, refused.text
    assert refused.json()["error"] == "malformed_review"
    assert "context" in refused.json()["message"]
    assert scenario.gallery() == gallery and scenario.fresh().review is None
    sectra.fail_puts_of = {int(scenario.fresh().sectra_result_id or 0)}
    down = client.post(f"/sectra/{APP_ID}", json=modify_body(scenario, retag(gallery, {0: "Artefact"})))
    assert down.status_code == 503, down.text
    assert down.headers["Retry-After"] and down.json()["error"] == "sectra_unavailable"
    assert scenario.gallery() == gallery and scenario.fresh().review is None


def test_a_review_already_being_applied_is_refused_as_busy(
    store: RunStore, sectra: VersionedSectra, tmp_path: Path, redis_client: redis.Redis
) -> None:
    scenario = make_run(store, sectra)
    gallery = publish(scenario, tmp_path)
    primitive = scenario.primitive()
    lease = f"{store.prefix}:review-lease:{scenario.record.run_id}"
    redis_client.set(lease, "another-webhook-process", px=60_000)
    with pytest.raises(review.ReviewBusy):
        apply(scenario, retag(gallery, {0: "Artefact"}))
    assert scenario.primitive() == primitive and scenario.fresh().review is None
    redis_client.delete(lease)
    apply(scenario, retag(gallery, {0: "Artefact"}))
    assert scenario.primitive() != primitive


def test_artefacts_covering_all_of_a_markers_tissue_leave_the_figures_as_they_were(
    store: RunStore, sectra: VersionedSectra, tmp_path: Path
) -> None:
    scenario = make_run(store, sectra)
    cd8 = scenario.grids["CD8"]
    inside = np.zeros((ROWS, COLS), dtype=bool)
    for row, col in SPOTS["CD8"][:2]:
        inside[row : row + WINDOW, col : col + WINDOW] = True
    scenario.grids["CD8"] = dataclasses.replace(
        cd8,
        positive=np.where(inside, cd8.positive, 0),
        tissue=np.where(inside, cd8.tissue, 0),
        value_sum=np.where(inside, cd8.value_sum, 0.0),
    )
    store.put_blob(scenario.record.run_id, GRIDS_BLOB, grids_to_bytes(scenario.grids))
    gallery = publish(scenario, tmp_path)
    primitive = scenario.primitive()
    boxes = patch_boxes(scenario, gallery)
    covering = {_box(row, col) for row, col in SPOTS["CD8"][:2]}
    tags = {i: "Artefact" for i, box in enumerate(boxes) if box in covering}
    assert len(tags) < len(boxes)
    answer = apply(scenario, retag(gallery, tags))
    assert "nothing left to recompute" in answer.displayResult
    assert scenario.primitive() == primitive
    assert review_events(scenario)[0]["data"]["outcome"] == "nothing_left"
