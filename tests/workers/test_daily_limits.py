"""Daily Strand credit limits, per app and for the bridge, with real Redis, MockSectraServer and
the fake Strand server; the oracle for "nothing was submitted" is the fake's own counters."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from pydantic import SecretStr
from sectra_client.mock_server import MockSectraServer
from sectra_client.schemas.quality_control import QualityControlData, QualityControlStatus

from sectra_adapter import Backoff
from strand_client import Client as StrandClient
from strand_client.testing import FakeStrandServer
from tests.e2e.conftest import LABEL_MARKER, PHI, slide_metadata
from tests.fixtures.slides import make_svs
from workers import messages
from workers.apps import AppConfig
from workers.context import PipelineContext
from workers.metering import InFlight
from workers.pipeline import FINAL, advance
from workers.quotas import DailyCredits, DailyLimitExceeded
from workers.runstore import RunRecord, RunSource, RunStatus, RunStore
from workers.settings import Settings
from workers.upload_index import UploadIndex

# A 1024 x 768 slide is one 1024-pixel patch; with 3 markers at 50 patches per credit the fake
# Strand estimates it at max(1, ceil(1 * 3 / 50)) = 1 credit (`strand_client.testing.state`).
CREDITS_PER_SLIDE = 1
MARKERS = ["CD8", "PanCK", "Ki67"]


@dataclass
class Rig:
    ctx: PipelineContext
    sectra: MockSectraServer
    strand: FakeStrandServer
    tmp: Path

    def add_slide(self, slide_id: str, *, qc: QualityControlStatus | None = None) -> None:
        path = make_svs(
            self.tmp / "slides" / f"{slide_id}.svs",
            width=1024,
            height=768,
            phi=PHI,
            label_marker=LABEL_MARKER,
        )
        metadata = slide_metadata(slide_id, 1024, 768)
        if qc is not None:
            metadata.qualityControl = QualityControlData(status=qc, versionId="qc-1")
        self.sectra.add_slide(metadata)
        self.sectra.add_slide_files(slide_id, path)

    def run(self, app_id: str, slide_id: str, source: RunSource = "create") -> RunRecord:
        record, _ = self.ctx.store.create_or_get(
            app_id=app_id,
            slide_id=slide_id,
            cancellation_token=uuid.uuid4().hex,
            callback_url=self.sectra.url,
            callback_token=self.sectra.token,
            source=source,
        )
        return self.finish(record.run_id)

    def finish(self, run_id: str) -> RunRecord:
        """Every step the run needs; a waiting step paces itself on the fake's clock."""
        for _ in range(200):
            if advance(self.ctx, run_id) is None:
                break
        final = self.ctx.store.require(run_id)
        assert final.status in FINAL, final.status
        return final


RigFactory = Callable[..., Rig]


def _app(app_id: str, **options: object) -> AppConfig:
    return AppConfig.model_validate({"id": app_id, "display_name": app_id, "markers": MARKERS, **options})


@pytest.fixture
def rig_factory(redis_client: redis.Redis, key_prefix: str, tmp_path: Path) -> Iterator[RigFactory]:
    from sectra_client import mock_server

    mock_server.print = lambda *a, **k: None
    sectra = MockSectraServer()
    sectra.run(port=0, host="127.0.0.1")
    strand = FakeStrandServer(job_duration=0.0, progress_step=1.0, heartbeat_interval=1.0)
    strand.start()
    contexts: list[PipelineContext] = []

    def make(apps: list[AppConfig], bridge_limit: int | None = None) -> Rig:
        settings = Settings(
            STRAND_API_KEY=SecretStr(strand.api_key),
            STRAND_BASE_URL=strand.url,
            SECTRA_ALLOW_HTTP=True,
            BRIDGE_WORK_DIR=tmp_path / "work",
            BRIDGE_PROGRESS_INTERVAL_SECONDS=0,
            BRIDGE_DAILY_CREDIT_LIMIT=bridge_limit,
        )
        ctx = PipelineContext(
            settings=settings,
            apps={app.id: app for app in apps},
            store=RunStore(redis_client, prefix=key_prefix, retention_seconds=3600),
            strand_factory=lambda: StrandClient(api_key=strand.api_key, base_url=strand.url, max_retries=1),
            uploads=UploadIndex(redis_client, prefix=key_prefix),
            in_flight=InFlight(redis_client, prefix=key_prefix),
            sectra_backoff=Backoff(max_retries=1, base_delay=0.001, max_delay=0.002),
            progress_interval=0.0,
        )
        contexts.append(ctx)
        return Rig(ctx, sectra, strand, tmp_path)

    try:
        yield make
    finally:
        for ctx in contexts:
            ctx.close()
        strand.close()
        sectra.stop()


