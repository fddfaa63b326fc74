"""The direct first-step message is the message Celery itself would have put on the queue.

Oracle: Celery's own `apply_async`, publishing the same task with the same arguments through
kombu's Redis transport into the same Redis; the two raw queue entries are compared field by
field. (tests/e2e/test_direct_enqueue.py has a real `sectra-bridge worker` consume one.)
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from workers.celery_app import QUEUE, celery_app
from workers.priority import NORMAL, queue_key
from workers.redis_lane import RedisLane
from workers.runstore import RunStore
from workers.runstore_async import AsyncRunStore
from workers.scheduler import StepScheduler
from workers.step_queue import StepMessage, first_step, put_first_step
from workers.tasks import run_step

# Per message in both: the task id (also its root and correlation id) and kombu's delivery tag.
# `reply_to` is where a result would be sent: Celery names its thread, we name none; the task's
# results are ignored either way (`ignore_result`).
_PER_MESSAGE_HEADERS = {"id", "root_id"}
_PER_MESSAGE_PROPERTIES = {"correlation_id", "delivery_tag", "reply_to"}
# Both publish at Celery's default priority, into that priority's list (workers.priority).
_LIST = queue_key(QUEUE, NORMAL)


@pytest.fixture
def queue_db(redis_url: str) -> Iterator[tuple[str, redis.Redis]]:
    """A database of this test's own: Celery's queue there is named as in production."""
    url = redis_url.rsplit("/", 1)[0] + "/11"
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield url, client
    client.flushdb()
    client.close()


def _message() -> StepMessage:
    return StepMessage(
        queue=QUEUE,
        task=run_step.name,
        time_limit=run_step.time_limit,
        soft_time_limit=run_step.soft_time_limit,
        ignore_result=bool(run_step.ignore_result),
    )


def _celery_writes(url: str, client: redis.Redis, args: tuple[str, str]) -> dict[str, Any]:
    with celery_app.connection_for_write(url) as connection:
        run_step.apply_async(args, connection=connection)
    raw = client.rpop(_LIST)
    assert raw is not None, "Celery published nowhere this test can see"
    envelope: dict[str, Any] = json.loads(raw)
    return envelope


def _queued_by_the_record_script(client: redis.Redis, scheduler: StepScheduler, message: StepMessage) -> str:
    """The webhook's way: the run's first step queued by the script that records its pending result."""
    store = RunStore(client, prefix="test-step-queue")
    run_id, _, claim = store.create_and_claim(
        app_id="strand-default",
        slide_id="slide-1",
        cancellation_token="ct-1",
        callback_url="https://sectra.example/api",
        callback_token="t",
        source="create",
        step="pending-result",
        ttl_seconds=60,
        done_field="pending_result",
    )
    assert claim.token is not None
    step = first_step(scheduler, message, run_id)

    async def record() -> tuple[bool, bool]:
        runs = AsyncRunStore(store, RedisLane.like(client))
        try:
            return await runs.complete_step(
                run_id, "pending-result", str(claim.token), event="created", event_data={}, then_queue=step,
                pending_result={"id": 1},
            )  # fmt: skip
        finally:
            await runs.close()

    assert asyncio.run(record()) == (True, True)
    assert scheduler.is_current(run_id, step.token)
    return run_id


@pytest.mark.parametrize("writer", ["multi", "record script"])
def test_the_direct_message_is_field_by_field_what_apply_async_writes(
    queue_db: tuple[str, redis.Redis], writer: str
) -> None:
    url, client = queue_db
    scheduler = StepScheduler(client, prefix="test-step-queue")
    if writer == "multi":
        run_id = "run-0123456789abcdef01234567"
        token = put_first_step(client, scheduler, _message(), run_id)
    else:
        run_id = _queued_by_the_record_script(client, scheduler, _message())
        current = scheduler.current(run_id)
        assert current is not None
        token = current.token
    ours: dict[str, Any] = json.loads(client.rpop(_LIST) or b"null")
    theirs = _celery_writes(url, client, (run_id, token))

    assert ours.keys() == theirs.keys()
    for field in ("content-type", "content-encoding"):
        assert ours[field] == theirs[field]
    assert base64.b64decode(ours["body"]) == base64.b64decode(theirs["body"])
    assert json.loads(base64.b64decode(ours["body"]))[0] == [run_id, token]
    assert ours["headers"].keys() == theirs["headers"].keys()
    for name in ours["headers"].keys() - _PER_MESSAGE_HEADERS:
        assert ours["headers"][name] == theirs["headers"][name], name
    assert ours["headers"]["root_id"] == ours["headers"]["id"] == ours["properties"]["correlation_id"]
    assert ours["properties"].keys() == theirs["properties"].keys()
    for name in ours["properties"].keys() - _PER_MESSAGE_PROPERTIES:
        assert ours["properties"][name] == theirs["properties"][name], name


def test_the_token_is_current_when_the_message_is_queued_and_ids_are_fresh(
    queue_db: tuple[str, redis.Redis],
) -> None:
    _, client = queue_db
    scheduler = StepScheduler(client, prefix="test-step-queue")
    first = put_first_step(client, scheduler, _message(), "run-0123456789abcdef01234567")
    assert scheduler.is_current("run-0123456789abcdef01234567", first)
    second = put_first_step(client, scheduler, _message(), "run-0123456789abcdef01234567")
    assert not scheduler.is_current("run-0123456789abcdef01234567", first)  # superseded, as `schedule`
    entries = [json.loads(raw) for raw in client.lrange(_LIST, 0, -1)]
    assert len(entries) == 2
    assert len({e["headers"]["id"] for e in entries}) == 2
    assert len({e["properties"]["delivery_tag"] for e in entries}) == 2
    assert {json.loads(base64.b64decode(e["body"]))[0][1] for e in entries} == {first, second}
