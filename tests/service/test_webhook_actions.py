"""cancel, modify, delete and image notifications, over HTTP against Sectra's mock and a real Redis."""

from __future__ import annotations

from typing import Any

from tests.service.conftest import NOTIFY_APP, SECTRA_TOKEN, Bridge, BridgeFactory, slide_metadata
from workers.runstore import RunStatus, run_id_for


def _created(bridge: Bridge, app_id: str = "strand-default") -> tuple[dict[str, Any], dict[str, Any], str]:
    body = bridge.invocation(applicationId=app_id)
    response = bridge.post(body, app_id=app_id)
    assert response.status_code == 200, response.text
    return body, response.json(), run_id_for(app_id, body["slideId"], body["cancellationToken"])


def test_cancel_flags_the_run_and_wakes_it(bridge: Bridge) -> None:
    body, _, run_id = _created(bridge)
    response = bridge.post({**body, "action": "cancel"})
    assert response.status_code == 200
    assert response.json() == {"note": "cancellation requested"}
    assert response.headers["X-Sectra-ApiVersion"] == bridge.sectra.api_version
    record = bridge.store.require(run_id)
    assert record.cancel_requested is True
    assert record.status is RunStatus.received  # the worker, at its next checkpoint, ends the run
    assert bridge.enqueued == [run_id, run_id]
    assert bridge.store.events(run_id)[-1]["event"] == "cancel_requested"


def test_cancel_of_a_finished_run_is_acknowledged_without_waking_it(bridge: Bridge) -> None:
    body, _, run_id = _created(bridge)
    bridge.store.transition(run_id, RunStatus.cancelled)
    response = bridge.post({**body, "action": "cancel"})
    assert response.status_code == 200
    assert "already cancelled" in response.json()["note"]
    assert bridge.enqueued == [run_id]


def test_cancel_of_an_unknown_run_is_acknowledged(bridge: Bridge) -> None:
    response = bridge.post(bridge.invocation(action="cancel"))
    assert response.status_code == 200
    assert "no run" in response.json()["note"]
    assert bridge.store.list_runs() == []
    assert bridge.enqueued == []


def test_modify_goes_into_the_audit_trail_without_tokens(bridge: Bridge) -> None:
    body, result, run_id = _created(bridge)
    modified = {**result, "displayResult": "CD8 12% (edited by pathologist)"}
    response = bridge.post({**body, "action": "modify", "input": modified})
    assert response.status_code == 200
    assert response.json() == {"note": "modification recorded"}
    event = bridge.store.events(run_id)[-1]
    assert event["event"] == "modified_in_sectra"
    assert event["data"]["body"]["input"]["displayResult"] == "CD8 12% (edited by pathologist)"
    assert event["data"]["body"]["callbackInfo"] == {"url": bridge.sectra.url}
    assert SECTRA_TOKEN not in repr(event)
    assert body["cancellationToken"] not in repr(event)


def test_modify_of_an_unknown_run_is_acknowledged(bridge: Bridge) -> None:
    _, result, _ = _created(bridge)
    response = bridge.post(bridge.invocation(action="modify", input=result))
    assert response.status_code == 200
    assert "no run" in response.json()["note"]


def test_delete_by_cancellation_token_removes_record_and_staged_files(bridge: Bridge) -> None:
    body, result, run_id = _created(bridge)
    staged = bridge.settings.work_dir / run_id / "staged"
    staged.mkdir(parents=True)
    (staged / "slide.svs").write_bytes(b"slide bytes")
    response = bridge.post({**body, "action": "delete", "input": result})
    assert response.status_code == 200
    assert response.json() == {"note": "run deleted"}
    assert bridge.store.get(run_id) is None
    assert bridge.store.events(run_id) == []
    assert bridge.store.list_runs() == []
    assert (staged / "slide.svs").exists(), "the web role never touches slide files"
    from workers.janitor import sweep
    from workers.staging import Staging

    sweep(bridge.store, Staging(bridge.settings.work_dir), retention_seconds=86400)
    assert not (bridge.settings.work_dir / run_id).exists(), "the worker's janitor removes them"


def test_delete_by_result_id_when_sectra_sends_no_token(bridge: Bridge) -> None:
    body, result, run_id = _created(bridge)
    bridge.store.transition(run_id, RunStatus.downloading)
    delete = {k: v for k, v in body.items() if k != "cancellationToken"}
    response = bridge.post({**delete, "action": "delete", "input": result})
    assert response.status_code == 200
    assert bridge.store.get(run_id) is None


def test_delete_of_an_unknown_result_is_acknowledged(bridge: Bridge) -> None:
    _, result, run_id = _created(bridge)
    other = {**result, "id": result["id"] + 100}
    response = bridge.post(bridge.invocation(action="delete", input=other, cancellationToken=None))
    assert response.status_code == 200
    assert "no run" in response.json()["note"]
    assert bridge.store.get(run_id) is not None


def _notify(bridge: Bridge, app_id: str, stain: str = "H&E") -> dict[str, Any]:
    body = bridge.invocation(
        action="newImageFiles",
        applicationId=app_id,
        imageInfo=slide_metadata(stain=stain).model_dump(mode="json"),
    )
    response = bridge.client.post(f"/sectra/{app_id}/imagenotification", json=body)
    assert response.status_code == 200, response.text
    assert response.json() == {}
    assert response.headers["X-Sectra-ApiVersion"]
    return body


def test_image_notification_ignored_when_the_app_does_not_opt_in(bridge: Bridge) -> None:
    _notify(bridge, "strand-default")
    assert bridge.store.list_runs() == []
    assert bridge.enqueued == []
    assert bridge.sectra.requests == []


def test_image_notification_ignored_when_the_slide_fails_the_gate(bridge: Bridge) -> None:
    _notify(bridge, NOTIFY_APP, stain="Ki67 IHC")
    assert bridge.store.list_runs() == []
    assert bridge.sectra.requests == []


def test_image_notification_starts_a_run_for_an_opted_in_app(bridge: Bridge) -> None:
    body = _notify(bridge, NOTIFY_APP)
    run_id = run_id_for(NOTIFY_APP, "slide-42", body["cancellationToken"])
    record = bridge.store.require(run_id)
    assert record.source == "newImageFiles"
    assert record.sectra_result_id is not None
    assert len(bridge.sectra.get_results(NOTIFY_APP, "slide-42")) == 1
    assert bridge.enqueued == [run_id]
    again = bridge.client.post(f"/sectra/{NOTIFY_APP}/imagenotification", json=body)
    assert again.status_code == 200
    assert bridge.enqueued == [run_id]  # a repeated notification is the same run


def test_image_notification_with_a_refused_callback(make_bridge: BridgeFactory) -> None:
    bridge = make_bridge(SECTRA_ALLOWED_CALLBACK_URLS="https://pacs.example/")
    body = bridge.invocation(action="newImageFiles", applicationId=NOTIFY_APP)
    response = bridge.client.post(f"/sectra/{NOTIFY_APP}/imagenotification", json=body)
    assert response.status_code == 403
    assert response.json()["error"] == "callback_url_refused"
    assert bridge.sectra.requests == []
    assert bridge.store.list_runs() == []


def test_cancel_is_recorded_even_when_the_queue_is_down(make_bridge: BridgeFactory) -> None:
    def broken(_: str) -> None:
        raise ConnectionError("broker down")

    bridge = make_bridge(enqueue=broken)
    body, _, run_id = _created(bridge)
    response = bridge.post({**body, "action": "cancel"})
    assert response.status_code == 200
    assert response.json() == {"note": "cancellation requested"}
    assert bridge.store.require(run_id).cancel_requested is True