def test_a_run_within_the_apps_limit_submits_and_the_next_is_refused_in_plain_words(
    rig_factory: RigFactory,
) -> None:
    rig = rig_factory([_app("capped", daily_credit_limit=CREDITS_PER_SLIDE)])
    rig.add_slide("s-1")
    rig.add_slide("s-2")
    first = rig.run("capped", "s-1")
    assert first.status == RunStatus.completed, first.error
    assert rig.strand.stats.submits_accepted == 1

    second = rig.run("capped", "s-2")
    assert second.status == RunStatus.failed
    assert second.job_id is None
    assert rig.strand.stats.submits_accepted == 1  # Strand saw no second job
    assert rig.strand.stats.submits_rejected == 0
    expected = messages.daily_limit_exceeded(
        "this app", CREDITS_PER_SLIDE, CREDITS_PER_SLIDE, CREDITS_PER_SLIDE
    )
    assert second.message == expected
    assert second.message.startswith("Today's Strand credit limit for this app (1) would be exceeded: ")
    (result,) = rig.sectra.get_results("capped", "s-2")
    assert result.displayResult == expected


def test_the_bridges_limit_counts_every_app_together(rig_factory: RigFactory) -> None:
    rig = rig_factory([_app("a"), _app("b")], bridge_limit=CREDITS_PER_SLIDE)
    rig.add_slide("s-a")
    rig.add_slide("s-b")
    assert rig.run("a", "s-a").status == RunStatus.completed
    refused = rig.run("b", "s-b")
    assert refused.status == RunStatus.failed
    assert refused.message is not None
    assert refused.message.startswith("Today's Strand credit limit for the bridge (1) would be exceeded")
    assert rig.strand.stats.submits_accepted == 1
    use = DailyCredits(rig.ctx.store.client, prefix=rig.ctx.store.prefix).use({"a": None, "b": None}, 1)
    assert (use.bridge_used, use.apps["a"][0], use.apps["b"][0]) == (1, 1, 0)


def test_a_rejected_slide_is_refused_before_download_unless_the_app_ignores_qc(
    rig_factory: RigFactory,
) -> None:
    rig = rig_factory([_app("strict"), _app("lenient", ignore_qc=True)])
    rig.add_slide("s-bad", qc=QualityControlStatus.REJECTED)
    refused = rig.run("strict", "s-bad")
    assert refused.status == RunStatus.failed
    assert refused.message == messages.qc_rejected()
    assert refused.staged_files == [] and refused.upload_id is None
    assert rig.strand.stats.upload_sessions_opened == 0 and rig.strand.stats.submits_accepted == 0

    # `ignore_qc` is for a person's own request; an automatic run never analyses a rejected slide.
    automatic = rig.run("lenient", "s-bad", source="newImageFiles")
    assert automatic.status == RunStatus.failed and automatic.message == messages.qc_rejected()
    assert rig.strand.stats.submits_accepted == 0
    manual = rig.run("lenient", "s-bad")
    assert manual.status == RunStatus.completed, manual.error
    assert rig.strand.stats.submits_accepted == 1


def test_concurrent_reservations_never_pass_the_limit_together(
    redis_client: redis.Redis, key_prefix: str
) -> None:
    daily = DailyCredits(redis_client, prefix=key_prefix)
    limit, contenders = 7, 40
    start = threading.Barrier(contenders)
    passed: list[str] = []

    def reserve(n: int) -> None:
        run_id = f"run-{n:024x}"
        start.wait()
        try:
            daily.reserve(run_id, "app", 1, app_limit=limit, bridge_limit=None)
        except DailyLimitExceeded:
            return
        passed.append(run_id)

    threads = [threading.Thread(target=reserve, args=(n,)) for n in range(contenders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(passed) == limit
    assert daily.use({"app": limit}, None).apps["app"] == (limit, limit)


def test_a_reservation_counts_once_per_run_and_a_release_gives_it_back(
    redis_client: redis.Redis, key_prefix: str
) -> None:
    daily = DailyCredits(redis_client, prefix=key_prefix)
    daily.reserve("run-" + "1" * 24, "app", 5, app_limit=10, bridge_limit=20)
    daily.reserve("run-" + "1" * 24, "app", 5, app_limit=10, bridge_limit=20)  # a retried submit step
    assert daily.use({"app": 10}, 20).bridge_used == 5
    with pytest.raises(
        DailyLimitExceeded, match=r"for this app \(10\) would be exceeded: 5 used, this slide needs 6"
    ):
        daily.reserve("run-" + "2" * 24, "app", 6, app_limit=10, bridge_limit=20)
    assert daily.use({"app": 10}, 20).apps["app"] == (5, 10)  # the refusal counted nothing
    assert daily.release("run-" + "1" * 24, "app") == 5
    assert daily.release("run-" + "1" * 24, "app") == 0
    assert daily.use({"app": 10}, 20).bridge_used == 0
