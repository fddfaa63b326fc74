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


class _ReplyDropper:
    """A TCP proxy to Redis that, on its first connection, lets a script through and drops the
    connection instead of passing on the script's reply: the script ran, its caller never heard."""

    def __init__(self, host: str, port: int) -> None:
        self._upstream = (host, port)
        self._connections = 0
        self.dropped = False

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def _serve(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self._connections += 1
        first = self._connections == 1
        server_reader, server_writer = await asyncio.open_connection(*self._upstream)
        script_sent = asyncio.Event()

        async def to_server() -> None:
            while data := await client_reader.read(65536):
                if first and b"EVALSHA" in data:
                    script_sent.set()
                server_writer.write(data)
                await server_writer.drain()

        async def to_client() -> None:
            while data := await server_reader.read(65536):
                if script_sent.is_set():
                    self.dropped = True
                    break
                client_writer.write(data)
                await client_writer.drain()

        pumps = [asyncio.ensure_future(to_server()), asyncio.ensure_future(to_client())]
        await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        for pump in pumps:
            pump.cancel()
        for writer in (client_writer, server_writer):
            writer.close()

    async def close(self) -> None:
        self._server.close()
        await self._server.wait_closed()


@pytest.mark.parametrize("queued_here", [True, False], ids=["queued-in-the-write", "queue-elsewhere"])
def test_a_record_sent_again_after_its_reply_was_lost_is_written_and_queued_once(
    store: RunStore, redis_client: redis.Redis, key_prefix: str, queued_here: bool
) -> None:
    run_id, token = _claimed_run(store, "ct-6")
    queue = f"{key_prefix}-queue"
    then_queue = _queue_one(queue) if queued_here else None
    kwargs = store.client.connection_pool.connection_kwargs
    # Another run's record first, so Redis knows the script and the first send runs it (no NOSCRIPT).
    other, other_token = _claimed_run(store, "ct-7")
    assert _complete(store, other, other_token, _queue_one(f"{key_prefix}-other-queue")) == (True, True)
    events_before = len(store.events(run_id))

    async def main() -> Any:
        dropper = _ReplyDropper(kwargs.get("host", "localhost"), kwargs.get("port", 6379))
        port = await dropper.start()
        through = redis.Redis(
            host="127.0.0.1", port=port, db=kwargs.get("db", 0),
            username=kwargs.get("username"), password=kwargs.get("password"),
        )  # fmt: skip
        runs = AsyncRunStore(store, RedisLane.like(through))
        try:
            answer = await runs.complete_step(
                run_id, LEASE, token, event="created", event_data={}, then_queue=then_queue,
                pending_result={"id": 9},
            )  # fmt: skip
            return answer, dropper.dropped
        finally:
            await runs.close()
            await dropper.close()

    answer, dropped = asyncio.run(main())
    assert dropped, "the proxy never dropped the script's reply: the test tested nothing"
    assert answer == (True, queued_here)
    expected_queue = [b"message-\x00-bytes"] if queued_here else []
    assert redis_client.lrange(queue, 0, -1) == expected_queue, "one message, not two"
    events = [e["event"] for e in store.events(run_id)]
    assert events[events_before:] == ["created"], "one audit entry, not two"
    assert store.require(run_id).pending_result == {"id": 9}


def test_a_completion_sent_twice_with_its_claims_token_is_recorded_once(store: RunStore) -> None:
    """What a client retrying a write whose reply it lost does (redis-py's retries, the lane's resend)."""
    run_id, token = _claimed_run(store, "ct-8")
    before = len(store.events(run_id))
    for _ in range(2):
        assert store.complete_step(
            run_id, LEASE, token, event="created", event_data={"n": 1}, pending_result={"id": 3}
        )
    assert [e["event"] for e in store.events(run_id)][before:] == ["created"]
    assert store.require(run_id).pending_result == {"id": 3}
    # A later claim of another step completes with its own token and is recorded.
    claim = store.claim_step(run_id, "upload", ttl_seconds=60, done_field="upload_id")
    assert claim.outcome == "claimed" and claim.token
    assert store.complete_step(
        run_id, "upload", claim.token, event="uploaded", event_data={}, upload_id="u-1"
    )
    assert [e["event"] for e in store.events(run_id)][before:] == ["created", "uploaded"]
    assert store.require(run_id).upload_id == "u-1"
