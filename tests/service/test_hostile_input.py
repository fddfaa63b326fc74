"""Hostile input and outages against the real webhook: never a 500, never a stall, never a broken record.

Each section is one class of issue #13: header-unsafe values (2), redaction that kept JSON valid (3),
Sectra `/info` answers in our headers (4), Redis down (5), identifiers off their grammar (7).
The event-loop budget (1) has its own module, `test_event_loop_budget.py`.
"""

from __future__ import annotations

import json
import logging
import socket
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import redis
from click.testing import CliRunner
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import SecretStr
from sectra_client.schemas import ApplicationInfo

from sectra_adapter._errors import SectraError
from sectra_adapter._header_values import is_field_value, is_token68
from sectra_adapter._headers import DEFAULT_VERSIONS
from sectra_adapter._results import pending_result
from sectra_adapter._versions import VersionCache
from service.app import create_app
from service.cli import main as cli
from tests.service.conftest import (
    SECTRA_TOKEN,
    Bridge,
    BridgeFactory,
    RecordingSectra,
    ServerThread,
    bridge_apps,
)
from workers import runtime
from workers.observability import JsonFormatter
from workers.runstore import RunStore
from workers.settings import Settings, get_settings

HOSTILE = [
    'token=a"b',
    'token=a\\"b',
    'password: "x\\y"',
    "Bearer abc.def-ghi",
    "sk-strand-0123456789abcdef",
    "back\\slash \\u0022 not an escape",
    "ünïcødé ✓ 漢字 \U0001f9ea",
    'quote " and brace } and comma ,',
    "token='single'",
    "\x00\x1f control",
]
SECRETS = ["abc.def-ghi", "0123456789abcdef", "single"]


# ---- RFC 9110 grammar, written out from the ABNF (the oracle for the checks in sectra_adapter) ----

_TCHAR68 = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~+/")


def rfc_token68(value: str) -> bool:
    """RFC 9110 §11.2: token68 = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"=" ."""
    body = value.rstrip("=")
    return bool(body) and all(c in _TCHAR68 for c in body)


def rfc_field_value(value: str) -> bool:
    """RFC 9110 §5.5 field-content without obs-text: VCHAR (0x21-0x7E) at both ends, VCHAR/SP/HTAB inside."""

    def vchar(c: str) -> bool:
        return 0x21 <= ord(c) <= 0x7E

    return bool(value) and vchar(value[0]) and vchar(value[-1]) and all(vchar(c) or c in " \t" for c in value)


_HEADERISH = st.text(
    alphabet=st.sampled_from([*_TCHAR68, "=", " ", "\t", "\r", "\n", "\x00", "\x7f", "é", "€", ":", '"']),
    max_size=40,
)


@settings(max_examples=400, derandomize=True, deadline=None)
@given(_HEADERISH)
def test_header_checks_follow_the_rfc_9110_grammar(value: str) -> None:
    assert is_token68(value) == rfc_token68(value)
    assert is_field_value(value) == rfc_field_value(value)


# ---- class 2: values that cannot go into a header are the caller's error ----------------------------


@pytest.mark.parametrize(
    "token",
    ["tökén-ünicode", "abc\r\nX-Injected: 1", "abc\x00def", "two words", "", "x" * 9000],
    ids=["non-ascii", "crlf", "nul", "space", "empty", "oversized"],
)
def test_a_callback_token_that_cannot_be_a_header_is_a_422_before_any_request(
    bridge: Bridge, token: str
) -> None:
    for action in ("create", "cancel"):
        body = bridge.invocation(action, callbackInfo={"url": bridge.sectra.url, "token": token})
        response = bridge.post(body)
        assert response.status_code == 422, response.text
        assert response.json()["error"] == "invalid_invocation"
        assert "'callbackInfo.token'" in response.json()["message"]
        assert token not in response.text or not token
    assert bridge.sectra.requests == [], "nothing may leave for Sectra"
    assert bridge.store.list_runs() == []
    assert bridge.enqueued == []


