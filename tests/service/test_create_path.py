"""The cheap create path: the run and its pending-result lease in one Redis round trip, the first
step queued directly, Sectra's result POST and the Redis writes made on the event loop.

Real Redis, Sectra's own mock server, our webhook under uvicorn. The once-only guarantees are
those of `create_or_get` + `claim_step` (tests/workers/test_runstore.py), now in one script.
"""

from __future__ import annotations

import asyncio
import base64
import json
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from sectra_adapter._http1 import Http1Pool, _Connection
from service import webhook
from service.app import create_app
from service.webhook import PENDING_LEASE
from tests.service.conftest import SECTRA_TOKEN, BridgeFactory, RecordingSectra, ServerThread, bridge_apps
from workers import dispatch, runtime
from workers.celery_app import QUEUE, celery_app
from workers.priority import NORMAL, queue_key
from workers.redis_lane import RedisLane, _LaneProtocol
from workers.runstore import CREATE_AND_CLAIM_SCRIPT, RunStore, StepClaim
from workers.settings import Settings

INVOCATION = {
    "app_id": "strand-default",
    "slide_id": "slide-42",
    "cancellation_token": "ct-0001",
    "callback_url": "http://sectra.example/api",
    "callback_token": "callback-token-1",
    "source": "create",
}


class CountingRedis(redis.Redis):
    """Counts the commands this client sends (a pipeline counts as what it sends: one batch)."""

    commands = 0

    def execute_command(self, *args: Any, **options: Any) -> Any:
        type(self).commands += 1
        return super().execute_command(*args, **options)


def _claim(store: RunStore, **overrides: Any) -> tuple[str, bool, StepClaim]:
    return store.create_and_claim(
        **{**INVOCATION, **overrides},
        step=PENDING_LEASE,
        ttl_seconds=60,
        done_field="pending_result",
    )


def test_ten_concurrent_creates_make_one_run_and_one_claim(
    redis_client: redis.Redis, key_prefix: str
) -> None:
    store = RunStore(redis_client, prefix=key_prefix)
    start = threading.Barrier(10)

    def attempt(_: int) -> tuple[str, bool, StepClaim]:
        start.wait(timeout=10)
        return _claim(store)

    with ThreadPoolExecutor(max_workers=10) as pool:
        outcomes = list(pool.map(attempt, range(10)))
    assert len({run_id for run_id, _, _ in outcomes}) == 1
    assert sum(created for _, created, _ in outcomes) == 1
    claims = [claim for _, _, claim in outcomes]
    assert [c.outcome for c in claims].count("claimed") == 1
    assert [c.outcome for c in claims].count("busy") == 9
    run_id = outcomes[0][0]
    assert [r.run_id for r in store.list_runs()] == [run_id]


def test_the_record_is_what_create_or_get_writes(redis_client: redis.Redis, key_prefix: str) -> None:
    """Oracle: the store's established two-step path, on a namespace of its own."""
    fast, slow = (
        RunStore(redis_client, prefix=key_prefix),
        RunStore(redis_client, prefix=f"{key_prefix}-slow"),
    )
    run_id, created, _ = _claim(fast)
    record, slow_created = slow.create_or_get(**INVOCATION)  # type: ignore[arg-type]
    assert created and slow_created and record.run_id == run_id
    fast_raw = redis_client.hgetall(f"{key_prefix}:run:{run_id}")
    slow_raw = redis_client.hgetall(f"{key_prefix}-slow:run:{run_id}")
    assert fast_raw.keys() == slow_raw.keys()
    for key in fast_raw.keys() - {b"created_at", b"updated_at"}:
        assert fast_raw[key] == slow_raw[key], key
    stored = fast.require(run_id)
    assert stored.callback_token == INVOCATION["callback_token"]  # stored, though never dumped
    theirs = slow.require(run_id).model_dump()
    assert stored.model_dump() == {**theirs, "created_at": stored.created_at, "updated_at": stored.updated_at}
    for index in (
        f"{key_prefix}:runs",
        f"{key_prefix}:runs:status:received",
        f"{key_prefix}:runs:app:strand-default",
    ):
        assert redis_client.zscore(index, run_id) == pytest.approx(stored.created_at)


