"""`RedisLane` (the webhook's pipelined Redis connection) against a real Redis.

Oracles that are not the lane: redis-py's own command packing for the bytes on the wire,
the blocking redis-py client for what reached the database, and Redis itself for
failures (`CLIENT KILL` drops the connection, `CLIENT PAUSE` stops answers, `SCRIPT FLUSH`
forgets scripts, `ACL SETUSER` makes a user to log in as).
"""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st

from workers.redis_lane import CommandBatch, LaneScript, RedisLane, encode_command


@pytest.fixture
def free_port() -> int:
    """A port nothing listens on (yet): connecting to it is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _run(body: Callable[[RedisLane], Awaitable[Any]], lane: RedisLane) -> Any:
    async def main() -> Any:
        try:
            return await body(lane)
        finally:
            await lane.close()

    return asyncio.run(main())


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url, socket_timeout=5)
    yield client
    client.close()


values = st.one_of(
    st.binary(max_size=64),
    st.text(max_size=32),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["SET", "HSET", "EVALSHA", "LPUSH", "ECHO"]), st.lists(values, max_size=8))
def test_a_command_is_the_bytes_redis_py_would_send(name: str, args: list[Any]) -> None:
    packed = b"".join(redis.Connection().pack_command(name, *args))
    assert encode_command([name, *args]) == packed


def test_booleans_are_refused_as_redis_py_refuses_them() -> None:
    with pytest.raises(redis.DataError):
        encode_command(["SET", "k", True])


def test_concurrent_commands_each_get_their_own_reply(client: redis.Redis, key_prefix: str) -> None:
    async def body(lane: RedisLane) -> list[Any]:
        return await asyncio.gather(*(lane.execute("ECHO", f"{key_prefix}-{i}") for i in range(500)))

    replies = _run(body, RedisLane.like(client))
    assert replies == [f"{key_prefix}-{i}".encode() for i in range(500)]


def test_a_lane_reaches_the_database_and_user_of_its_client(redis_url: str, key_prefix: str) -> None:
    admin = redis.Redis.from_url(redis_url)
    user, password = f"lane-{key_prefix}", uuid.uuid4().hex
    admin.acl_setuser(user, enabled=True, passwords=[f"+{password}"], keys=["*"], commands=["+@all"])
    other_db = redis_url.rsplit("/", 1)[0] + "/14"
    try:
        client = redis.Redis.from_url(other_db, username=user, password=password)
        key = f"{key_prefix}:lane"

        async def body(lane: RedisLane) -> Any:
            await lane.execute("SET", key, "from the lane")
            return await lane.execute("ACL", "WHOAMI")

        assert _run(body, RedisLane.like(client)) == user.encode()
        assert redis.Redis.from_url(other_db).get(key) == b"from the lane"
        assert admin.get(key) is None  # not the default database
        wrong = redis.Redis.from_url(other_db, username=user, password="not-it")
        with pytest.raises(redis.AuthenticationError):
            _run(lambda lane: lane.execute("PING"), RedisLane.like(wrong))
    finally:
        redis.Redis.from_url(other_db).delete(f"{key_prefix}:lane")
        admin.acl_deluser(user)
        admin.close()


def test_redis_errors_arrive_as_redis_py_exceptions(client: redis.Redis, key_prefix: str) -> None:
    key = f"{key_prefix}:list"
    client.rpush(key, "x")

    async def body(lane: RedisLane) -> None:
        with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
            await lane.execute("GET", key)
        with pytest.raises(redis.exceptions.NoScriptError):
            await lane.execute("EVALSHA", "0" * 40, 0)
        assert await lane.execute("PING") == b"PONG"  # an error reply leaves the connection usable

    _run(body, RedisLane.like(client))
    client.delete(key)


def test_a_script_redis_forgot_is_sent_again_by_its_text(client: redis.Redis, key_prefix: str) -> None:
    script = LaneScript(f"return {{'{key_prefix}', ARGV[1]}}")

    async def body(lane: RedisLane) -> list[Any]:
        first = await lane.evalsha(script, [], ["a"])
        client.script_flush()
        return [first, await lane.evalsha(script, [], ["b"]), await lane.evalsha(script, [], ["c"])]

    replies = _run(body, RedisLane.like(client))
    assert replies == [[key_prefix.encode(), v] for v in (b"a", b"b", b"c")]
    assert client.script_exists(script.sha) == [True]


def test_a_transaction_is_atomic_and_names_its_first_failure(client: redis.Redis, key_prefix: str) -> None:
    key, wrong = f"{key_prefix}:q", f"{key_prefix}:string"
    client.set(wrong, "not a list")

    async def body(lane: RedisLane) -> list[Any]:
        done = await lane.transaction(
            CommandBatch().lpush(key, "a", "b").expire(key, 60).hset(f"{key}:h", mapping={"f": 1})
        )
        with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
            await lane.transaction(CommandBatch().lpush(wrong, "x").lpush(key, "c"))
        with pytest.raises(redis.ResponseError):  # refused while queueing: EXECABORT, nothing runs
            refused = CommandBatch().lpush(key, "d")
            refused.commands.append(("NO-SUCH-COMMAND",))
            await lane.transaction(refused)
        return done

    assert _run(body, RedisLane.like(client)) == [2, 1, 1]
    # Redis runs the rest of a MULTI whose command failed at run time (no rollback), not one refused.
    assert client.lrange(key, 0, -1) == [b"c", b"b", b"a"]
    client.delete(key, f"{key}:h", wrong)


def test_a_dropped_connection_is_made_again(client: redis.Redis) -> None:
    async def body(lane: RedisLane) -> tuple[int, int, bytes]:
        first = await lane.execute("CLIENT", "ID")
        client.client_kill_filter(_id=first)
        second = await lane.execute("CLIENT", "ID")
        return first, second, await lane.execute("PING")

    first, second, pong = _run(body, RedisLane.like(client))
    assert first != second and pong == b"PONG"


def test_a_connection_idle_too_long_is_not_written_into(client: redis.Redis) -> None:
    async def body(lane: RedisLane) -> list[int]:
        return [await lane.execute("CLIENT", "ID") for _ in range(3)]

    ids = _run(body, RedisLane.like(client, idle_reconnect_seconds=0.0))
    assert len(set(ids)) == 3


def test_an_unanswered_command_times_out_and_the_next_one_gets_through(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url, socket_timeout=0.5)
    admin = redis.Redis.from_url(redis_url)

    async def body(lane: RedisLane) -> Any:
        await lane.execute("PING")
        admin.client_pause(3000, all=True)
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            with pytest.raises(redis.TimeoutError):
                await asyncio.gather(lane.execute("PING"), lane.execute("ECHO", "behind it"))
            waited = loop.time() - started
        finally:
            admin.client_unpause()
        return waited, await lane.execute("ECHO", "after")

    waited, after = _run(body, RedisLane.like(client))
    assert 0.4 < waited < 2.5
    assert after == b"after"
    admin.close()


def test_an_unreachable_redis_is_a_connection_error(free_port: int) -> None:
    lane = RedisLane(host="127.0.0.1", port=free_port, connect_timeout=2.0)
    with pytest.raises(redis.ConnectionError):
        _run(lambda lane: lane.execute("PING"), lane)


def test_commands_awaiting_one_connect_share_it(client: redis.Redis) -> None:
    async def body(lane: RedisLane) -> set[int]:
        return set(await asyncio.gather(*(lane.execute("CLIENT", "ID") for _ in range(20))))

    assert len(_run(body, RedisLane.like(client))) == 1


def test_sentinel_and_custom_connections_are_refused() -> None:
    pool = redis.ConnectionPool(connection_class=redis.sentinel.SentinelManagedConnection, service_name="m")
    with pytest.raises(TypeError, match="cannot connect like"):
        RedisLane.like(redis.Redis(connection_pool=pool))