def test_an_oversized_callback_url_is_a_422(bridge: Bridge) -> None:
    url = bridge.sectra.url + "/" + "a" * (1 << 16)
    response = bridge.post(bridge.invocation(callbackInfo={"url": url, "token": SECTRA_TOKEN}))
    assert response.status_code == 422
    assert "'callbackInfo.url'" in response.json()["message"]
    assert bridge.sectra.requests == []


# ---- class 3: redaction on structured values, so records and log lines stay JSON -------------------


def _log_line(message: str, **extra: Any) -> str:
    record = logging.LogRecord("bridge.test", logging.WARNING, __file__, 1, message, None, None)
    for key, value in extra.items():
        setattr(record, key, value)
    return JsonFormatter().format(record)


@pytest.mark.parametrize("hostile", HOSTILE)
def test_log_lines_stay_json_and_mask_secrets(hostile: str) -> None:
    line = _log_line(hostile, reason=hostile, detail={"nested": [hostile]})
    entry = json.loads(line)  # the oracle: the standard library's JSON parser
    for secret in SECRETS:
        assert secret not in line
    if not any(marker in hostile for marker in ("token", "password", "Bearer", "sk-strand")):
        assert entry["event"] == hostile, "text without credentials is logged as it was"
        assert entry["reason"] == hostile


def test_an_exception_message_with_a_quote_stays_json() -> None:
    try:
        raise ValueError('upstream said token="s3cr3t\\" and Bearer zzz.yyy')
    except ValueError:
        import sys

        record = logging.LogRecord("bridge.test", logging.ERROR, __file__, 1, "failed", None, sys.exc_info())
    line = JsonFormatter().format(record)
    entry = json.loads(line)
    assert "s3cr3t" not in line and "zzz.yyy" not in line
    assert "ValueError" in entry["error"]


def _created(bridge: Bridge) -> tuple[dict[str, Any], dict[str, Any], str]:
    body = bridge.invocation()
    result = bridge.post(body).json()
    run_id = bridge.store.find("strand-default", "slide-42", body["cancellationToken"])
    assert run_id is not None
    return body, result, run_id


@pytest.mark.parametrize("hostile", HOSTILE)
def test_a_hostile_modify_leaves_a_readable_audit_trail(make_bridge: BridgeFactory, hostile: str) -> None:
    bridge = make_bridge(BRIDGE_ADMIN_TOKEN="admin-secret")
    body, result, run_id = _created(bridge)
    modified = {**result, "displayResult": hostile, "data": {**result["data"], hostile: hostile}}
    answer = bridge.post({**body, "action": "modify", "input": modified})
    assert answer.status_code == 200, answer.text

    shown = bridge.client.get(f"/runs/{run_id}", headers={"Authorization": "Bearer admin-secret"})
    assert shown.status_code == 200, shown.text
    event = shown.json()["events"][-1]
    assert event["event"] == "modified_in_sectra"
    recorded = event["data"]["body"]["input"]["displayResult"]
    for secret in SECRETS:
        assert secret not in shown.text
    if not any(marker in hostile for marker in ("token", "password", "Bearer", "sk-strand")):
        assert recorded == hostile, "text without credentials is kept exactly"