def test_one_round_trip_answers_new_done_and_busy(redis_url: str, key_prefix: str) -> None:
    client = CountingRedis.from_url(redis_url)
    store = RunStore(client, prefix=key_prefix)
    _claim(store, cancellation_token="warm-up")  # the first call also loads the script
    try:
        before = CountingRedis.commands
        run_id, created, claim = _claim(store)
        assert CountingRedis.commands - before == 1
        assert created and claim.outcome == "claimed" and claim.token
        # A copy arriving while the first holds the lease: busy, in one round trip too.
        before = CountingRedis.commands
        _, created, busy = _claim(store)
        assert CountingRedis.commands - before == 1
        assert not created and busy.outcome == "busy"
        body = {"id": 7, "versionId": "v1"}
        assert store.complete_step(
            run_id, PENDING_LEASE, claim.token, event="created", event_data={}, pending_result=body
        )
        _, created, done = _claim(store)
        assert not created and done.outcome == "done" and done.value == body
    finally:
        for key in client.scan_iter(f"{key_prefix}:*"):
            client.delete(key)
        client.close()


def test_a_claim_sent_again_answers_as_the_first_did(redis_client: redis.Redis, key_prefix: str) -> None:
    """The lane resends a command whose connection broke; if Redis had run it, the resend (same lease
    token) must find the lease its own, not busy, or the create would end in a 503 for nothing."""
    store = RunStore(redis_client, prefix=key_prefix)
    call = store.create_and_claim_call(**{**INVOCATION, "step": PENDING_LEASE, "ttl_seconds": 60,
                                          "done_field": "pending_result"})  # fmt: skip
    script = redis_client.register_script(CREATE_AND_CLAIM_SCRIPT)
    first = call.outcome(script(keys=call.keys, args=call.args))
    again = call.outcome(script(keys=call.keys, args=call.args))
    other = store.create_and_claim_call(**{**INVOCATION, "step": PENDING_LEASE, "ttl_seconds": 60,
                                           "done_field": "pending_result"})  # fmt: skip
    assert first[1] and first[2].outcome == "claimed"
    assert not again[1] and again[2] == first[2]  # the same claim, same token
    assert other.outcome(script(keys=other.keys, args=other.args))[2].outcome == "busy"  # another copy
    for key in redis_client.scan_iter(f"{key_prefix}:*"):
        redis_client.delete(key)


def test_a_lease_left_by_a_deleted_run_keeps_a_new_copy_busy(
    redis_client: redis.Redis, key_prefix: str
) -> None:
    """The old holder may still be calling Sectra: the new record must not take the step from it."""
    store = RunStore(redis_client, prefix=key_prefix)
    run_id, _, claim = _claim(store)
    assert claim.outcome == "claimed"
    store.delete(run_id)  # e.g. Sectra's delete while the first copy is mid-call
    _, created, again = _claim(store)
    assert created and again.outcome == "busy"


