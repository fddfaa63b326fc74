"""`create` end to end over HTTP: pending result stored in Sectra, run recorded, enqueued, idempotent."""

from __future__ import annotations

import logging
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from sectra_client.schemas import ResultResponse

from tests.service.conftest import SECTRA_TOKEN, Bridge, BridgeFactory
from workers.runstore import RunStatus, run_id_for


def test_create_stores_pending_result_records_and_enqueues(bridge: Bridge) -> None:
    body = bridge.invocation()
    response = bridge.post(body)

    assert response.status_code == 200, response.text
    answer = ResultResponse.model_validate(response.json())
    stored = bridge.sectra.get_results("strand-default", "slide-42")
    assert len(stored) == 1
    assert answer.id == stored[0].id
    assert answer.versionId == stored[0].versionId
    assert answer.slideId == "slide-42"
    # Sectra's versions, as its /info reports them, on our answer
    assert response.headers["X-Sectra-ApiVersion"] == bridge.sectra.api_version
    assert response.headers["X-Sectra-SoftwareVersion"] == bridge.sectra.software_version

    run_id = run_id_for("strand-default", "slide-42", body["cancellationToken"])
    record = bridge.store.require(run_id)
    assert record.status is RunStatus.received
    assert record.source == "create"
    assert record.sectra_result_id == answer.id
    assert record.sectra_version_id == answer.versionId
    assert record.pending_result == response.json()
    assert record.callback_token == SECTRA_TOKEN
    assert bridge.enqueued == [run_id]
    events = bridge.store.events(run_id)
    assert [e["event"] for e in events] == ["created"]
    assert SECTRA_TOKEN not in repr(events)


def test_a_run_deleted_while_its_result_is_stored_is_answered_but_not_started(bridge: Bridge) -> None:
    """An operator's (or a `delete` invocation's) delete lands between the POST to Sectra and the
    record: Sectra's result is the answer, and nothing is recorded or queued for the gone run."""
    body = bridge.invocation(cancellationToken="ct-deleted-meanwhile")
    run_id = run_id_for("strand-default", "slide-42", "ct-deleted-meanwhile")
    bridge.sectra.on_result_post = lambda: bridge.store.delete(run_id)

    response = bridge.post(body)

    assert response.status_code == 200, response.text
    stored = bridge.sectra.get_results("strand-default", "slide-42")
    assert [r.id for r in stored] == [response.json()["id"]]
    assert bridge.store.get(run_id) is None  # not brought back by the record write
    assert bridge.enqueued == []


def test_repeated_create_is_the_same_run_and_the_same_answer(bridge: Bridge) -> None:
    body = bridge.invocation()
    first = bridge.post(body)
    second = bridge.post(body)
    assert first.status_code == second.status_code == 200
    assert first.json() == second.json()
    assert second.headers["X-Sectra-ApiVersion"] == bridge.sectra.api_version
    assert bridge.sectra.result_posts() == 1
    assert len(bridge.enqueued) == 1
    assert len(bridge.store.list_runs()) == 1


def test_ten_concurrent_duplicates_make_one_run_one_result_one_enqueue(bridge: Bridge) -> None:
    body = bridge.invocation()
    barrier = threading.Barrier(10)

    def fire(_: int) -> httpx.Response:
        with httpx.Client(base_url=bridge.url, timeout=30) as client:
            barrier.wait()
            return client.post("/sectra/strand-default", json=body)

    with ThreadPoolExecutor(10) as pool:
        responses = list(pool.map(fire, range(10)))

    assert [r.status_code for r in responses] == [200] * 10
    assert len({r.text for r in responses}) == 1
    assert bridge.sectra.result_posts() == 1
    assert len(bridge.sectra.get_results("strand-default", "slide-42")) == 1
    assert len(bridge.enqueued) == 1
    assert len(bridge.store.list_runs()) == 1


def test_a_new_cancellation_token_is_a_new_run(bridge: Bridge) -> None:
    first = bridge.post(bridge.invocation())
    second = bridge.post(bridge.invocation())
    assert first.json()["id"] != second.json()["id"]
    assert len(bridge.enqueued) == 2
    assert len(bridge.store.list_runs()) == 2


def test_callback_url_outside_allow_list_is_refused_before_any_request(
    make_bridge: BridgeFactory,
) -> None:
    bridge = make_bridge(SECTRA_ALLOWED_CALLBACK_URLS="https://pacs.hospital.example/ia")
    response = bridge.post(bridge.invocation())
    assert response.status_code == 403
    assert response.json()["error"] == "callback_url_refused"
    assert "SECTRA_ALLOWED_CALLBACK_URLS" in response.json()["message"]
    assert response.headers["X-Sectra-ApiVersion"]  # defaults: we may not ask that server
    assert bridge.sectra.requests == []
    assert bridge.store.list_runs() == []
    assert bridge.enqueued == []


def test_plain_http_callback_is_refused_unless_allowed(make_bridge: BridgeFactory) -> None:
    bridge = make_bridge(SECTRA_ALLOW_HTTP=False)
    response = bridge.post(bridge.invocation())
    assert response.status_code == 403
    assert "SECTRA_ALLOW_HTTP" in response.json()["message"]
    assert bridge.sectra.requests == []


def test_empty_allow_list_refuses_every_callback(make_bridge: BridgeFactory) -> None:
    bridge = make_bridge(SECTRA_ALLOWED_CALLBACK_URLS="")
    response = bridge.post(bridge.invocation())
    assert response.status_code == 403
    assert bridge.sectra.requests == []


