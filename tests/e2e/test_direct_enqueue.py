"""A run started by the webhook's direct enqueue (`workers.step_queue`) is picked up by a real
`sectra-bridge worker` and runs the whole pipeline, with Celery's own publisher out of the way."""

from __future__ import annotations

import pytest

from tests.e2e.conftest import Bridge
from workers.runstore import RunStatus
from workers.tasks import run_step


def test_a_directly_queued_first_step_is_consumed_by_a_real_worker(
    bridge: Bridge, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_celery_publisher(*_: object, **__: object) -> None:
        raise AssertionError("the webhook published through apply_async")

    # In this process only (the webhook's): the worker's own later steps still use apply_async.
    monkeypatch.setattr(run_step, "apply_async", no_celery_publisher)
    bridge.add_slide("slide-direct")
    record = bridge.start_run("slide-direct")
    final = bridge.wait_final(record.run_id)
    assert final.status == RunStatus.completed, final.error
    events = [event["event"] for event in bridge.store.events(record.run_id)]
    # Neither a failed enqueue nor the recovery sweep moved it: the queued message did.
    assert "enqueue_failed" not in events
    assert "recovered" not in events
    assert bridge.strand.stats.submits_accepted == 1
    assert len(bridge.results("slide-direct")) == 1
