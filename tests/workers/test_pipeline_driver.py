"""The pipeline driver with real parts: Redis, MockSectraServer, the fake Strand server, a real work dir.

Steps are driven by calling `advance` directly (what each Celery step does),
so a test can look at every pass; the end-to-end tests run the same code under
a real Celery worker.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import redis
from prometheus_client import REGISTRY
from pydantic import SecretStr
from sectra_client.mock_server import MockSectraServer

from sectra_adapter import Backoff
from strand_client import Client as StrandClient
from strand_client.testing import FakeStrandServer
from tests.e2e.conftest import LABEL_MARKER, PHI, slide_metadata
from tests.fixtures.slides import make_svs
from workers import messages
from workers.apps import load_apps
from workers.context import PipelineContext
from workers.dispatch import resume_point
from workers.janitor import sweep
from workers.metering import InFlight
from workers.pipeline import FINAL, advance
from workers.runstore import RunRecord, RunStatus, RunStore
from workers.settings import Settings
from workers.upload_index import UploadIndex

APP = "strand-default"


class Recording(httpx.BaseTransport):
    """The real transport, with a log of what left this process and an optional hook per request."""

    def __init__(self, inner: httpx.BaseTransport | None = None) -> None:
        self.inner = inner or httpx.HTTPTransport()
        self.seen: list[tuple[str, str]] = []
        self.hook: Callable[[httpx.Request], httpx.Response | None] | None = None

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.seen.append((request.method, request.url.path))
        if self.hook is not None and (answer := self.hook(request)) is not None:
            return answer
        return self.inner.handle_request(request)

    def close(self) -> None:
        self.inner.close()


class _BrokenBody(httpx.SyncByteStream):
    """A body that breaks off after its first piece, as a dropped connection does."""

    def __init__(self, inner: httpx.SyncByteStream) -> None:
        self._inner = inner

    def __iter__(self) -> Iterator[bytes]:
        for piece in self._inner:
            yield piece[:1024]
            raise httpx.RemoteProtocolError("peer closed connection without sending complete message body")

    def close(self) -> None:
        self._inner.close()


@dataclass
class Harness:
    ctx: PipelineContext
    sectra: MockSectraServer
    strand: FakeStrandServer
    sectra_wire: Recording
    strand_wire: Recording
    tmp: Path
    # Each step: the status it ran in, and the Strand requests logged before and after it.
    passes: list[tuple[RunStatus, int, int]] = field(default_factory=list)

    def add_slide(self, slide_id: str) -> None:
        path = make_svs(
            self.tmp / "slides" / f"{slide_id}.svs",
            width=1024,
            height=768,
            phi=PHI,
            label_marker=LABEL_MARKER,
        )
        self.sectra.add_slide(slide_metadata(slide_id, 1024, 768))
        self.sectra.add_slide_files(slide_id, path)

    def start(self, slide_id: str) -> str:
        record, created = self.ctx.store.create_or_get(
            app_id=APP,
            slide_id=slide_id,
            cancellation_token=uuid.uuid4().hex,
            callback_url=self.sectra.url,
            callback_token=self.sectra.token,
            source="create",
        )
        assert created
        return record.run_id

    def step(self, run_id: str) -> float | None:
        status = self.ctx.store.require(run_id).status
        before = len(self.strand_wire.seen)
        delay = advance(self.ctx, run_id)
        self.passes.append((status, before, len(self.strand_wire.seen)))
        return delay

    def drive(self, run_id: str, timeout: float = 60.0) -> RunRecord:
        """Run steps until the run needs none; a waiting run is looked at every 50 ms at most."""
        deadline = time.monotonic() + timeout
        while (delay := self.step(run_id)) is not None:
            assert time.monotonic() < deadline, f"run still {self.ctx.store.require(run_id).status}"
            if self.ctx.store.require(run_id).status == RunStatus.waiting:
                time.sleep(min(delay, 0.05))  # pacing the fake's clock, not synchronisation
        record = self.ctx.store.get(run_id)
        assert record is None or record.status in FINAL
        return record  # type: ignore[return-value]

    def result_text(self, slide_id: str) -> str:
        # The run's one primitive result (a completed run also posts a hotspot gallery beside it).
        results = self.sectra.get_results(APP, slide_id)
        (result,) = [r for r in results if r.data.result.type.value == "primitive"]
        return result.displayResult


def _in_flight() -> float:
    return REGISTRY.get_sample_value("bridge_runs_in_flight") or 0.0


@pytest.fixture
def harness(redis_client: redis.Redis, key_prefix: str, tmp_path: Path) -> Iterator[Harness]:
    from sectra_client import mock_server

    mock_server.print = lambda *a, **k: None
    sectra = MockSectraServer()
    sectra.run(port=0, host="127.0.0.1")
    strand = FakeStrandServer(job_duration=0.3, progress_step=0.5, heartbeat_interval=1.0)
    strand.start()
    settings = Settings(
        STRAND_API_KEY=SecretStr(strand.api_key),
        STRAND_BASE_URL=strand.url,
        SECTRA_ALLOW_HTTP=True,
        BRIDGE_WORK_DIR=tmp_path / "work",
        BRIDGE_PROGRESS_INTERVAL_SECONDS=0,
    )
    sectra_wire, strand_wire = Recording(), Recording()
    ctx = PipelineContext(
        settings=settings,
        apps=load_apps(None),
        store=RunStore(redis_client, prefix=key_prefix, retention_seconds=3600),
        strand_factory=lambda: StrandClient(
            api_key=strand.api_key, base_url=strand.url, max_retries=1, transport=strand_wire
        ),
        uploads=UploadIndex(redis_client, prefix=key_prefix),
        in_flight=InFlight(redis_client, prefix=key_prefix),
        sectra_transport=sectra_wire,
        sectra_backoff=Backoff(max_retries=1, base_delay=0.001, max_delay=0.002),
        progress_interval=0.0,
    )
    try:
        yield Harness(ctx, sectra, strand, sectra_wire, strand_wire, tmp_path)
    finally:
        ctx.close()
        strand.close()
        sectra.stop()


def test_a_completed_run_leaves_no_file_and_reads_each_job_once_per_pass(harness: Harness) -> None:
    harness.add_slide("s-ok")
    run_id = harness.start("s-ok")
    record = harness.drive(run_id)
    assert record.status == RunStatus.completed, record.error
    assert not harness.ctx.staging.run_dir(run_id).exists()
    job_path = f"/api/v1/jobs/{record.job_id}"
    for status, before, after in harness.passes:
        if status in (RunStatus.waiting, RunStatus.summarising):
            gets = [seen for seen in harness.strand_wire.seen[before:after] if seen == ("GET", job_path)]
            assert len(gets) == 1, f"a {status.value} pass read the job {len(gets)} times"
    assert "CD8 " in harness.result_text("s-ok")


def test_a_permanently_failing_sectra_download_ends_with_words_naming_sectra(harness: Harness) -> None:
    harness.add_slide("s-cut")

    def cut_the_download(request: httpx.Request) -> httpx.Response | None:
        if not request.url.path.endswith("/files"):
            return None
        answer = harness.sectra_wire.inner.handle_request(request)
        assert isinstance(answer.stream, httpx.SyncByteStream)
        return httpx.Response(answer.status_code, headers=answer.headers, stream=_BrokenBody(answer.stream))

    harness.sectra_wire.hook = cut_the_download
    run_id = harness.start("s-cut")
    record = harness.drive(run_id)

    assert record.status == RunStatus.failed
    assert record.attempts == harness.ctx.max_attempts, "the step retried what the client gave up on"
    downloads = [seen for seen in harness.sectra_wire.seen if seen[1].endswith("/files")]
    assert len(downloads) == harness.ctx.max_attempts * 2, "each step attempt came after the client's retry"
    text = harness.result_text("s-cut")
    assert text.startswith("The slide could not be fetched from Sectra"), text
    assert "Strand" not in text
    assert harness.strand.stats.upload_sessions_opened == 0


def test_an_unconfirmed_submission_ends_with_the_unconfirmed_submission_message(harness: Harness) -> None:
    harness.add_slide("s-unsure")
    harness.strand.reject_next_submits(50, status=503, retry_after=None)
    record = harness.drive(harness.start("s-unsure"))
    assert record.status == RunStatus.failed
    assert record.message == messages.unconfirmed_submission()
    assert harness.result_text("s-unsure") == messages.unconfirmed_submission()
    assert harness.strand.stats.submits_accepted == 0


def test_a_run_deleted_mid_stage_stops_quietly_and_frees_its_files(harness: Harness) -> None:
    harness.add_slide("s-gone")
    run_id = harness.start("s-gone")
    before = _in_flight()

    def delete_during_the_download(request: httpx.Request) -> httpx.Response | None:
        if request.url.path.endswith("/files"):
            harness.ctx.store.delete(run_id)  # Sectra's `delete` lands while the slide streams in
        return None

    harness.sectra_wire.hook = delete_during_the_download
    assert harness.drive(run_id) is None  # no exception escapes the step
    assert harness.ctx.store.get(run_id) is None
    assert not harness.ctx.staging.run_dir(run_id).exists(), "the worker removed what it had staged"
    assert _in_flight() == before


def test_runs_in_flight_moves_once_each_way(harness: Harness) -> None:
    harness.add_slide("s-count")
    before = _in_flight()

    cancelled = harness.start("s-count")
    harness.ctx.store.request_cancel(cancelled, "cancelled in Sectra")
    assert harness.drive(cancelled).status == RunStatus.cancelled
    assert _in_flight() == before, "a run cancelled before it started is not counted down"

    harness.strand.balance = 0
    run_id = harness.start("s-count")
    assert harness.drive(run_id).status == RunStatus.failed
    assert _in_flight() == before
    harness.strand.balance = 10_000
    record = harness.ctx.store.require(run_id)
    harness.ctx.store.transition(run_id, resume_point(record), retry=True, attempts=0, error=None)
    assert harness.drive(run_id).status == RunStatus.completed
    assert _in_flight() == before, "a retried run is counted once, and counted down once"


def test_a_retried_run_whose_files_expired_fetches_the_slide_again(harness: Harness) -> None:
    harness.add_slide("s-expired")
    attempts = harness.ctx.max_attempts
    harness.strand.fail_next_puts(attempts * 2, status=503)  # Strand's storage is away for the whole run
    run_id = harness.start("s-expired")
    failed = harness.drive(run_id)
    assert failed.status == RunStatus.failed
    assert failed.message.startswith(f"Strand could not be reached after {attempts} attempts")
    staging = harness.ctx.staging
    assert staging.originals(run_id, failed.staged_files) is None  # de-identification moved them
    assert staging.outgoing_file(run_id, failed.outgoing_files) is not None, "kept for runs retry"

    # The retention passed: the janitor removes the failed run's files, the de-identified copy too.
    assert sweep(harness.ctx.store, staging, retention_seconds=0, now=time.time() + 1).removed_failed == 1
    assert not staging.run_dir(run_id).exists()
    downloads_before = len([s for s in harness.sectra_wire.seen if s[1].endswith("/files")])
    harness.ctx.store.transition(run_id, resume_point(failed), retry=True, attempts=0, error=None)
    record = harness.drive(run_id)

    assert record.status == RunStatus.completed, record.error
    downloads = len([s for s in harness.sectra_wire.seen if s[1].endswith("/files")])
    assert downloads == downloads_before + 1, "fetched from Sectra again"
    events = [e["event"] for e in harness.ctx.store.events(run_id)]
    assert "prepare_again" in events and "fetch_again" in events


def test_words_a_run_keeps_and_shows_are_masked_as_a_log_line_is(harness: Harness) -> None:
    # A credential in Strand's words reaches the pathologist through the run's message; one in an
    # exception's text reaches the admin page through the run's error. Neither keeps it.
    leaked, bearer = "sk-strand-" + uuid.uuid4().hex, "eyJ" + uuid.uuid4().hex
    harness.add_slide("s-said")
    harness.strand.fail_next_job(f"worker rejected Authorization: Bearer {bearer}")
    said = harness.drive(harness.start("s-said"))
    assert said.status == RunStatus.failed
    assert said.message == "Strand could not analyse this slide: worker rejected Authorization: Bearer ***"
    assert said.error == said.message
    assert bearer not in harness.result_text("s-said")

    harness.add_slide("s-raised")

    def raise_with_the_key(request: httpx.Request) -> httpx.Response | None:
        if request.url.path.endswith("/estimate"):
            raise RuntimeError(f"client misconfigured: api_key={leaked} refused")
        return None

    harness.strand_wire.hook = raise_with_the_key
    run_id = harness.start("s-raised")
    while harness.step(run_id) is not None and harness.ctx.store.require(run_id).attempts == 0:
        pass
    raised = harness.ctx.store.require(run_id)
    assert raised.attempts == 1, "the step failed once, at the estimate"
    assert raised.error == "RuntimeError: client misconfigured: api_key=*** refused"
