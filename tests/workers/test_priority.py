"""Sectra's image priority orders the bridge's queue: an urgent run queued behind normal ones is
taken first by a real Celery worker (kombu's Redis transport, the bridge's broker settings)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.workers.priority_probe import PROBE_LIST, STEP_TASK
from workers import runtime
from workers.celery_app import QUEUE, celery_app
from workers.priority import LOW, NORMAL, RAISED, URGENT, RunPriorities, celery_priority, queue_key
from workers.settings import get_settings
from workers.tasks import run_step, schedule

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("sectra", "celery"), [(None, NORMAL), (0, NORMAL), (1, RAISED), (2, URGENT), (9, URGENT), (-1, LOW)]
)
def test_sectra_priorities_map_onto_the_celery_steps(sectra: int | None, celery: int) -> None:
    assert celery_priority(sectra) == celery


def test_queue_keys_are_kombus_own_names(redis_url: str) -> None:
    # Oracle: kombu's Redis channel with the bridge's settings, which names each priority's list.
    with celery_app.connection_for_write(redis_url) as connection:
        channel = connection.default_channel
        for priority in (URGENT, RAISED, NORMAL, LOW, 1, 5, 8):
            assert queue_key(QUEUE, priority) == channel._q_for_pri(QUEUE, priority)


@pytest.fixture
def queue_db(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, redis.Redis]]:
    url = redis_url.rsplit("/", 1)[0] + "/13"  # its own database: the test runs a worker on its queue
    client = redis.Redis.from_url(url)
    client.flushdb()
    monkeypatch.setenv("REDIS_URL", url)
    get_settings.cache_clear()
    runtime.reset()
    saved = celery_app.conf.broker_url
    celery_app.conf.broker_url = url
    try:
        yield url, client
    finally:
        celery_app.conf.broker_url = saved
        runtime.reset()
        get_settings.cache_clear()
        client.flushdb()
        client.close()


def test_an_urgent_run_queued_behind_normal_ones_is_taken_first(
    queue_db: tuple[str, redis.Redis], tmp_path: Path
) -> None:
    url, client = queue_db
    assert run_step.name == STEP_TASK
    priorities = RunPriorities(client)
    normal = [f"run-{n:024x}" for n in range(1, 4)]
    urgent = f"run-{0xABC:024x}"
    for run_id in normal:
        schedule(run_id)  # never had its image info read: NORMAL
    priorities.remember(urgent, celery_priority(2))
    schedule(urgent)  # queued last
    env = {**os.environ, "REDIS_URL": url, "PYTHONPATH": str(ROOT)}
    log = tmp_path / "worker.log"
    command = [sys.executable, "-m", "celery", "-A", "tests.workers.priority_probe:app", "worker"]
    # One slot, one message at a time (the bridge's prefetch of 1): the order taken is the queue's.
    command += ["--pool", "solo", "--queues", QUEUE, "--without-gossip", "--without-mingle"]
    with log.open("wb") as out:
        worker = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while client.llen(PROBE_LIST) < len(normal) + 1:
            assert worker.poll() is None, log.read_text(errors="replace")
            assert time.monotonic() < deadline, "the worker did not take every step"
            time.sleep(0.05)
        taken = [raw.decode() if isinstance(raw, bytes) else raw for raw in client.lrange(PROBE_LIST, 0, -1)]
    finally:
        worker.terminate()
        worker.wait(timeout=30)
    assert taken[0] == urgent
    assert taken[1:] == normal  # the normal ones in the order they were queued
