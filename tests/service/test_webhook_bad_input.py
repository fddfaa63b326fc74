"""Every kind of bad input gets a 4xx JSON answer naming the problem: never a 500, never a run."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from tests.service.conftest import Bridge


def _assert_refused(response: httpx.Response, status: int, error: str, *words: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "message"}
    assert body["error"] == error
    for word in words:
        assert word in body["message"], body["message"]


@pytest.fixture(autouse=True)
def nothing_happened(bridge: Bridge) -> Any:
    yield
    assert bridge.store.list_runs() == []
    assert bridge.enqueued == []
    assert bridge.sectra.requests == []


def raw(
    bridge: Bridge,
    content: bytes,
    content_type: str = "application/json",
    path: str = "/sectra/strand-default",
) -> httpx.Response:
    return bridge.client.post(path, content=content, headers={"Content-Type": content_type})


def test_malformed_json(bridge: Bridge) -> None:
    _assert_refused(raw(bridge, b'{"action": "create",'), 400, "malformed_json", "not valid JSON")


def test_empty_body(bridge: Bridge) -> None:
    _assert_refused(raw(bridge, b""), 400, "malformed_json")


def test_json_that_is_not_an_object(bridge: Bridge) -> None:
    _assert_refused(raw(bridge, b"[1, 2]"), 422, "invalid_invocation", "JSON object")


def test_unknown_action(bridge: Bridge) -> None:
    _assert_refused(bridge.post(bridge.invocation(action="explode")), 400, "unknown_action", "create")


def test_missing_action(bridge: Bridge) -> None:
    body = bridge.invocation()
    del body["action"]
    _assert_refused(bridge.post(body), 422, "invalid_invocation", "'action'")


def test_missing_fields_are_named(bridge: Bridge) -> None:
    body = bridge.invocation()
    del body["slideId"]
    del body["callbackInfo"]["url"]
    response = bridge.post(body)
    _assert_refused(response, 422, "invalid_invocation", "'slideId'", "'callbackInfo.url'")
    assert "create" not in response.json()["message"].split("'")  # no discriminator noise in field paths


def test_wrong_input_type_is_named(bridge: Bridge) -> None:
    _assert_refused(
        bridge.post(bridge.invocation(input={"type": "confetti"})), 422, "invalid_invocation", "'input"
    )


def test_messages_do_not_echo_values(bridge: Bridge) -> None:
    body = bridge.invocation(slideId=12345678, cancellationToken=["PATIENT-NAME-DOE"])
    response = bridge.post(body)
    _assert_refused(response, 422, "invalid_invocation", "'slideId'", "'cancellationToken'")
    assert "PATIENT-NAME-DOE" not in response.text
    assert "12345678" not in response.text


def test_app_id_mismatch(bridge: Bridge) -> None:
    body = bridge.invocation(applicationId="someone-else")
    _assert_refused(bridge.post(body), 400, "app_id_mismatch", "applicationId")


def test_unknown_app(bridge: Bridge) -> None:
    body = bridge.invocation(applicationId="no-such-app")
    response = bridge.post(body, app_id="no-such-app")
    _assert_refused(response, 404, "unknown_app", "no-such-app")
    assert response.headers["X-Sectra-ApiVersion"]


def test_oversized_body(bridge: Bridge) -> None:
    body = bridge.invocation(context={"padding": "x" * (1 << 20)})
    _assert_refused(bridge.post(body), 413, "body_too_large", str(1 << 20))


def test_oversized_body_without_content_length(bridge: Bridge) -> None:
    def chunks() -> Any:
        yield b'{"padding": "'
        for _ in range(20):
            yield b"x" * 65536
        yield b'"}'

    response = bridge.client.post(
        "/sectra/strand-default", content=chunks(), headers={"Content-Type": "application/json"}
    )
    _assert_refused(response, 413, "body_too_large")


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", ""])
def test_wrong_content_type(bridge: Bridge, content_type: str) -> None:
    body = json.dumps(bridge.invocation()).encode()
    _assert_refused(raw(bridge, body, content_type), 415, "unsupported_media_type", "application/json")


def test_json_with_charset_is_fine_but_still_validated(bridge: Bridge) -> None:
    body = json.dumps(bridge.invocation(action="nope")).encode()
    _assert_refused(raw(bridge, body, "application/json; charset=utf-8"), 400, "unknown_action")


def test_image_notification_on_the_invocation_route(bridge: Bridge) -> None:
    body = bridge.invocation(action="newImageFiles")
    _assert_refused(bridge.post(body), 400, "unexpected_action", "imagenotification")


def test_create_on_the_notification_route(bridge: Bridge) -> None:
    response = bridge.client.post("/sectra/strand-default/imagenotification", json=bridge.invocation())
    _assert_refused(response, 400, "unexpected_action", "newImageFiles")


def test_wrong_method(bridge: Bridge) -> None:
    response = bridge.client.put("/sectra/strand-default", json=bridge.invocation())
    _assert_refused(response, 405, "method_not_allowed", "PUT")
    assert response.headers["X-Sectra-ApiVersion"]


def test_unknown_route(bridge: Bridge) -> None:
    _assert_refused(bridge.client.get("/sectra/strand-default/nothing/here"), 404, "not_found")
    _assert_refused(bridge.client.get("/nowhere"), 404, "not_found")


def test_bad_inputs_never_produce_a_500(bridge: Bridge) -> None:
    samples: list[bytes] = [
        b"null",
        b"0",
        b'"create"',
        b"{}",
        b'{"action": null}',
        b'{"action": "create", "input": null}',
        b'{"action": "create", "callbackInfo": "x"}',
        b'{"action": "delete", "input": {"id": "not-int"}}',
        b'{"action": "modify", "input": []}',
        b"\xff\xfe\x00",
        b'{"action": "create"' + b"]" * 1000,
        b"[" * 5000,
    ]
    for sample in samples:
        response = raw(bridge, sample)
        assert 400 <= response.status_code < 500, (sample[:40], response.status_code, response.text)
        assert set(response.json()) == {"error", "message"}