def test_runs_show_prints_a_hostile_audit_trail(
    redis_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    """`sectra-bridge runs show` reads the same trail (the CLI's own store: prefix `bridge`)."""
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("BRIDGE_WORK_DIR", str(tmp_path))
    runtime.reset()
    try:
        store = runtime.context().store
        record, _ = store.create_or_get(
            app_id="strand-default",
            slide_id=f"slide-{uuid.uuid4().hex}",
            cancellation_token="ct",
            callback_url="https://sectra.example/api",
            callback_token=SECTRA_TOKEN,
            source="create",
        )
        for hostile in HOSTILE:
            store.append_event(record.run_id, "modified_in_sectra", body={"displayResult": hostile})
        outcome = CliRunner().invoke(cli, ["runs", "show", record.run_id])
        assert outcome.exit_code == 0, outcome.output
        lines = outcome.output.split("events:\n", 1)[1].splitlines()
        events = [json.loads(line) for line in lines]
        assert [e["event"] for e in events] == ["modified_in_sectra"] * len(HOSTILE)
        assert events[-4]["data"]["body"]["displayResult"] == HOSTILE[-4]
        for secret in SECRETS:
            assert secret not in outcome.output
        store.delete(record.run_id)
    finally:
        runtime.reset()
        get_settings.cache_clear()


# ---- class 4: what Sectra's /info answers is checked before it becomes our header ------------------


class OddInfoSectra(RecordingSectra):
    """A Sectra whose `/info` answers versions that are not header values."""

    def __init__(self, api_version: str, software_version: str = "4.2") -> None:
        super().__init__()
        self.versions = {"apiVersion": api_version, "softwareVersion": software_version}

    def create_app(self) -> FastAPI:
        app = super().create_app()

        @app.middleware("http")
        async def odd_info(request: Request, call_next: Callable[[Request], Any]) -> Response:
            if request.url.path.endswith("/info"):
                self.requests.append((request.method, request.url.path))
                return JSONResponse(self.versions)
            response: Response = await call_next(request)
            return response

        return app


@pytest.fixture
def odd_sectra(request: pytest.FixtureRequest) -> Iterator[OddInfoSectra]:
    server = OddInfoSectra(*request.param)
    server.run(port=0, host="127.0.0.1")
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.parametrize(
    "odd_sectra",
    [("1.10\r\nX-Evil: 1",), ("1.10", "sëctra-ünicode"), ("1.10", "☃"), ("x" * 300,), (" 1.10",), ("",)],
    indirect=True,
    ids=["crlf", "latin-1", "non-latin-1", "oversized", "leading-space", "empty"],
)
def test_bad_sectra_versions_fall_back_to_ours_and_never_fail_the_create(
    odd_sectra: OddInfoSectra,
    redis_client: redis.Redis,
    key_prefix: str,
    tmp_path: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings_ = Settings(
        SECTRA_ALLOWED_CALLBACK_URLS=odd_sectra.url, SECTRA_ALLOW_HTTP=True, BRIDGE_WORK_DIR=tmp_path
    )
    store = RunStore(redis_client, prefix=key_prefix)
    enqueued: list[str] = []
    app = create_app(settings_, bridge_apps(), store=store, enqueue=enqueued.append)
    caplog.set_level(logging.WARNING)
    with ServerThread(app) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        for n in range(2):
            body = {
                "action": "create",
                "applicationId": "strand-default",
                "slideId": f"slide-{n}",
                "callbackInfo": {"url": odd_sectra.url, "token": SECTRA_TOKEN},
                "cancellationToken": f"ct-{n}",
                "input": {"type": "wholeSlide"},
            }
            response = client.post("/sectra/strand-default", json=body)
            assert response.status_code == 200, response.text
            assert response.headers["x-sectra-apiversion"] == DEFAULT_VERSIONS.apiVersion
            assert response.headers["x-sectra-softwareversion"] == DEFAULT_VERSIONS.softwareVersion
            assert "x-evil" not in response.headers
    assert len(enqueued) == 2, "both runs were created"
    for key in redis_client.scan_iter(f"{key_prefix}:*"):
        redis_client.delete(key)
    warnings = [r.getMessage() for r in caplog.records if "versions" in r.getMessage()]
    assert warnings, "the fallback is logged"
    for value in odd_sectra.versions.values():
        assert not value or not any(value in w for w in warnings), "the warning never echoes the value"


def test_a_bad_info_answer_is_not_cached() -> None:
    """Only valid versions are cached; a bad answer is retried after the failure backoff, not an hour."""
    now = [0.0]
    cache = VersionCache(ttl=3600, failure_backoff=60, clock=lambda: now[0])
    answers = iter([ApplicationInfo(apiVersion="1.10\r\n", softwareVersion="x"), DEFAULT_VERSIONS])
    calls = []

    def fetch() -> ApplicationInfo:
        calls.append(1)
        return next(answers)

    fallback = ApplicationInfo(apiVersion="fallback", softwareVersion="fallback")
    assert cache.get("s", fetch, fallback=fallback) == fallback
    assert cache.fresh("s") is None
    now[0] = 61
    assert cache.get("s", fetch, fallback=fallback) == DEFAULT_VERSIONS
    assert len(calls) == 2


def test_an_info_answer_that_is_not_application_info_falls_back() -> None:
    cache = VersionCache()

    def fetch() -> ApplicationInfo:
        return ApplicationInfo.model_validate({"apiVersion": None})

    assert cache.get("s", fetch, fallback=DEFAULT_VERSIONS) == DEFAULT_VERSIONS
    with pytest.raises(SectraError):  # no fallback: the caller gets the adapter's own error
        VersionCache().get("t", fetch)


# ---- class 5: Redis down is a 503 with Retry-After on every route -----------------------------------


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def redis_down_bridge(sectra: RecordingSectra, tmp_path: Any) -> Iterator[tuple[httpx.Client, list[str]]]:
    dead = redis.Redis(port=_closed_port(), socket_connect_timeout=0.5, socket_timeout=0.5)
    settings_ = Settings(
        SECTRA_ALLOWED_CALLBACK_URLS=sectra.url,
        SECTRA_ALLOW_HTTP=True,
        BRIDGE_WORK_DIR=tmp_path,
        BRIDGE_ADMIN_TOKEN=SecretStr("admin-secret"),
    )
    enqueued: list[str] = []
    app = create_app(settings_, bridge_apps(), store=RunStore(dead), enqueue=enqueued.append)
    with ServerThread(app) as server, httpx.Client(base_url=server.url, timeout=30) as client:
        yield client, enqueued


def test_redis_down_is_a_503_with_retry_after_everywhere(
    redis_down_bridge: tuple[httpx.Client, list[str]], sectra: RecordingSectra
) -> None:
    client, enqueued = redis_down_bridge
    base = {
        "applicationId": "strand-default",
        "slideId": "slide-42",
        "callbackInfo": {"url": sectra.url, "token": SECTRA_TOKEN},
        "cancellationToken": "ct-1",
    }
    stored = {**pending_result("slide-42", "1.0.0").model_dump(mode="json"), "id": 1, "versionId": "v1"}
    calls = [
        ("POST", "/sectra/strand-default", {**base, "action": "create", "input": {"type": "wholeSlide"}}),
        ("POST", "/sectra/strand-default", {**base, "action": "cancel"}),
        ("POST", "/sectra/strand-default", {**base, "action": "modify", "input": stored}),
        ("POST", "/sectra/strand-default", {**base, "action": "delete", "input": stored}),
        ("GET", "/runs", None),
        ("GET", "/runs/run-0123456789abcdef01234567", None),
    ]
    auth = {"Authorization": "Bearer admin-secret"}
    for method, path, body in calls:
        response = client.request(method, path, json=body, headers=auth)
        assert response.status_code == 503, (path, body and body["action"], response.text)
        assert response.json()["error"] == "redis_unavailable"
        assert "Redis" in response.json()["message"]
        assert int(response.headers["retry-after"]) > 0
        if path.startswith("/sectra"):
            assert response.headers["x-sectra-apiversion"], "answers to Sectra carry its headers"
    assert sectra.result_posts() == 0, "no pending result was stored in Sectra"
    assert enqueued == []

    ready = client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["missing"] == ["redis"]
    assert ready.json()["checks"]["redis"]["ok"] is False
    assert int(ready.headers["retry-after"]) > 0


# ---- class 7: identifiers are checked against their grammar where they enter ------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("slideId", ""),
        ("slideId", "   "),
        ("slideId", "s" * 300),
        ("slideId", "slide\n42"),
        ("cancellationToken", ""),
        ("cancellationToken", "c" * 300),
        ("cancellationToken", "tab\there"),
    ],
)
def test_empty_or_odd_ids_are_a_422_and_start_no_run(bridge: Bridge, field: str, value: str) -> None:
    for action in ("create", "cancel"):
        response = bridge.post(bridge.invocation(action, **{field: value}))
        assert response.status_code == 422, response.text
        assert f"'{field}'" in response.json()["message"]
    notify = bridge.invocation("newImageFiles", applicationId="strand-notify", **{field: value})
    response = bridge.client.post("/sectra/strand-notify/imagenotification", json=notify)
    assert response.status_code == 422
    assert bridge.sectra.requests == []
    assert bridge.store.list_runs() == []
    assert bridge.enqueued == []