def test_creates_build_no_client_per_request(
    make_bridge: BridgeFactory, sectra: RecordingSectra, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first create opens the loop's connections (its clients are made at startup); the next ones
    reuse them (no httpx client, no Redis lane or Sectra pool, not even a new connection to either,
    per request)."""
    bridge = make_bridge()
    assert bridge.post(bridge.invocation()).status_code == 200
    built: list[str] = []
    for cls in (httpx.Client, RedisLane, _LaneProtocol, Http1Pool, _Connection):
        original = cls.__init__

        def counting_init(self: Any, *args: Any, __original: Any = original, **kwargs: Any) -> None:
            built.append(type(self).__name__)
            __original(self, *args, **kwargs)

        monkeypatch.setattr(cls, "__init__", counting_init)
    answers = [bridge.post(bridge.invocation()) for _ in range(5)]
    assert [a.status_code for a in answers] == [200] * 5
    assert built == []
    assert sectra.result_posts() == 6


@pytest.fixture
def queue_env(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[redis.Redis]:
    """The webhook's real enqueue (no test double) onto a Celery queue in a database of this test's own."""
    url = redis_url.rsplit("/", 1)[0] + "/12"
    client = redis.Redis.from_url(url)
    client.flushdb()
    monkeypatch.setenv("REDIS_URL", url)
    runtime.reset()
    saved = celery_app.conf.broker_url
    celery_app.conf.broker_url = url
    yield client
    celery_app.conf.broker_url = saved
    monkeypatch.undo()
    runtime.reset()
    client.flushdb()
    client.close()


def test_ten_concurrent_duplicates_queue_one_step_with_a_current_token(
    make_bridge: BridgeFactory, sectra: RecordingSectra, queue_env: redis.Redis
) -> None:
    bridge = make_bridge(enqueue=dispatch.enqueue_run_direct)  # `create_app`'s own, given none
    body = bridge.invocation(cancellationToken="ct-duplicates")
    with ThreadPoolExecutor(max_workers=10) as pool:
        answers = list(pool.map(lambda _: bridge.post(body), range(10)))
    assert [a.status_code for a in answers] == [200] * 10
    assert len({a.json()["id"] for a in answers}) == 1
    assert sectra.result_posts() == 1
    run_id = bridge.store.find("strand-default", "slide-42", "ct-duplicates")
    assert run_id is not None
    messages = [json.loads(raw) for raw in queue_env.lrange(queue_key(QUEUE, NORMAL), 0, -1)]
    assert len(messages) == 1
    assert messages[0]["headers"]["task"] == "bridge.run.step"
    args = json.loads(base64.b64decode(messages[0]["body"]))[0]
    assert args[0] == run_id
    assert runtime.scheduler().is_current(run_id, args[1])
    assert SECTRA_TOKEN not in json.dumps(messages[0])  # the queue carries ids, never the callback token


def _create_body(sectra: RecordingSectra, cancellation_token: str) -> dict[str, Any]:
    return {
        "action": "create",
        "applicationId": "strand-default",
        "slideId": "slide-42",
        "callbackInfo": {"url": sectra.url, "token": SECTRA_TOKEN},
        "cancellationToken": cancellation_token,
        "input": {"type": "wholeSlide"},
    }


def test_the_clients_are_closed_when_the_app_shuts_down(
    sectra: RecordingSectra, redis_client: redis.Redis, key_prefix: str, tmp_path: Path
) -> None:
    settings = Settings(
        SECTRA_ALLOWED_CALLBACK_URLS=sectra.url, SECTRA_ALLOW_HTTP=True, BRIDGE_WORK_DIR=tmp_path / "work"
    )
    app = create_app(
        settings, bridge_apps(), store=RunStore(redis_client, prefix=key_prefix), enqueue=[].append
    )
    state = app.state.bridge
    with ServerThread(app) as server:
        body = _create_body(sectra, "ct-shutdown")
        assert httpx.post(f"{server.url}/sectra/strand-default", json=body, timeout=30).status_code == 200
        assert state.loop.is_open
    assert not state.loop.is_open
    with pytest.raises(RuntimeError, match="closed"), state.sectra_clients.client(sectra.url):
        pass
    for key in redis_client.scan_iter(f"{key_prefix}:*"):
        redis_client.delete(key)


def _commands_on(
    url: str, until: bytes, into: list[str], scripts_ran: list[str], ready: threading.Event
) -> None:
    """MONITOR's view of database `url`'s commands (name first), until an ECHO of `until` passes: the
    clients' in `into`, those scripts ran in `scripts_ran`."""
    db = int(url.rsplit("/", 1)[1])
    with redis.Redis.from_url(url).monitor() as monitor:
        ready.set()
        for command in monitor.listen():
            if command["db"] != db:
                continue
            if command["command"] == f"ECHO {until.decode()}":
                return
            name = command["command"].split(" ", 1)[0].upper()
            (scripts_ran if command.get("client_type") == "lua" else into).append(name)


def _url_of(client: redis.Redis) -> str:
    where = client.connection_pool.connection_kwargs
    return f"redis://{where['host']}:{where['port']}/{where['db']}"


def _deployed_settings(sectra: RecordingSectra, redis_url: str, tmp_path: Path) -> Settings:
    """Settings for `create_app(settings, apps)` as deployed: its own store, the default enqueue."""
    return Settings(
        SECTRA_ALLOWED_CALLBACK_URLS=sectra.url,
        SECTRA_ALLOW_HTTP=True,
        BRIDGE_WORK_DIR=tmp_path / "work",
        REDIS_URL=redis_url,
    )


def test_the_first_create_finds_its_clients_and_queue_plan_made_at_startup(
    sectra: RecordingSectra, queue_env: redis.Redis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`LoopClients.prepare` in the app's startup: a process's first create builds no SSL context and
    reads no Celery configuration, which held its event loop ~25 ms (every other request waited)."""
    made: list[str] = []
    real_context, real_message = httpx.create_ssl_context, dispatch._direct_message

    def context(*args: Any, **kwargs: Any) -> Any:
        made.append("ssl context")
        return real_context(*args, **kwargs)

    def message() -> Any:
        made.append("queue plan")
        return real_message()

    monkeypatch.setattr(httpx, "create_ssl_context", context)
    monkeypatch.setattr(dispatch, "_direct_message", message)
    app = create_app(_deployed_settings(sectra, _url_of(queue_env), tmp_path), bridge_apps())
    assert made == []
    with ServerThread(app) as server:
        assert made == ["ssl context", "queue plan"]
        made.clear()
        body = _create_body(sectra, "ct-first-create")
        answer = httpx.post(f"{server.url}/sectra/strand-default", json=body, timeout=30)
    assert answer.status_code == 200
    assert made == []
    # ... and that create went the way the plan says: recorded and queued in the store's own write.
    assert sectra.result_posts() == 1
    assert queue_env.llen(queue_key(QUEUE, NORMAL)) == 1


def test_the_default_create_records_and_queues_in_one_script(
    sectra: RecordingSectra, queue_env: redis.Redis, tmp_path: Path
) -> None:
    """With the queue in the store's database (as deployed), a create is two Redis commands: the
    create-and-claim script, then one script that writes the pending result and queues the first step."""
    redis_url = _url_of(queue_env)
    app = create_app(_deployed_settings(sectra, redis_url, tmp_path), bridge_apps())
    seen: list[str] = []
    scripts_ran: list[str] = []
    ready = threading.Event()
    watcher = threading.Thread(
        target=_commands_on, args=(redis_url, b"end-of-create", seen, scripts_ran, ready)
    )
    with ServerThread(app) as server:
        body = _create_body(sectra, "ct-one-transaction")
        warm = {**body, "cancellationToken": "ct-warm-up"}  # loads the scripts, opens the connections
        assert httpx.post(f"{server.url}/sectra/strand-default", json=warm, timeout=30).status_code == 200
        watcher.start()
        assert ready.wait(10)
        answer = httpx.post(f"{server.url}/sectra/strand-default", json=body, timeout=30)
        queue_env.echo("end-of-create")
        watcher.join(10)
    assert answer.status_code == 200
    assert seen == ["EVALSHA", "EVALSHA"], seen
    # The second script wrote the record and its audit entry, then the step's token and its message.
    assert "XADD" in scripts_ran and scripts_ran[-3:] == ["HSET", "EXPIRE", "LPUSH"], scripts_ran
    store = RunStore(queue_env)
    run_id = store.find("strand-default", "slide-42", "ct-one-transaction")
    assert run_id is not None and store.require(run_id).pending_result == answer.json()
    messages = [json.loads(raw) for raw in queue_env.lrange(queue_key(QUEUE, NORMAL), 0, -1)]
    mine = [json.loads(base64.b64decode(m["body"]))[0] for m in messages]
    assert [args[0] for args in mine].count(run_id) == 1
    token = next(args[1] for args in mine if args[0] == run_id)
    assert runtime.scheduler().is_current(run_id, token)


def test_a_create_cancelled_during_its_sectra_post_still_records_and_queues_its_run(
    sectra: RecordingSectra, redis_client: redis.Redis, key_prefix: str, tmp_path: Path
) -> None:
    """A request cancelled natively (`Task.cancel()`, as asyncio servers and clients cancel one) while
    its pending result is on the way to Sectra: the result is stored, and the run records it and is
    queued, instead of the run being discarded under a result Sectra keeps."""
    settings = Settings(
        SECTRA_ALLOWED_CALLBACK_URLS=sectra.url, SECTRA_ALLOW_HTTP=True, BRIDGE_WORK_DIR=tmp_path / "work"
    )
    queued: list[str] = []
    store = RunStore(redis_client, prefix=key_prefix)
    app = create_app(settings, bridge_apps(), store=store, enqueue=queued.append)
    post_arrived = threading.Event()
    request_cancelled = threading.Event()

    def hold_the_post() -> None:  # in Sectra's server thread, before the result is stored
        post_arrived.set()
        assert request_cancelled.wait(30)

    sectra.on_result_post = hold_the_post

    async def scenario() -> None:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://bridge") as client:
                body = _create_body(sectra, "ct-cancelled")
                request = asyncio.ensure_future(client.post("/sectra/strand-default", json=body, timeout=30))
                assert await asyncio.to_thread(post_arrived.wait, 30)
                request.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await request
                request_cancelled.set()
                # What the cancelled request left running: the create's own work, to its end.
                assert webhook._STORING
                await asyncio.wait(set(webhook._STORING), timeout=30)

    try:
        asyncio.run(scenario())
        run_id = store.find("strand-default", "slide-42", "ct-cancelled")
        assert run_id is not None
        record = store.require(run_id)
        stored = sectra.get_results("strand-default", "slide-42")
        assert len(stored) == 1 and record.sectra_result_id == stored[0].id
        assert record.pending_result is not None and record.pending_result["id"] == stored[0].id
        assert queued == [run_id]
    finally:
        for key in redis_client.scan_iter(f"{key_prefix}:*"):
            redis_client.delete(key)
