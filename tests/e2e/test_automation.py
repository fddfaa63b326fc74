"""Automation that respects the lab, end to end: real webhook, real worker, MockSectraServer, fake Strand."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
from sectra_client.schemas.quality_control import QualityControlData, QualityControlStatus

from tests.e2e.conftest import APP, AUTO_APP, Bridge, slide_metadata
from workers import messages
from workers.runstore import RunStatus


def _notification(bridge: Bridge, slide_id: str, qc: QualityControlStatus) -> dict[str, Any]:
    """A `newImageFiles` invocation as Sectra sends it: the image info, QC verdict included, in the body."""
    info = slide_metadata(slide_id, 1024, 768)
    info.qualityControl = QualityControlData(status=qc, versionId=f"qc-{slide_id}")
    bridge.sectra.add_slide(info)  # what the worker reads back from Sectra for the same slide
    return {
        "action": "newImageFiles",
        "applicationId": AUTO_APP,
        "slideId": slide_id,
        "callbackInfo": {"url": bridge.sectra.url, "token": bridge.sectra.token},
        "cancellationToken": str(uuid.uuid4()),
        "imageInfo": info.model_dump(mode="json"),
    }


def _notify(bridge: Bridge, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{bridge.webhook_url}/sectra/{AUTO_APP}/imagenotification", json=body, timeout=30)


def test_a_rejected_slide_notified_by_sectra_costs_no_job(bridge: Bridge) -> None:
    bridge.add_slide("slide-rejected")
    rejected = _notification(bridge, "slide-rejected", QualityControlStatus.REJECTED)
    answer = _notify(bridge, rejected)
    assert answer.status_code == 200, answer.text
    assert answer.json() == {}
    assert bridge.store.find(AUTO_APP, "slide-rejected", rejected["cancellationToken"]) is None
    assert bridge.results("slide-rejected", app=AUTO_APP) == []

    # The control: the same notification for a slide QC passed does start a run and a Strand job.
    bridge.add_slide("slide-ok")
    passed = _notification(bridge, "slide-ok", QualityControlStatus.QUALITY_OK)
    assert _notify(bridge, passed).json() == {}
    run_id = bridge.store.find(AUTO_APP, "slide-ok", passed["cancellationToken"])
    assert run_id is not None
    assert bridge.wait_final(run_id).status == RunStatus.completed
    assert bridge.strand.stats.submits_accepted == 1  # the rejected slide's run never existed
    assert bridge.strand.stats.upload_sessions_opened == 1


def test_a_manual_create_on_a_rejected_slide_says_so_and_submits_nothing(bridge: Bridge) -> None:
    bridge.add_slide("slide-manual")
    info = slide_metadata("slide-manual", 1024, 768)
    info.qualityControl = QualityControlData(status=QualityControlStatus.REJECTED, versionId="qc-1")
    bridge.sectra.add_slide(info)
    record = bridge.start_run("slide-manual", app=APP)
    final = bridge.wait_final(record.run_id)
    assert final.status == RunStatus.failed
    assert final.message == messages.qc_rejected()
    (result,) = bridge.results("slide-manual")
    assert result.displayResult == messages.qc_rejected()
    assert bridge.strand.stats.upload_sessions_opened == 0
    assert bridge.strand.stats.submits_accepted == 0
