"""No progress line replaces a run's outcome: writers of one result take turns (real Redis, MockSectraServer).

The race this guards against was found by the loaded soak: the step uploading a
slide passed its cancel check, the cancel step posted "Cancelled", then the
upload's progress "Uploading to Strand 21 %" landed on top (MockSectraServer,
like a lenient server, takes any versionId; Sectra's own check would only have
made the upload reread and write again).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
import redis
from sectra_client.mock_server import MockSectraServer

from sectra_adapter import ResultPublisher, SectraAdapter, cancelled_result, pending_result
from workers.result_guard import RunResultGuard
from workers.runstore import RunStatus, RunStore

APP = "app"
SLIDE = "slide-guard"


@pytest.fixture
def sectra() -> Iterator[MockSectraServer]:
    from sectra_client import mock_server

    mock_server.print = lambda *a, **k: None
    server = MockSectraServer()
    server.run(port=0, host="127.0.0.1")
    yield server
    server.stop()


@pytest.fixture
def store(redis_client: redis.Redis, key_prefix: str) -> RunStore:
    return RunStore(redis_client, prefix=key_prefix, retention_seconds=600)


def _run(store: RunStore, sectra: MockSectraServer) -> tuple[str, int]:
    record, _ = store.create_or_get(
        app_id=APP,
        slide_id=SLIDE,
        cancellation_token="tok-1",
        callback_url=sectra.url,
        callback_token=sectra.token,
        source="create",
    )
    with SectraAdapter(sectra.url, sectra.token, allow_http=True) as adapter:
        created = adapter.create_results(APP, pending_result(SLIDE, "1.0"))
    store.update(record.run_id, sectra_result_id=created.id, sectra_version_id=created.versionId)
    for status in (RunStatus.downloading, RunStatus.deidentifying, RunStatus.uploading):
        store.transition(record.run_id, status)
    return record.run_id, created.id


def _publisher(adapter: SectraAdapter, store: RunStore, run_id: str, result_id: int) -> ResultPublisher:
    record = store.require(run_id)
    return ResultPublisher(
        adapter,
        APP,
        SLIDE,
        "1.0",
        result_id=result_id,
        version_id=record.sectra_version_id,
        min_interval=0.0,
        guard=RunResultGuard(store, run_id),
    )


def test_progress_after_the_cancelled_outcome_is_not_posted(
    sectra: MockSectraServer, store: RunStore
) -> None:
    run_id, result_id = _run(store, sectra)
    with SectraAdapter(sectra.url, sectra.token, allow_http=True) as adapter:
        uploading = _publisher(adapter, store, run_id, result_id)  # the upload step, already past its check
        assert uploading.progress("Uploading to Strand 10 %", force=True) is not None

        store.request_cancel(run_id, "cancelled in Sectra")
        store.transition(run_id, RunStatus.cancelled, message="Analysis cancelled")
        _publisher(adapter, store, run_id, result_id).publish(cancelled_result(SLIDE, "1.0"))

        assert uploading.progress("Uploading to Strand 21 %", force=True) is None
    (shown,) = sectra.get_results(APP, SLIDE)
    assert shown.displayResult.startswith("Analysis cancelled")


def test_cancel_requested_stops_progress_before_the_run_reads_cancelled(
    sectra: MockSectraServer, store: RunStore
) -> None:
    run_id, result_id = _run(store, sectra)
    with SectraAdapter(sectra.url, sectra.token, allow_http=True) as adapter:
        publisher = _publisher(adapter, store, run_id, result_id)
        store.request_cancel(run_id, "cancelled in Sectra")
        assert publisher.progress("Uploading to Strand 30 %", force=True) is None
    (shown,) = sectra.get_results(APP, SLIDE)
    assert shown.displayResult == "Queued for Strand analysis"


def test_an_outcome_waits_for_a_progress_write_in_flight(sectra: MockSectraServer, store: RunStore) -> None:
    """The outcome's writer blocks while a progress writer holds the run's turn, then writes last."""
    run_id, result_id = _run(store, sectra)
    guard = RunResultGuard(store, run_id, lock_seconds=30)
    entered, outcome_done = threading.Event(), threading.Event()
    with SectraAdapter(sectra.url, sectra.token, allow_http=True) as adapter:

        def post_outcome() -> None:
            entered.wait(10)
            store.transition(run_id, RunStatus.cancelled, message="Analysis cancelled")
            _publisher(adapter, store, run_id, result_id).publish(cancelled_result(SLIDE, "1.0"))
            outcome_done.set()

        writer = threading.Thread(target=post_outcome)
        writer.start()
        with guard.hold():
            entered.set()
            # The outcome's writer is waiting for this turn: while it is held, it cannot finish.
            assert not outcome_done.wait(0.5)
            assert store.require(run_id).status is RunStatus.cancelled  # stored before it waits
        writer.join(30)
        assert outcome_done.is_set()
    (shown,) = sectra.get_results(APP, SLIDE)
    assert shown.displayResult.startswith("Analysis cancelled")


def test_a_writer_goes_ahead_when_redis_cannot_give_a_turn(sectra: MockSectraServer, store: RunStore) -> None:
    run_id, _ = _run(store, sectra)
    broken = RunStore(redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2), prefix="x")
    with RunResultGuard(broken, run_id).hold():
        pass  # no exception: the outcome must reach the slide even without Redis
