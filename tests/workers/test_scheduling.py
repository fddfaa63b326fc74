"""Scheduling keeps its promises: a step records when it is due, and recovery waits for that."""

from __future__ import annotations

import time
from pathlib import Path

import redis

from workers.janitor import sweep
from workers.runstore import RunStatus, RunStore
from workers.scheduler import StepScheduler
from workers.staging import Staging
from workers.tasks import due_time


def _run(store: RunStore, slide: str) -> str:
    record, _ = store.create_or_get(
        app_id="strand-default",
        slide_id=slide,
        cancellation_token=f"token-{slide}",
        callback_url="https://pacs.example/ia-api",
        callback_token="t",
        source="create",
    )
    return record.run_id


def test_a_step_scheduled_far_ahead_is_due_then_and_only_the_newest_token_counts(
    redis_client: redis.Redis, key_prefix: str
) -> None:
    store = RunStore(redis_client, prefix=key_prefix, retention_seconds=3600)
    scheduler = StepScheduler(redis_client, prefix=key_prefix, ttl_seconds=3600)
    run_id = _run(store, "s-1")
    before = time.time()
    old = scheduler.new_token(run_id)
    new = scheduler.new_token(run_id, 256.0)  # a publish backoff of 256 s
    after = time.time()
    step = scheduler.current(run_id)
    assert step is not None and step.token == new
    assert before + 256.0 <= due_time(step, store.require(run_id)) <= after + 256.0
    assert scheduler.is_current(run_id, new) and not scheduler.is_current(run_id, old)


def test_a_run_never_scheduled_is_due_from_its_last_change(
    redis_client: redis.Redis, key_prefix: str
) -> None:
    store = RunStore(redis_client, prefix=key_prefix, retention_seconds=3600)
    scheduler = StepScheduler(redis_client, prefix=key_prefix, ttl_seconds=3600)
    record = store.require(_run(store, "s-2"))
    assert due_time(scheduler.current(record.run_id), record) == record.updated_at


def _walk(store: RunStore, run_id: str, to: RunStatus) -> None:
    for status in (RunStatus.downloading, RunStatus.deidentifying, RunStatus.uploading):
        store.transition(run_id, status)
    if to is not RunStatus.uploading:
        store.transition(run_id, to)


def test_the_janitor_removes_what_ended_and_the_originals_of_old_failures(
    redis_client: redis.Redis, key_prefix: str, tmp_path: Path
) -> None:
    store = RunStore(redis_client, prefix=key_prefix, retention_seconds=3600)
    staging = Staging(tmp_path / "work")
    runs = {name: _run(store, name) for name in ("gone", "cancelled", "failed", "busy")}
    for run_id in runs.values():
        for part in ("staged", "outgoing"):
            folder = staging.run_dir(run_id) / part
            folder.mkdir(parents=True)
            (folder / "slide.svs").write_bytes(b"bytes")
    store.delete(runs["gone"])
    _walk(store, runs["cancelled"], RunStatus.cancelled)
    _walk(store, runs["failed"], RunStatus.failed)
    _walk(store, runs["busy"], RunStatus.uploading)
    retention = 24 * 3600.0
    failed_at = store.require(runs["failed"]).updated_at

    early = sweep(store, staging, retention_seconds=retention, now=failed_at + retention - 1)
    assert not staging.run_dir(runs["gone"]).exists()
    assert not staging.run_dir(runs["cancelled"]).exists()
    assert staging.staged_dir(runs["failed"]).exists(), "kept until the retention has passed"
    assert (early.removed_runs, early.removed_originals) == (2, 0)

    late = sweep(store, staging, retention_seconds=retention, now=failed_at + retention + 1)
    assert not staging.staged_dir(runs["failed"]).exists(), "identifiable originals removed"
    assert staging.outgoing_dir(runs["failed"]).exists(), "the de-identified copy stays for a retry"
    assert staging.staged_dir(runs["busy"]).exists() and staging.outgoing_dir(runs["busy"]).exists()
    assert (late.removed_runs, late.removed_originals) == (0, 1)
    events = [e["event"] for e in store.events(runs["failed"])]
    assert "staged_originals_removed" in events