def test_sectra_failing_leaves_no_half_created_run(bridge: Bridge) -> None:
    """Sectra down while storing the pending result: 503 with Retry-After (RFC 9110 §15.6.4), no run."""
    bridge.sectra.fail_creates = True
    body = bridge.invocation()
    response = bridge.post(body)
    assert response.status_code == 503
    assert response.json()["error"] == "sectra_unavailable"
    assert "503" in response.json()["message"]
    assert int(response.headers["retry-after"]) > 0
    assert response.headers["x-sectra-apiversion"]
    assert bridge.store.list_runs() == []
    assert bridge.store.find("strand-default", "slide-42", body["cancellationToken"]) is None
    assert bridge.enqueued == []

    bridge.sectra.fail_creates = False  # Sectra retries once it is back: now it works
    again = bridge.post(body)
    assert again.status_code == 200
    assert len(bridge.enqueued) == 1


def test_sectra_unreachable_is_503_and_no_run(make_bridge: BridgeFactory) -> None:
    closed = "http://127.0.0.1:9"  # discard port: nothing listens
    bridge = make_bridge(SECTRA_ALLOWED_CALLBACK_URLS=closed)
    response = bridge.post(bridge.invocation(callbackInfo={"url": closed, "token": SECTRA_TOKEN}))
    assert response.status_code == 503
    assert response.json()["error"] == "sectra_unavailable"
    assert int(response.headers["retry-after"]) > 0
    assert bridge.store.list_runs() == []
    assert bridge.enqueued == []


def test_enqueue_failure_still_answers_and_records_for_recovery(make_bridge: BridgeFactory) -> None:
    def broken(_: str) -> None:
        raise ConnectionError("broker down")

    bridge = make_bridge(enqueue=broken)
    body = bridge.invocation()
    response = bridge.post(body)
    assert response.status_code == 200
    run_id = run_id_for("strand-default", "slide-42", body["cancellationToken"])
    assert bridge.store.require(run_id).pending_result == response.json()
    assert [e["event"] for e in bridge.store.events(run_id)] == ["created", "enqueue_failed"]


def test_webhook_token_required_when_configured(make_bridge: BridgeFactory) -> None:
    bridge = make_bridge(BRIDGE_WEBHOOK_TOKEN="hook-secret")
    body = bridge.invocation()
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic hook-secret"}):
        refused = bridge.post(body, headers=headers)
        assert refused.status_code == 401
        assert refused.json()["error"] == "unauthorized"
        assert refused.headers["WWW-Authenticate"] == "Bearer"
        assert refused.headers["X-Sectra-ApiVersion"]
    assert bridge.sectra.requests == []
    accepted = bridge.post(body, headers={"Authorization": "Bearer hook-secret"})
    assert accepted.status_code == 200
    assert len(bridge.enqueued) == 1


def test_no_webhook_token_configured_means_no_auth(bridge: Bridge) -> None:
    assert bridge.post(bridge.invocation(), headers={"Authorization": "Bearer anything"}).status_code == 200


def test_no_token_reaches_the_logs(make_bridge: BridgeFactory, caplog: pytest.LogCaptureFixture) -> None:
    bridge = make_bridge(BRIDGE_WEBHOOK_TOKEN="hook-secret")
    caplog.set_level(logging.DEBUG)
    auth = {"Authorization": "Bearer hook-secret"}
    bridge.post(bridge.invocation(), headers=auth)
    bridge.sectra.fail_creates = True
    bridge.post(bridge.invocation(), headers=auth)
    text = "\n".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    assert "run created" in text  # the log is there...
    assert "could not store the pending result" in text
    assert SECTRA_TOKEN not in text  # ...without the secrets
    assert "hook-secret" not in text


def test_a_run_left_without_its_pending_result_is_taken_over(bridge: Bridge) -> None:
    """A webhook process killed after recording the run but before Sectra answered: Sectra's retry
    finds the run with no pending result and no lease holder, and finishes the job."""
    body = bridge.invocation()
    record, created = bridge.store.create_or_get(
        app_id="strand-default",
        slide_id="slide-42",
        cancellation_token=body["cancellationToken"],
        callback_url=bridge.sectra.url,
        callback_token=SECTRA_TOKEN,
        source="create",
    )
    assert created
    response = bridge.post(body)
    assert response.status_code == 200
    assert bridge.store.require(record.run_id).pending_result == response.json()
    assert bridge.sectra.result_posts() == 1
    assert bridge.enqueued == [record.run_id]


def test_a_duplicate_gives_up_while_the_first_is_still_busy(
    bridge: Bridge, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A live holder (here: a lease taken and never released) keeps duplicates from calling Sectra;
    they answer 503 with Retry-After instead of waiting forever."""
    monkeypatch.setattr("service.webhook.DUPLICATE_WAIT_SECONDS", 0.3)
    body = bridge.invocation()
    record, _ = bridge.store.create_or_get(
        app_id="strand-default",
        slide_id="slide-42",
        cancellation_token=body["cancellationToken"],
        callback_url=bridge.sectra.url,
        callback_token=SECTRA_TOKEN,
        source="create",
    )
    held = bridge.store.claim_step(
        record.run_id, "pending-result", ttl_seconds=30, done_field="pending_result"
    )
    assert held.outcome == "claimed"
    response = bridge.post(body)
    assert response.status_code == 503
    assert response.json()["error"] == "still_processing"
    assert response.headers["Retry-After"] == "2"
    assert response.headers["X-Sectra-ApiVersion"] == bridge.sectra.api_version
    assert bridge.sectra.result_posts() == 0
    assert bridge.enqueued == []
