"""The results-reuse index against a real Redis, and the one state-machine shortcut it needs.

The oracle is the rule as the issue states it, written out here: an entry serves a run when its
markers include the run's and its model is the run's; it lives `BRIDGE_RESULTS_REUSE_DAYS` from
its job's completion; 0 days turns reuse off. Whether Strand still serves the job is asked of the
fake Strand server through the real client.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from pydantic import SecretStr

from strand_client import Client as StrandClient
from strand_client.testing import FakeStrandServer
from tests.fixtures.slides import make_svs
from workers.apps import AppConfig
from workers.context import PipelineContext
from workers.metering import InFlight
from workers.reuse import ResultsIndex, ReuseEntry, find_reusable, remember, slide_of, wants_reuse
from workers.runstore import IllegalTransition, RunRecord, RunStatus, RunStore
from workers.settings import Settings
from workers.states import WORKING_ORDER, allowed_sources
from workers.upload_index import UploadIndex

DAY = 86400.0
NOW = 1_800_000_000.0  # a fixed "now" for the index (no clock in these assertions)


def entry(
    job_id: str = "job-1",
    *,
    markers: tuple[str, ...] = ("CD8", "PanCK", "Ki67"),
    model: str | None = None,
    completed_at: float = NOW - DAY,
) -> ReuseEntry:
    return ReuseEntry(
        job_id=job_id,
        completed_at=completed_at,
        markers=markers,
        model=model,
        source_sha256="a" * 64,
        slide_sha256="b" * 64,
    )


@pytest.fixture
def index(redis_client: redis.Redis, key_prefix: str) -> Iterator[ResultsIndex]:
    yield ResultsIndex(redis_client, prefix=key_prefix, retention_days=7)
    for key in redis_client.scan_iter(f"{key_prefix}:*"):
        redis_client.delete(key)


def test_an_entry_serves_a_subset_of_its_markers_with_the_same_model(index: ResultsIndex) -> None:
    assert index.record("slide-1", entry(), now=NOW)
    assert [e.job_id for e in index.candidates("slide-1", ["Ki67"], None, now=NOW)] == ["job-1"]
    assert [e.job_id for e in index.candidates("slide-1", ["CD8", "Ki67"], None, now=NOW)] == ["job-1"]
    # A marker the job did not deliver, another model, another slide: nothing to reuse.
    assert index.candidates("slide-1", ["CD8", "CD3"], None, now=NOW) == []
    assert index.candidates("slide-1", ["CD8"], "v0.7", now=NOW) == []
    assert index.candidates("slide-2", ["CD8"], None, now=NOW) == []


def test_model_none_means_the_platform_default_and_never_matches_a_named_model(
    index: ResultsIndex,
) -> None:
    index.record("slide-1", entry("job-named", model="v0.7"), now=NOW)
    assert index.candidates("slide-1", ["CD8"], None, now=NOW) == []
    assert [e.job_id for e in index.candidates("slide-1", ["CD8"], "v0.7", now=NOW)] == ["job-named"]


def test_the_newest_job_comes_first_and_the_entry_round_trips(index: ResultsIndex) -> None:
    older = entry("job-old", markers=("CD8", "Ki67", "PanCK", "CD3"), completed_at=NOW - 3 * DAY)
    newer = entry("job-new", completed_at=NOW - DAY)
    index.record("slide-1", older, now=NOW)
    index.record("slide-1", newer, now=NOW)
    found = index.candidates("slide-1", ["CD8"], None, now=NOW)
    assert [e.job_id for e in found] == ["job-new", "job-old"]
    assert found[1] == older  # every recorded field comes back as written


def test_the_same_markers_and_model_keep_one_entry_the_latest(index: ResultsIndex) -> None:
    index.record("slide-1", entry("job-1", completed_at=NOW - 2 * DAY), now=NOW)
    index.record("slide-1", entry("job-2", markers=("Ki67", "CD8", "PanCK")), now=NOW)  # same set
    assert [e.job_id for e in index.candidates("slide-1", ["CD8"], None, now=NOW)] == ["job-2"]


def test_entries_live_the_retention_from_their_job_completion(
    index: ResultsIndex, redis_client: redis.Redis, key_prefix: str
) -> None:
    completed = time.time() - 2 * DAY
    assert index.record("slide-1", entry(completed_at=completed))
    keys = [k.decode() for k in redis_client.scan_iter(f"{key_prefix}:reuse:*")]
    assert len(keys) == 2  # the slide's set and the entry
    for key in keys:  # both expire 7 days after the job completed, not 7 days after recording
        expires_at = redis_client.pexpiretime(key) / 1000
        assert expires_at == pytest.approx(completed + 7 * DAY, abs=1.0)
    # Read at a moment past the retention, the entry is gone (and pruned from the slide's set).
    assert index.candidates("slide-1", ["CD8"], None, now=completed + 7 * DAY + 1) == []
    assert redis_client.zcard(f"{key_prefix}:reuse:{keys[0].split(':')[2]}") == 0
    # Just inside it, still there.
    index.record("slide-1", entry(completed_at=completed))
    assert index.candidates("slide-1", ["CD8"], None, now=completed + 7 * DAY - 1) != []


def test_a_job_older_than_the_retention_is_not_recorded(
    index: ResultsIndex, redis_client: redis.Redis, key_prefix: str
) -> None:
    assert not index.record("slide-1", entry(completed_at=NOW - 8 * DAY), now=NOW)
    assert list(redis_client.scan_iter(f"{key_prefix}:reuse:*")) == []


def test_zero_days_disables_reuse(index: ResultsIndex, redis_client: redis.Redis, key_prefix: str) -> None:
    index.record("slide-1", entry(), now=NOW)
    off = ResultsIndex(redis_client, prefix=key_prefix, retention_days=0)
    assert not off.enabled
    assert not off.record("slide-1", entry("job-2"), now=NOW)
    assert off.candidates("slide-1", ["CD8"], None, now=NOW) == []  # even with an entry stored


def test_keys_carry_no_slide_id(index: ResultsIndex, redis_client: redis.Redis, key_prefix: str) -> None:
    index.record("ACC20260042-slide", entry(), now=NOW)
    keys = [k.decode() for k in redis_client.scan_iter(f"{key_prefix}:*")]
    assert keys and not any("ACC" in key for key in keys)


def test_forget_drops_one_entry(index: ResultsIndex) -> None:
    kept, dropped = entry("job-keep", markers=("CD8",)), entry("job-drop")
    index.record("slide-1", kept, now=NOW)
    index.record("slide-1", dropped, now=NOW)
    index.forget("slide-1", dropped)
    assert [e.job_id for e in index.candidates("slide-1", ["CD8"], None, now=NOW)] == ["job-keep"]


# -- the state machine's one shortcut -----------------------------------------------------------


def test_only_downloading_may_skip_to_summarising() -> None:
    assert RunStatus.downloading in allowed_sources(RunStatus.summarising)
    assert allowed_sources(RunStatus.summarising) == {
        RunStatus.waiting,
        RunStatus.summarising,
        RunStatus.downloading,
    }
    # Every other target keeps only its predecessor (and itself): nothing else skips.
    for index, target in enumerate(WORKING_ORDER[1:], start=1):
        if target is not RunStatus.summarising:
            assert allowed_sources(target) == {target, WORKING_ORDER[index - 1]}


def test_the_store_allows_the_shortcut_and_refuses_other_skips(
    redis_client: redis.Redis, key_prefix: str
) -> None:
    store = RunStore(redis_client, prefix=key_prefix, retention_seconds=3600)
    try:
        runs = []
        for token in ("a", "b"):
            record, _ = store.create_or_get(
                app_id="app",
                slide_id="s",
                cancellation_token=token,
                callback_url="https://sectra.example/ia",
                callback_token="t",
                source="create",
            )
            store.transition(record.run_id, RunStatus.downloading)
            runs.append(record.run_id)
        assert store.transition(runs[0], RunStatus.summarising).status is RunStatus.summarising
        for target in (RunStatus.uploading, RunStatus.submitting, RunStatus.waiting, RunStatus.publishing):
            with pytest.raises(IllegalTransition):
                store.transition(runs[1], target)
    finally:
        for key in redis_client.scan_iter(f"{key_prefix}:*"):
            redis_client.delete(key)


# -- with Strand: only a job Strand still serves is reused ---------------------------------------


@pytest.fixture
def strand_ctx(redis_client: redis.Redis, key_prefix: str, tmp_path: Path) -> Iterator[PipelineContext]:
    strand = FakeStrandServer(job_duration=60.0)  # jobs finish when the test says (`advance`)
    strand.start()
    ctx = PipelineContext(
        settings=Settings(
            STRAND_API_KEY=SecretStr(strand.api_key),
            STRAND_BASE_URL=strand.url,
            BRIDGE_WORK_DIR=tmp_path,
            BRIDGE_RESULTS_REUSE_DAYS=7,
        ),
        apps={},
        store=RunStore(redis_client, prefix=key_prefix, retention_seconds=3600),
        strand_factory=lambda: StrandClient(api_key=strand.api_key, base_url=strand.url, max_retries=1),
        uploads=UploadIndex(redis_client, prefix=key_prefix),
        in_flight=InFlight(redis_client, prefix=key_prefix),
    )
    ctx.strand_server = strand  # type: ignore[attr-defined]
    try:
        yield ctx
    finally:
        ctx.close()
        strand.close()
        for key in redis_client.scan_iter(f"{key_prefix}:*"):
            redis_client.delete(key)


def _finished_job(strand: FakeStrandServer, markers: list[str], folder: Path) -> str:
    slide = make_svs(folder / "slide.svs", width=512, height=384, phi={}, label_marker=b"LBL")
    with StrandClient(api_key=strand.api_key, base_url=strand.url, max_retries=1) as client:
        upload = client.uploads.upload_file(slide, filename="slide.svs")
        job = client.predict.submit(upload.id, markers)
    strand.advance(job.id, "completed", 1.0)
    return job.id


def _record(ctx: PipelineContext, token: str, *, input_type: str = "wholeSlide") -> RunRecord:
    record, _ = ctx.store.create_or_get(
        app_id="app",
        slide_id="slide-1",
        cancellation_token=token,
        callback_url="https://sectra.example/ia",
        callback_token="t",
        source="create",
    )
    return ctx.store.update(record.run_id, input_type=input_type)


def test_a_summarised_job_is_offered_and_found_while_strand_serves_it(
    strand_ctx: PipelineContext, tmp_path: Path
) -> None:
    ctx = strand_ctx
    strand: FakeStrandServer = ctx.strand_server  # type: ignore[attr-defined]
    app = AppConfig(id="app", display_name="Panel", markers=["CD8", "Ki67"])
    job_id = _finished_job(strand, app.markers, tmp_path)
    first = ctx.store.update(_record(ctx, "first").run_id, job_id=job_id, source_sha256="c" * 64)
    status = ctx.strand().jobs.get(job_id).last_status
    assert status is not None and status.status == "completed"
    assert remember(ctx, first, app, status, ["CD8", "Ki67"])

    later = _record(ctx, "later")
    found = find_reusable(ctx, later, app)
    assert found is not None and found.job_id == job_id and found.source_sha256 == "c" * 64
    assert found.completed_at == pytest.approx(status.completed_at.timestamp())  # type: ignore[union-attr]

    # A run that itself read earlier results offers nothing (its job is not its own).
    reused = ctx.store.update(later.run_id, job_id=job_id, reused_job={"job_id": job_id, "completed_at": 1.0})
    assert not remember(ctx, reused, app, status, ["CD8", "Ki67"])


def test_the_same_slide_id_on_another_sectra_is_another_slide(
    strand_ctx: PipelineContext, tmp_path: Path
) -> None:
    ctx = strand_ctx
    strand: FakeStrandServer = ctx.strand_server  # type: ignore[attr-defined]
    app = AppConfig(id="app", display_name="Panel", markers=["CD8"])
    job_id = _finished_job(strand, app.markers, tmp_path)
    first = ctx.store.update(_record(ctx, "pacs-a").run_id, job_id=job_id)
    status = ctx.strand().jobs.get(job_id).last_status
    assert status is not None and remember(ctx, first, app, status, ["CD8"])
    other, _ = ctx.store.create_or_get(
        app_id="app",
        slide_id="slide-1",  # the same id, named by a second PACS behind the same bridge
        cancellation_token="pacs-b",
        callback_url="https://other-pacs.example/ia",
        callback_token="t",
        source="create",
    )
    assert find_reusable(ctx, other, app) is None
    same_host = ctx.store.update(
        _record(ctx, "pacs-a-again").run_id, callback_url="HTTPS://Sectra.Example/ia/"
    )
    found = find_reusable(ctx, same_host, app)
    assert found is not None and found.job_id == job_id


def test_a_job_strand_no_longer_knows_is_dropped_and_the_run_goes_on_normally(
    strand_ctx: PipelineContext,
) -> None:
    ctx = strand_ctx
    app = AppConfig(id="app", display_name="Panel", markers=["CD8"])
    index = ResultsIndex(ctx.store.client, prefix=ctx.store.prefix, retention_days=7)
    record = _record(ctx, "r1")
    index.record(slide_of(record), entry("job-that-strand-deleted", completed_at=time.time() - DAY))
    assert find_reusable(ctx, record, app) is None
    assert index.candidates(slide_of(record), ["CD8"], None) == []  # forgotten, not asked again
    events = [e["event"] for e in ctx.store.events(record.run_id)]
    assert "reuse_entry_dropped" in events


def test_who_looks_for_earlier_results() -> None:
    whole = AppConfig(id="w", display_name="W", markers=["CD8"])
    reusing = AppConfig(id="r", display_name="R", markers=["CD8"], reuse_results=True)
    region = AppConfig(id="p", display_name="P", markers=["CD8"], input="multiArea")
    base = {
        "run_id": "run-" + "0" * 24,
        "app_id": "w",
        "slide_id": "s",
        "cancellation_token": "t",
        "source": "create",
        "callback_url": "https://x",
        "callback_token": "t",
        "created_at": 0.0,
        "updated_at": 0.0,
    }
    assert not wants_reuse(whole, RunRecord(**base))
    assert wants_reuse(reusing, RunRecord(**base))
    assert wants_reuse(region, RunRecord(**{**base, "input_type": "multiArea"}))
