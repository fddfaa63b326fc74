"""The run store against a real Redis: atomicity, the state machine, indexes, audit trail, retention."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pydantic
import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st

from workers.runstore import IllegalTransition, RunNotFound, RunRecord, RunStatus, RunStore, run_id_for
from workers.states import WORKING_ORDER, allowed_sources

CALLBACK_TOKEN = "sectra-callback-token-do-not-leak"


@pytest.fixture
def store(redis_client: redis.Redis, key_prefix: str) -> Iterator[RunStore]:
    yield RunStore(redis_client, prefix=key_prefix, retention_seconds=3600)
    for key in redis_client.scan_iter(f"{key_prefix}:*"):
        redis_client.delete(key)


def make(
    store: RunStore, slide: str = "slide-1", cancellation: str = "ct-1", app: str = "app-a"
) -> RunRecord:
    record, created = store.create_or_get(
        app_id=app,
        slide_id=slide,
        cancellation_token=cancellation,
        callback_url="https://sectra.example/ia",
        callback_token=CALLBACK_TOKEN,
        source="create",
    )
    assert created
    return record


def walk_to(store: RunStore, run_id: str, target: RunStatus) -> None:
    for status in WORKING_ORDER[1 : WORKING_ORDER.index(target) + 1]:
        store.transition(run_id, status)


def test_create_then_get_round_trips_every_field(store: RunStore) -> None:
    record = make(store)
    assert record.status is RunStatus.received
    assert record.run_id == run_id_for("app-a", "slide-1", "ct-1")
    loaded = store.require(record.run_id)
    assert loaded == record
    assert loaded.callback_token == CALLBACK_TOKEN  # workers need it to call Sectra back


def test_same_invocation_is_one_run(store: RunStore) -> None:
    first = make(store)
    again, created = store.create_or_get(
        app_id="app-a",
        slide_id="slide-1",
        cancellation_token="ct-1",
        callback_url="https://other.example/",
        callback_token="other",
        source="create",
    )
    assert not created
    assert again.run_id == first.run_id
    assert again.callback_url == "https://sectra.example/ia"  # the first call's record, untouched
    other = make(store, cancellation="ct-2")
    assert other.run_id != first.run_id


def test_ten_concurrent_creates_make_one_run(store: RunStore) -> None:
    barrier = threading.Barrier(10)

    def create(_: int) -> tuple[str, bool]:
        barrier.wait()
        record, created = store.create_or_get(
            app_id="app-a",
            slide_id="slide-9",
            cancellation_token="ct-9",
            callback_url="https://sectra.example/ia",
            callback_token=CALLBACK_TOKEN,
            source="create",
        )
        return record.run_id, created

    with ThreadPoolExecutor(10) as pool:
        results = list(pool.map(create, range(10)))
    assert [created for _, created in results].count(True) == 1
    assert len({run_id for run_id, _ in results}) == 1
    assert len(store.list_runs()) == 1


def test_missing_run(store: RunStore, redis_client: redis.Redis, key_prefix: str) -> None:
    assert store.get("run-nope") is None
    with pytest.raises(RunNotFound, match="run-nope"):
        store.require("run-nope")
    with pytest.raises(RunNotFound):
        store.update("run-nope", job_id="j")
    with pytest.raises(RunNotFound):
        store.transition("run-nope", RunStatus.downloading)
    assert store.append_event("run-nope", "ghost") is None
    assert store.delete("run-nope") is False
    assert list(redis_client.scan_iter(f"{key_prefix}:*")) == []  # no half-created keys


def test_update_writes_checkpoints_and_validates(store: RunStore) -> None:
    record = make(store)
    staged = [{"name": "slide.svs", "size": 10, "sha256": "ab" * 32}]
    updated = store.update(record.run_id, upload_offset=4096, staged_files=staged, summary={"x": [1, 2]})
    assert updated.upload_offset == 4096
    assert updated.staged_files == staged
    assert updated.summary == {"x": [1, 2]}
    assert updated.updated_at >= record.updated_at
    assert store.require(record.run_id).upload_offset == 4096

    with pytest.raises(ValueError, match="transition"):
        store.update(record.run_id, status=RunStatus.completed)
    with pytest.raises(ValueError, match="slide_id"):
        store.update(record.run_id, slide_id="another")
    with pytest.raises(ValueError, match="no field 'bogus'"):
        store.update(record.run_id, bogus=1)
    with pytest.raises(pydantic.ValidationError):
        store.update(record.run_id, upload_offset="not a number")
    assert store.require(record.run_id).upload_offset == 4096  # a refused update wrote nothing


def test_concurrent_updates_of_different_fields_do_not_clobber(store: RunStore) -> None:
    record = make(store)

    def write(i: int) -> None:
        if i % 2:
            store.update(record.run_id, upload_offset=i)
        else:
            store.update(record.run_id, message=f"m{i}")

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(write, range(40)))
    final = store.require(record.run_id)
    assert final.upload_offset % 2 == 1
    assert final.message.startswith("m")


def test_happy_path_walks_every_state(store: RunStore) -> None:
    record = make(store)
    for status in [*WORKING_ORDER[1:], RunStatus.completed]:
        moved = store.transition(record.run_id, status, stage_progress=None)
        assert moved.status is status
        assert store.require(record.run_id).status is status
    assert store.require(record.run_id).is_final


def test_same_state_reentry_is_allowed_and_keeps_fields(store: RunStore) -> None:
    record = make(store)
    store.transition(record.run_id, RunStatus.downloading, message="fetching")
    again = store.transition(record.run_id, RunStatus.downloading)
    assert again.status is RunStatus.downloading
    assert again.message == "fetching"


@pytest.mark.parametrize(
    ("start", "target"),
    [
        (RunStatus.received, RunStatus.uploading),  # skipping a stage
        (RunStatus.waiting, RunStatus.submitting),  # going back
        (RunStatus.received, RunStatus.completed),
        (RunStatus.summarising, RunStatus.completed),
    ],
)
def test_illegal_transitions_raise_and_change_nothing(
    store: RunStore, start: RunStatus, target: RunStatus
) -> None:
    record = make(store)
    walk_to(store, record.run_id, start)
    with pytest.raises(IllegalTransition, match=f"from '{start.value}' to '{target.value}'"):
        store.transition(record.run_id, target, message="should not be written")
    after = store.require(record.run_id)
    assert after.status is start
    assert after.message != "should not be written"


@pytest.mark.parametrize("final", [RunStatus.completed, RunStatus.cancelled, RunStatus.failed])
def test_final_states_are_final(store: RunStore, final: RunStatus) -> None:
    record = make(store)
    walk_to(store, record.run_id, RunStatus.publishing)
    store.transition(record.run_id, final)
    store.transition(record.run_id, final)  # idempotent re-entry after a crash
    for target in (RunStatus.downloading, RunStatus.publishing, RunStatus.cancelled, RunStatus.completed):
        if target is final:
            continue
        with pytest.raises(IllegalTransition):
            store.transition(record.run_id, target)


@pytest.mark.parametrize("working", WORKING_ORDER)
def test_any_working_state_may_fail_or_cancel(store: RunStore, working: RunStatus) -> None:
    failing = make(store, cancellation="fail")
    walk_to(store, failing.run_id, working)
    assert store.transition(failing.run_id, RunStatus.failed, error="boom").error == "boom"
    cancelling = make(store, cancellation="cancel")
    walk_to(store, cancelling.run_id, working)
    assert store.transition(cancelling.run_id, RunStatus.cancelled).status is RunStatus.cancelled


def test_failed_run_is_re_driven_only_with_retry(store: RunStore) -> None:
    record = make(store)
    walk_to(store, record.run_id, RunStatus.uploading)
    store.transition(record.run_id, RunStatus.failed, error="Strand down")
    with pytest.raises(IllegalTransition, match="operator retries"):
        store.transition(record.run_id, RunStatus.uploading)
    back = store.transition(record.run_id, RunStatus.uploading, retry=True, error=None, attempts=0)
    assert back.status is RunStatus.uploading
    assert back.error is None
    assert [r.run_id for r in store.list_runs(status=RunStatus.uploading)] == [record.run_id]
    assert store.list_runs(status=RunStatus.failed) == []
    # retry does not open other doors: a cancelled run stays cancelled
    store.transition(record.run_id, RunStatus.cancelled)
    with pytest.raises(IllegalTransition):
        store.transition(record.run_id, RunStatus.uploading, retry=True)


def test_racing_final_transitions_have_one_winner(store: RunStore) -> None:
    record = make(store)
    walk_to(store, record.run_id, RunStatus.publishing)
    barrier = threading.Barrier(10)

    def attempt(i: int) -> RunStatus | None:
        target = RunStatus.completed if i % 2 else RunStatus.cancelled
        barrier.wait()
        try:
            return store.transition(record.run_id, target).status
        except IllegalTransition:
            return None

    with ThreadPoolExecutor(10) as pool:
        outcomes = list(pool.map(attempt, range(10)))
    winners = {o for o in outcomes if o is not None}
    assert len(winners) == 1
    assert outcomes.count(None) == 5
    assert store.require(record.run_id).status in winners


def test_allowed_sources_table() -> None:
    assert allowed_sources(RunStatus.downloading) == {RunStatus.received, RunStatus.downloading}
    assert RunStatus.failed in allowed_sources(RunStatus.downloading, retry=True)
    assert RunStatus.completed not in allowed_sources(RunStatus.cancelled)
    assert allowed_sources(RunStatus.completed) == {RunStatus.publishing, RunStatus.completed}


def test_list_runs_newest_first_and_filtered(store: RunStore) -> None:
    a1 = make(store, slide="s1", app="app-a")
    b1 = make(store, slide="s2", app="app-b")
    a2 = make(store, slide="s3", app="app-a")
    store.transition(a2.run_id, RunStatus.downloading)
    assert [r.run_id for r in store.list_runs()] == [a2.run_id, b1.run_id, a1.run_id]
    assert [r.run_id for r in store.list_runs(limit=2)] == [a2.run_id, b1.run_id]
    assert [r.run_id for r in store.list_runs(app_id="app-a")] == [a2.run_id, a1.run_id]
    assert [r.run_id for r in store.list_runs(status=RunStatus.received)] == [b1.run_id, a1.run_id]
    assert [r.run_id for r in store.list_runs(status=RunStatus.received, app_id="app-b")] == [b1.run_id]
    assert [r.run_id for r in store.list_runs(status=RunStatus.downloading)] == [a2.run_id]
    assert store.list_runs(limit=0) == []


def test_list_runs_drops_expired_records(store: RunStore, redis_client: redis.Redis, key_prefix: str) -> None:
    kept = make(store, slide="keep")
    gone = make(store, slide="gone")
    redis_client.delete(f"{key_prefix}:run:{gone.run_id}")  # as if its TTL had run out
    assert [r.run_id for r in store.list_runs()] == [kept.run_id]
    assert redis_client.zscore(f"{key_prefix}:runs", gone.run_id) is None


def test_delete_removes_record_events_and_indexes(
    store: RunStore, redis_client: redis.Redis, key_prefix: str
) -> None:
    record = make(store)
    store.update(record.run_id, sectra_result_id=17)
    store.append_event(record.run_id, "created")
    assert store.find_by_result("app-a", 17) == record.run_id
    assert store.delete(record.run_id) is True
    assert store.get(record.run_id) is None
    assert store.events(record.run_id) == []
    assert store.list_runs() == []
    assert store.find("app-a", "slide-1", "ct-1") is None
    assert store.find_by_result("app-a", 17) is None
    leftovers = [k for k in redis_client.scan_iter(f"{key_prefix}:*") if redis_client.type(k) != b"zset"]
    assert leftovers == []


def test_find_and_find_by_result(store: RunStore) -> None:
    record = make(store)
    assert store.find("app-a", "slide-1", "ct-1") == record.run_id
    assert store.find("app-a", "slide-1", "other") is None
    store.transition(record.run_id, RunStatus.downloading, sectra_result_id=5, sectra_version_id="v1")
    assert store.find_by_result("app-a", 5) == record.run_id
    assert store.find_by_result("app-b", 5) is None
    assert store.find_by_result("app-a", 6) is None


def test_events_are_an_ordered_scrubbed_audit_trail(store: RunStore) -> None:
    record = make(store)
    store.append_event(record.run_id, "created", source="create")
    store.append_event(
        record.run_id,
        "modify",
        body={"callbackInfo": {"url": "https://s", "token": CALLBACK_TOKEN}, "note": "Bearer abc.def"},
        attempt=2,
    )
    events = store.events(record.run_id)
    assert [e["event"] for e in events] == ["created", "modify"]
    assert events[0]["ts"] <= events[1]["ts"]
    assert events[0]["data"] == {"source": "create"}
    assert events[1]["data"]["attempt"] == 2
    assert events[1]["data"]["body"]["callbackInfo"]["url"] == "https://s"
    text = repr(events)
    assert CALLBACK_TOKEN not in text
    assert "abc.def" not in text


def test_request_cancel_flags_and_records(store: RunStore) -> None:
    record = make(store)
    flagged = store.request_cancel(record.run_id, "cancelled in Sectra")
    assert flagged.cancel_requested is True
    assert flagged.cancel_note == "cancelled in Sectra"
    assert flagged.status is RunStatus.received  # the worker, not the webhook, ends the run
    assert store.events(record.run_id)[-1]["event"] == "cancel_requested"


def test_secrets_stay_out_of_repr_and_public_views(store: RunStore) -> None:
    record = make(store)
    record = store.update(record.run_id, upload_url="https://upload.example/session?sig=SECRETSIG")
    for view in (repr(record), str(record), str(record.public_dict()), record.model_dump_json()):
        assert CALLBACK_TOKEN not in view
        assert "SECRETSIG" not in view
    assert record.public_dict()["run_id"] == record.run_id


def test_every_key_gets_the_retention_ttl_and_writes_refresh_it(
    redis_client: redis.Redis, key_prefix: str
) -> None:
    store = RunStore(redis_client, prefix=key_prefix, retention_seconds=500)
    try:
        record = make(store)
        store.update(record.run_id, sectra_result_id=3)
        store.append_event(record.run_id, "created")
        store.transition(record.run_id, RunStatus.downloading)
        keys = list(redis_client.scan_iter(f"{key_prefix}:*"))
        # record, events, result; indexes: all, app, downloading (received emptied, so Redis dropped it)
        assert len(keys) == 6
        for key in keys:
            assert 0 < redis_client.ttl(key) <= 500, key
        record_key = f"{key_prefix}:run:{record.run_id}"
        redis_client.expire(record_key, 5)
        redis_client.expire(f"{record_key}:events", 5)
        store.update(record.run_id, message="still going")
        assert redis_client.ttl(record_key) > 400
        assert redis_client.ttl(f"{record_key}:events") > 400
        # final runs keep the TTL too: records never outlive the retention period
        store.transition(record.run_id, RunStatus.failed)
        assert 0 < redis_client.ttl(record_key) <= 500
    finally:
        for key in redis_client.scan_iter(f"{key_prefix}:*"):
            redis_client.delete(key)


def test_ping() -> None:
    dead = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5, socket_timeout=0.5)
    assert RunStore(dead).ping() is False


def test_ping_live(store: RunStore) -> None:
    assert store.ping() is True


def test_works_with_decoded_responses(redis_url: str, key_prefix: str) -> None:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    store = RunStore(client, prefix=key_prefix)
    try:
        record = make(store)
        store.transition(record.run_id, RunStatus.downloading)
        store.append_event(record.run_id, "x", n=1)
        assert store.require(record.run_id).status is RunStatus.downloading
        assert store.events(record.run_id)[0]["data"] == {"n": 1}
        assert [r.run_id for r in store.list_runs()] == [record.run_id]
    finally:
        for key in client.scan_iter(f"{key_prefix}:*"):
            client.delete(key)
        client.close()


def test_claim_step_answers_gone_claimed_busy_done(store: RunStore) -> None:
    assert (
        store.claim_step("run-none", "pending", ttl_seconds=5, done_field="pending_result").outcome == "gone"
    )
    record = make(store)
    first = store.claim_step(record.run_id, "pending", ttl_seconds=5, done_field="pending_result")
    assert first.outcome == "claimed"
    assert first.token
    assert (
        store.claim_step(record.run_id, "pending", ttl_seconds=5, done_field="pending_result").outcome
        == "busy"
    )
    store.update(record.run_id, pending_result={"id": 7})
    done = store.claim_step(record.run_id, "pending", ttl_seconds=5, done_field="pending_result")
    assert (done.outcome, done.value) == ("done", {"id": 7})
    with pytest.raises(ValueError, match="nope"):
        store.claim_step(record.run_id, "pending", ttl_seconds=5, done_field="nope")


def test_released_or_expired_leases_can_be_claimed_again(store: RunStore) -> None:
    record = make(store)
    claim = store.claim_step(record.run_id, "pending", ttl_seconds=5, done_field="pending_result")
    assert claim.token is not None
    store.release_lease(record.run_id, "pending", "not-the-holder")  # only the holder releases
    assert (
        store.claim_step(record.run_id, "pending", ttl_seconds=5, done_field="pending_result").outcome
        == "busy"
    )
    store.release_lease(record.run_id, "pending", claim.token)
    short = store.claim_step(record.run_id, "pending", ttl_seconds=0.05, done_field="pending_result")
    assert short.outcome == "claimed"
    deadline = time.monotonic() + 5
    # a holder that died never releases; its lease expires and the step can be claimed again
    while (
        store.claim_step(record.run_id, "pending", ttl_seconds=5, done_field="pending_result").outcome
        != "claimed"
    ):
        assert time.monotonic() < deadline
        time.sleep(0.02)


def test_ten_concurrent_claims_have_one_winner(store: RunStore) -> None:
    record = make(store)
    barrier = threading.Barrier(10)

    def claim(_: int) -> str:
        barrier.wait()
        return store.claim_step(record.run_id, "pending", ttl_seconds=5, done_field="pending_result").outcome

    with ThreadPoolExecutor(10) as pool:
        outcomes = list(pool.map(claim, range(10)))
    assert sorted(outcomes) == ["busy"] * 9 + ["claimed"]


def test_result_ids_are_per_app(store: RunStore) -> None:
    a = make(store, app="app-a")
    b = make(store, app="app-b")
    store.update(a.run_id, sectra_result_id=1)
    store.update(b.run_id, sectra_result_id=1)
    assert store.find_by_result("app-a", 1) == a.run_id
    assert store.find_by_result("app-b", 1) == b.run_id
    store.delete(a.run_id)
    assert store.find_by_result("app-a", 1) is None
    assert store.find_by_result("app-b", 1) == b.run_id


def test_the_scripts_also_run_on_fakeredis_for_the_demo() -> None:
    """`sectra-bridge demo` runs on fakeredis's Lua, not Redis's: the same scripts must work there."""
    import fakeredis

    store = RunStore(fakeredis.FakeRedis(), prefix="demo")
    record = make(store)
    claim = store.claim_step(record.run_id, "pending", ttl_seconds=5, done_field="pending_result")
    assert claim.token is not None
    assert store.complete_step(
        record.run_id, "pending", claim.token, event="created", event_data={"n": 1}, pending_result={"id": 3}
    )
    assert store.claim_step(record.run_id, "pending", ttl_seconds=5, done_field="pending_result").value == {
        "id": 3
    }
    store.update(record.run_id, sectra_result_id=3)
    store.transition(record.run_id, RunStatus.downloading)
    assert store.find_by_result("app-a", 3) == record.run_id
    assert [e["event"] for e in store.events(record.run_id)] == ["created"]
    assert [r.run_id for r in store.list_runs(status=RunStatus.downloading)] == [record.run_id]
    assert store.delete(record.run_id)


_FLAT_KEYS = st.sampled_from(["source", "sectra_result_id", "token", "api_key", "note", "Authorization"])
_FLAT_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),  # NaN and infinities too: the lenient encoder writes them, and so must the fast path
    st.text(max_size=40),
    st.sampled_from(["Bearer abc.def", "token=xyz", "sk-strand-123", "create"]),
)


@settings(max_examples=500, deadline=None)
@given(st.dictionaries(_FLAT_KEYS | st.text(max_size=12), _FLAT_VALUES, max_size=6))
def test_a_flat_audit_entry_is_written_as_the_general_path_writes_it(data: dict[str, object]) -> None:
    """The shortcut for flat entries against the general formula (scrub, JSON round trip, redact)."""
    from workers.observability import redact_value
    from workers.runstore import _COMPACT, _event_payload, _scrub

    general = _COMPACT.encode(redact_value(json.loads(json.dumps(_scrub(data), default=str))))
    assert _event_payload(data) == general


_ANY_PLAIN = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=30), st.just('\u00e4\x00"\\')
)


@settings(max_examples=1000, deadline=None)
@given(st.sampled_from(sorted(RunRecord.model_fields)), _ANY_PLAIN)
def test_a_plain_field_value_is_encoded_as_pydantic_validates_and_dumps_it(name: str, value: object) -> None:
    """The shortcut for values a field takes as they are, against pydantic's validate-and-dump."""
    from pydantic import TypeAdapter, ValidationError

    from workers.runstore import _COMPACT, _encode

    field = RunRecord.model_fields[name]
    adapter: TypeAdapter[object] = TypeAdapter(field.annotation)
    try:
        expected = _COMPACT.encode(adapter.dump_python(adapter.validate_python(value), mode="json"))
    except ValidationError:
        with pytest.raises(ValidationError):
            _encode({name: value})
        return
    assert _encode({name: value}) == [name, expected]


_JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=1000, deadline=None)
@given(_JSON_VALUES)
def test_the_stored_json_is_spelled_as_json_dumps_spells_it(value: object) -> None:
    from workers.runstore import _compact

    assert _compact(value) == json.dumps(value, separators=(",", ":"))