def test_admin_run_ids_off_the_grammar_are_a_400_not_a_500(make_bridge: BridgeFactory) -> None:
    bridge = make_bridge(BRIDGE_ADMIN_TOKEN="admin-secret")
    auth = {"Authorization": "Bearer admin-secret"}
    _, _, run_id = _created(bridge)
    bridge.store.append_event(run_id, "something")  # the `:events` stream exists
    for odd in (f"{run_id}:events", f"{run_id}:lease:pending-result", "run-", "x" * 5000, "run-ABC"):
        response = bridge.client.get(f"/runs/{odd}", headers=auth)
        assert response.status_code == 400, (odd, response.text)
        assert response.json()["error"] == "invalid_run_id"
    assert bridge.client.get(f"/runs/{run_id}", headers=auth).status_code == 200
    odd_app = bridge.client.get("/runs", params={"app": "x:y" * 100}, headers=auth)
    assert odd_app.status_code == 400
    assert odd_app.json()["error"] == "invalid_app_id"


def test_the_cli_refuses_run_ids_off_the_grammar() -> None:
    outcome = CliRunner().invoke(cli, ["runs", "show", "run-x:events"])
    assert outcome.exit_code == 2
    assert "run-" in outcome.output


def test_the_run_store_never_turns_an_odd_id_into_a_key(redis_client: redis.Redis, key_prefix: str) -> None:
    store = RunStore(redis_client, prefix=key_prefix)
    record, _ = store.create_or_get(
        app_id="a",
        slide_id="s",
        cancellation_token="c",
        callback_url="u",
        callback_token="t",
        source="create",
    )
    store.append_event(record.run_id, "e")
    odd = f"{record.run_id}:events"
    assert store.get(odd) is None
    assert store.events(odd) == []
    assert store.append_event(odd, "x") is None
    assert store.claim_step(odd, "p", ttl_seconds=1, done_field="pending_result").outcome == "gone"
    assert store.delete(odd) is False
    assert [e["event"] for e in store.events(record.run_id)] == ["e"]
    store.delete(record.run_id)


@pytest.mark.parametrize("key", ["sk-strand-ünicode", "sk-strand-a b", "sk-strand-a\r\nX: 1"])
def test_a_strand_key_that_cannot_be_a_header_is_refused_at_start_up(key: str) -> None:
    with pytest.raises(ValueError, match="STRAND_API_KEY") as refused:
        Settings(STRAND_API_KEY=SecretStr(key))
    assert key not in str(refused.value), "the secret is not echoed"


@pytest.mark.parametrize("count", [499, 500, 501, 1001])
def test_the_audit_trail_is_read_whole_and_in_order_across_pages(
    redis_client: redis.Redis, key_prefix: str, count: int
) -> None:
    """`events()` reads in pages (so no reply is parsed in one GIL-holding call); none is lost or repeated."""
    store = RunStore(redis_client, prefix=key_prefix)
    record, _ = store.create_or_get(
        app_id="a",
        slide_id="s",
        cancellation_token="c",
        callback_url="u",
        callback_token="t",
        source="create",
    )
    for n in range(count):
        store.append_event(record.run_id, "e", n=n)
    events = store.events(record.run_id)
    assert [e["data"]["n"] for e in events] == list(range(count))
    assert len({e["id"] for e in events}) == count
    store.delete(record.run_id)
