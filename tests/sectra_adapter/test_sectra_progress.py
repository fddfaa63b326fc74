"""ResultPublisher: one result per run, throttled progress, version conflicts resolved by rereading."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from sectra_client.mock_server import MockSectraServer

from sectra_adapter._client import SectraAdapter
from sectra_adapter._errors import SectraVersionConflict
from sectra_adapter._progress import ResultPublisher
from sectra_adapter._results import failure_result, pending_result


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_one_result_per_run_from_pending_to_final(mock_sectra: MockSectraServer, token: str) -> None:
    clock = Clock()
    with SectraAdapter(mock_sectra.url, token, allow_http=True) as sectra:
        publisher = ResultPublisher(
            sectra, "app", "s-1", "1.0", result_id=None, version_id=None, min_interval=5.0, clock=clock
        )
        created = publisher.ensure_created(pending_result("s-1", "1.0"))
        assert (publisher.result_id, publisher.version_id) == (created.id, created.versionId)
        assert publisher.ensure_created(pending_result("s-1", "1.0")).id == created.id  # no second result

        assert publisher.progress("Uploading 10 %") is not None
        clock.now += 1
        assert publisher.progress("Uploading 20 %") is None  # too soon
        clock.now += 5
        assert publisher.progress("Uploading 20 %") is not None
        clock.now += 60
        assert publisher.progress("Uploading 20 %") is None  # unchanged
        assert publisher.progress("Uploading 20 %", force=True) is not None
        assert mock_sectra.get_results("app", "s-1")[0].displayResult == "Uploading 20 %"

        final = publisher.publish(
            failure_result("s-1", "1.0", "Not enough Strand credits: 120 required, 80 available")
        )
    results = mock_sectra.get_results("app", "s-1")
    assert len(results) == 1 and results[0].id == created.id == final.id
    assert results[0].displayResult.startswith("Not enough Strand credits")
    assert publisher.version_id == results[0].versionId


def test_a_resumed_run_updates_its_existing_result(mock_sectra: MockSectraServer, token: str) -> None:
    with SectraAdapter(mock_sectra.url, token, allow_http=True) as sectra:
        first = ResultPublisher(sectra, "app", "s-2", "1.0", result_id=None, version_id=None)
        first.ensure_created(pending_result("s-2", "1.0"))
        # A new worker, after a crash, with what the run store remembered.
        second = ResultPublisher(
            sectra, "app", "s-2", "1.0", result_id=first.result_id, version_id=first.version_id
        )
        second.publish(failure_result("s-2", "1.0", "Run failed"))
    assert [r.displayResult for r in mock_sectra.get_results("app", "s-2")] == ["Run failed"]


def versioned_sectra() -> FastAPI:
    """Sectra stand-in that enforces versionId like the real one (the package mock does not)."""
    app = FastAPI()
    app.state.result = None
    app.state.puts = 0
    app.state.always_conflict = False

    @app.post("/applications/{app_id}/results")
    async def create(app_id: str, request: Request) -> Response:
        app.state.result = {**(await request.json()), "id": 5, "versionId": uuid.uuid4().hex}
        return JSONResponse(app.state.result, status_code=201)

    @app.get("/applications/{app_id}/results/{result_id}")
    def read(app_id: str, result_id: int) -> Response:
        return JSONResponse(app.state.result)

    @app.put("/applications/{app_id}/results/{result_id}")
    async def update(app_id: str, result_id: int, request: Request) -> Response:
        app.state.puts += 1
        body = await request.json()
        if app.state.always_conflict or body["versionId"] != app.state.result["versionId"]:
            return JSONResponse({"message": "stale versionId"}, status_code=409)
        app.state.result = {**body, "id": result_id, "versionId": uuid.uuid4().hex}
        return JSONResponse(app.state.result)

    return app


def test_a_version_conflict_is_resolved_by_rereading(serve_asgi: Callable[..., str]) -> None:
    app = versioned_sectra()
    with SectraAdapter(serve_asgi(app), "t", allow_http=True) as sectra:
        publisher = ResultPublisher(sectra, "app", "s-1", "1.0", result_id=None, version_id=None)
        publisher.ensure_created(pending_result("s-1", "1.0"))
        app.state.result["versionId"] = "changed-by-someone-else"
        published = publisher.publish(failure_result("s-1", "1.0", "Run failed"))
    assert app.state.puts == 2
    assert published.displayResult == "Run failed" and app.state.result["displayResult"] == "Run failed"
    assert publisher.version_id == app.state.result["versionId"]


def test_endless_conflicts_give_up(serve_asgi: Callable[..., str]) -> None:
    app = versioned_sectra()
    with SectraAdapter(serve_asgi(app), "t", allow_http=True) as sectra:
        publisher = ResultPublisher(sectra, "app", "s-1", "1.0", result_id=None, version_id=None)
        publisher.ensure_created(pending_result("s-1", "1.0"))
        app.state.always_conflict = True
        with pytest.raises(SectraVersionConflict, match="kept changing"):
            publisher.publish(failure_result("s-1", "1.0", "Run failed"))
        # Progress is best effort: the same trouble is swallowed, not raised.
        assert publisher.progress("Strand: running 62 %") is None
    assert app.state.puts == 6  # three attempts each
