"""Scheduling keeps its promises: a step records when it is due, and recovery waits for that."""

from __future__ import annotations

import time
from pathlib import Path

import redis

from workers.janitor import sweep
from workers.runstore import RunStatus, RunStore
from workers.scheduler import ScheduledStep, StepScheduler
from workers.staging import Staging
from workers.tasks import due_time, is_stalled, take_recovery_turn


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
    assert before + 256.0 <= due_time(step, store.require(run_id).updated_at) <= after + 256.0
    assert scheduler.is_current(run_id, new) and not scheduler.is_current(run_id, old)


def test_a_run_never_scheduled_is_due_from_its_last_change(
    redis_client: redis.Redis, key_prefix: str
) -> None:
    store = RunStore(redis_client, prefix=key_prefix, retention_seconds=3600)
    scheduler = StepScheduler(redis_client, prefix=key_prefix, ttl_seconds=3600)
    record = store.require(_run(store, "s-2"))
    assert due_time(scheduler.current(record.run_id), record.updated_at) == record.updated_at


def test_a_step_is_started_only_by_its_own_token(redis_client: redis.Redis, key_prefix: str) -> None:
    store = RunStore(redis_client, prefix=key_prefix, retention_seconds=3600)
    scheduler = StepScheduler(redis_client, prefix=key_prefix, ttl_seconds=3600)
    run_id = _run(store, "s-3")
    first = scheduler.new_token(run_id)
    queued = scheduler.current(run_id)
    assert queued is not None and queued.token == first and not queued.started
    scheduler.mark_started(run_id, first)
    taken = scheduler.current(run_id)
    assert taken is not None and taken.started
    scheduler.new_token(run_id, 5.0)  # the next step is queued: not started until a worker takes it
    following = scheduler.current(run_id)
    assert following is not None and not following.started


def test_recovery_leaves_a_queued_step_in_the_queue_and_re_drives_a_dead_worker_s(
    redis_client: redis.Redis, key_prefix: str
) -> None:
    store = RunStore(redis_client, prefix=key_prefix, retention_seconds=3600)
    record = store.require(_run(store, "s-4"))
    due = record.updated_at
    waiting, taken = ScheduledStep("a", due, started=False), ScheduledStep("a", due, started=True)
    late = due + 60.0
    # Overdue by a minute, never started: behind 40 messages it is waiting its turn, not lost.
    assert not is_stalled(waiting, record.updated_at, now=late, slack=15.0, queued=40)
    # With nothing in the queue its message is gone (a worker took it and died before its lease).
    assert is_stalled(waiting, record.updated_at, now=late, slack=15.0, queued=0)
    # Started and no lease: its worker died, however long the queue.
    assert is_stalled(taken, record.updated_at, now=late, slack=15.0, queued=40)
    # Not overdue yet: left alone in every case.
    for step in (waiting, taken, None):
        assert not is_stalled(step, record.updated_at, now=due + 10.0, slack=15.0, queued=0)
    assert is_stalled(None, record.updated_at, now=late, slack=15.0, queued=40)  # never scheduled at all


def _walk(store: RunStore, run_id: str, to: RunStatus) -> None:
    for status in (RunStatus.downloading, RunStatus.deidentifying, RunStatus.uploading):
        store.transition(run_id, status)
    if to is not RunStatus.uploading:
        store.transition(run_id, to)


def test_the_janitor_removes_what_ended_and_then_what_failed_a_retention_ago(
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
    assert staging.outgoing_dir(runs["failed"]).exists()
    assert (early.removed_runs, early.removed_failed) == (2, 0)

    late = sweep(store, staging, retention_seconds=retention, now=failed_at + retention + 1)
    assert not staging.run_dir(runs["failed"]).exists(), "originals and de-identified copy removed"
    assert staging.staged_dir(runs["busy"]).exists() and staging.outgoing_dir(runs["busy"]).exists()
    assert (late.removed_runs, late.removed_failed) == (0, 1)
    events = [e["event"] for e in store.events(runs["failed"])]
    assert "staged_files_removed" in events


def test_the_sweep_reads_each_run_s_last_change_a_page_at_a_time_as_list_runs_does(
    redis_client: redis.Redis, key_prefix: str
) -> None:
    store = RunStore(redis_client, prefix=key_prefix, retention_seconds=3600)
    runs = [_run(store, f"s-page-{n}") for n in range(7)]
    for run_id in runs[:5]:
        _walk(store, run_id, RunStatus.uploading)
    expired = runs[2]
    redis_client.delete(f"{key_prefix}:run:{expired}")  # its record expired; the index still names it
    pages = list(store.last_changes(RunStatus.uploading, page=2))

    assert all(1 <= len(page) <= 2 for page in pages)
    seen = [pair for page in pages for pair in page]
    # The oracle: whole records, as `list_runs` reads them (newest first, the expired one left out).
    expected = [(r.run_id, r.updated_at) for r in store.list_runs(status=RunStatus.uploading, limit=100)]
    assert seen == expected
    assert {run_id for run_id, _ in seen} == set(runs[:5]) - {expired}
    index = redis_client.zrange(f"{key_prefix}:runs:status:uploading", 0, -1)
    assert expired.encode() not in index, "the expired run is dropped from the index on the way"


def test_the_sweep_sees_leases_and_steps_as_the_one_at_a_time_reads_do(
    redis_client: redis.Redis, key_prefix: str
) -> None:
    store = RunStore(redis_client, prefix=key_prefix, retention_seconds=3600)
    scheduler = StepScheduler(redis_client, prefix=key_prefix, ttl_seconds=3600)
    runs = [_run(store, f"s-view-{n}") for n in range(4)]
    scheduler.new_token(runs[0])
    scheduler.mark_started(runs[1], scheduler.new_token(runs[1], 30.0))
    redis_client.set(scheduler.lease_key(runs[1]), "worker-1", ex=60)
    redis_client.set(scheduler.lease_key(runs[3]), "worker-2", ex=60)  # held, never scheduled

    views = scheduler.held_and_current(runs)

    expected = [(bool(redis_client.exists(scheduler.lease_key(r))), scheduler.current(r)) for r in runs]
    assert views == expected
    assert [held for held, _ in views] == [False, True, False, True]
    assert views[1][1] is not None and views[1][1].started and views[2][1] is None


def test_one_worker_a_turn_sweeps_and_the_turn_lapses_by_itself(
    redis_client: redis.Redis, key_prefix: str
) -> None:
    """P workers used to read every unfinished run P times an interval; now one does, whoever
    offers first, and a worker that dies holding the turn loses it within the interval."""
    assert take_recovery_turn(redis_client, key_prefix, 4.5, "pod-a:1")
    assert not take_recovery_turn(redis_client, key_prefix, 4.5, "pod-b:7"), "the same interval: no"
    key = f"{key_prefix}:recovery-turn"
    assert redis_client.get(key) == b"pod-a:1"
    # Redis itself expires the turn (no release to forget): within the 4.5 s asked for.
    assert 0 < redis_client.pttl(key) <= 4500
