"""`AsyncRunStore.complete_step` with the run's first step queued by the same script, against a real Redis.

The oracle is the database as the blocking redis-py client and `RunStore` read it, not the
lane's replies alone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from workers.redis_lane import RedisLane
from workers.runstore import ModelJson, RunStore
from workers.runstore_async import AsyncRunStore
from workers.step_queue import FirstStep

LEASE = "pending-result"


@pytest.fixture
def store(redis_client: redis.Redis, key_prefix: str) -> Iterator[RunStore]:
    yield RunStore(redis_client, prefix=key_prefix)
    for key in redis_client.scan_iter(f"{key_prefix}*"):
        redis_client.delete(key)


def _complete(store: RunStore, run_id: str, token: str, then_queue: FirstStep | None) -> Any:
    async def main() -> Any:
        runs = AsyncRunStore(store, RedisLane.like(store.client))
        try:
            return await runs.complete_step(
                run_id,
                LEASE,
                token,
                event="created",
                event_data={"source": "create", "sectra_result_id": 7},
                then_queue=then_queue,
                pending_result=ModelJson('{"id":7,"versionId":"v1","slideId":"sl\u00e4de"}'),
                sectra_result_id=7,
            )
        finally:
            await runs.close()

    return asyncio.run(main())


def _claimed_run(store: RunStore, token: str) -> tuple[str, str]:
    run_id, created, claim = store.create_and_claim(
        app_id="strand-default",
        slide_id="slide-1",
        cancellation_token=token,
        callback_url="https://sectra.example/api",
        callback_token="t",
        source="create",
        step=LEASE,
        ttl_seconds=60,
        done_field="pending_result",
    )
    assert created and claim.outcome == "claimed" and claim.token
    return run_id, claim.token


def _queue_one(queue: str) -> FirstStep:
    return FirstStep("tok", (f"{queue}:token", queue), ("tok", "1.5", 60, b"message-\x00-bytes"))


def test_the_write_and_the_follow_up_commands_land_together(
    store: RunStore, redis_client: redis.Redis, key_prefix: str
) -> None:
    run_id, token = _claimed_run(store, "ct-1")
    queue = f"{key_prefix}-queue"
    assert _complete(store, run_id, token, _queue_one(queue)) == (True, True)
    record = store.require(run_id)
    assert record.pending_result == {"id": 7, "versionId": "v1", "slideId": "sl\u00e4de"}
    assert record.sectra_result_id == 7
    assert [e["event"] for e in store.events(run_id)][-1] == "created"
    assert redis_client.lrange(queue, 0, -1) == [b"message-\x00-bytes"]
    assert redis_client.hgetall(f"{queue}:token") == {b"token": b"tok", b"due_at": b"1.5"}
    assert 0 < redis_client.ttl(f"{queue}:token") <= 60
    assert store.find_by_result("strand-default", 7) == run_id  # the write's fourth key, the result index
    # The step's lease was released by the write, as `RunStore.complete_step` releases it.
    assert store.claim_step(run_id, LEASE, ttl_seconds=60, done_field="pending_result").outcome == "done"


def test_nothing_follows_a_write_to_a_deleted_run(
    store: RunStore, redis_client: redis.Redis, key_prefix: str
) -> None:
    run_id, token = _claimed_run(store, "ct-2")
    assert store.delete(run_id)
    queue = f"{key_prefix}-queue"
    assert _complete(store, run_id, token, _queue_one(queue)) == (False, False)
    assert redis_client.exists(queue, f"{queue}:token") == 0  # no message for a run that is gone


def test_without_follow_up_commands_it_is_the_plain_write(
    store: RunStore, redis_client: redis.Redis, key_prefix: str
) -> None:
    run_id, token = _claimed_run(store, "ct-3")
    assert _complete(store, run_id, token, None) == (True, False)
    assert store.require(run_id).pending_result == {"id": 7, "versionId": "v1", "slideId": "sl\u00e4de"}


def test_model_json_goes_only_to_an_object_field(store: RunStore) -> None:
    run_id, token = _claimed_run(store, "ct-4")
    with pytest.raises(ValueError, match="does not hold a JSON object"):
        store.complete_step(run_id, LEASE, token, event="x", event_data={}, message=ModelJson('{"a":1}'))


def test_the_first_step_follows_a_write_with_no_result_index(
    store: RunStore, redis_client: redis.Redis, key_prefix: str
) -> None:
    """Without a Sectra result id the write has three keys, not four: the step's keys follow those."""
    run_id, token = _claimed_run(store, "ct-5")
    queue = f"{key_prefix}-queue"

    async def main() -> Any:
        runs = AsyncRunStore(store, RedisLane.like(store.client))
        try:
            return await runs.complete_step(
                run_id, LEASE, token, event="created", event_data={}, then_queue=_queue_one(queue),
                pending_result={"id": 8},
            )  # fmt: skip
        finally:
            await runs.close()

    assert asyncio.run(main()) == (True, True)
    assert store.require(run_id).pending_result == {"id": 8}
    assert redis_client.lrange(queue, 0, -1) == [b"message-\x00-bytes"]
    assert redis_client.hgetall(f"{queue}:token") == {b"token": b"tok", b"due_at": b"1.5"}
