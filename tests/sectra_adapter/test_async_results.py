"""`AsyncResultPoster` (the webhook's result POST on its event loop) against real servers.

Its oracle is the blocking `SectraAdapter`: given the same answer from the same server, the
poster must raise the same error with the same words, so a create that goes through either
reaches Sectra alike. What only the poster decides (hand back a request that stored nothing,
never repeat one that may have) is checked against what the server saw.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from sectra_client.mock_server import MockSectraServer
from sectra_client.schemas import ResultResponse

from sectra_adapter import (
    AsyncResultPoster,
    NotSent,
    SectraAdapter,
    SectraError,
    SectraRequestFailed,
    SectraUnavailable,
    pending_result,
    results_path,
)

APP = "strand-app"
PATH = results_path(APP)


def _post(url: str, token: str, *, timeout: float = 5.0, outcomes: list[str] | None = None) -> Any:
    """One `create_results` on a fresh event loop and poster (closed after), as the webhook makes it."""

    async def run() -> Any:
        poster = AsyncResultPoster(
            ssl_context=ssl.create_default_context(),
            timeout=timeout,
            connections_per_server=4,
            keepalive_seconds=30.0,
            observe=None if outcomes is None else outcomes.append,
        )
        try:
            return await poster.create_results(url, token, pending_result("s-1", "1.0"), path=PATH)
        finally:
            await poster.close()

    return asyncio.run(run())


def test_a_result_is_stored_as_the_adapter_stores_it(mock_sectra: MockSectraServer, token: str) -> None:
    outcomes: list[str] = []
    stored = _post(mock_sectra.url, token, outcomes=outcomes)
    with SectraAdapter(mock_sectra.url, token, allow_http=True) as sectra:
        by_adapter = sectra.create_results(APP, pending_result("s-1", "1.0"))
        in_sectra = {r.id: r for r in sectra.get_all_results("s-1", APP)}
    assert outcomes == ["201"] or outcomes == ["200"]
    assert in_sectra[stored.result.id] == stored.result  # what Sectra keeps is what the poster answered
    # ... and its JSON is Sectra's answer as it came, which reads back as that result.
    assert ResultResponse.model_validate_json(stored.json) == stored.result
    assert json.loads(stored.json)["id"] == stored.result.id
    same = stored.result.model_dump(exclude={"id", "versionId"}) == by_adapter.model_dump(
        exclude={"id", "versionId"}
    )
    assert same and stored.result.id != by_adapter.id


def _scripted(status: int, body: Any, headers: dict[str, str] | None = None) -> FastAPI:
    app = FastAPI()
    app.state.posts = 0

    @app.post(PATH)
    async def create(request: Request) -> Response:
        app.state.posts += 1
        await request.body()
        if isinstance(body, str):
            return PlainTextResponse(body, status_code=status, headers=headers)
        return JSONResponse(body, status_code=status, headers=headers)

    return app


ANSWERS = [
    (400, {"message": "slide s-1 is not in a case"}, None),
    (403, "Forbidden for this application", None),
    (404, {"detail": "no such application"}, None),
    (409, {"message": "versionId is stale"}, None),
    (409, {}, None),
    (500, {"error": "database unavailable"}, None),
    (503, "maintenance until 18:00", {"Retry-After": "120"}),
    (302, "", {"Location": "http://elsewhere.invalid/results"}),
    (422, "Bearer abc.def-ghi leaked " + "x" * 5000, None),  # redacted and cut like the adapter's
]


@pytest.mark.parametrize(("status", "body", "headers"), ANSWERS)
def test_every_refusal_is_the_adapters_error_in_the_adapters_words(
    serve_asgi: Callable[..., str], status: int, body: Any, headers: dict[str, str] | None
) -> None:
    app = _scripted(status, body, headers)
    url = serve_asgi(app)
    with pytest.raises(SectraError) as by_poster:
        _post(url, "t")
    with (
        SectraAdapter(url, "t", allow_http=True, max_retries=0) as sectra,
        pytest.raises(SectraError) as by_adapter,
    ):
        sectra.create_results(APP, pending_result("s-1", "1.0"))
    assert type(by_poster.value) is type(by_adapter.value)
    assert str(by_poster.value) == str(by_adapter.value)
    assert isinstance(by_poster.value, SectraRequestFailed) and by_poster.value.status_code == status
    assert "abc.def-ghi" not in str(by_poster.value)
    assert app.state.posts == 2  # one each: a refusal is never repeated


def test_a_refused_token_is_handed_back_to_the_adapter(serve_asgi: Callable[..., str]) -> None:
    """401 stored nothing; the adapter renews the token or names the settings (tests/service)."""
    app = _scripted(401, {"message": "token expired"})
    with pytest.raises(NotSent):
        _post(serve_asgi(app), "expired")
    assert app.state.posts == 1


def test_a_refused_connection_is_handed_back(free_port: int) -> None:
    outcomes: list[str] = []
    with pytest.raises(NotSent, match="could not connect"):
        _post(f"http://127.0.0.1:{free_port}", "t", outcomes=outcomes)
    assert outcomes == ["ConnectFailed"]


def test_a_connection_dropped_after_the_request_is_not_repeated(raw_server: Callable[..., Any]) -> None:
    server = raw_server(lambda head, index: b"")  # reads the request, closes without an answer
    with pytest.raises(SectraUnavailable, match="may have reached Sectra"):
        _post(server.url, "t")
    assert len(server.requests) == 1


@pytest.fixture
def silent_server(raw_server: Callable[..., Any]) -> Iterator[Any]:
    """Reads the request and never answers (until the test ends)."""
    release = threading.Event()
    server = raw_server(lambda head, index: release.wait(30) and b"")
    yield server
    release.set()


def test_a_silent_server_times_out_and_is_not_repeated(silent_server: Any) -> None:
    with pytest.raises(SectraUnavailable, match="may have reached Sectra"):
        _post(silent_server.url, "t", timeout=0.5)
    assert len(silent_server.requests) == 1


def test_an_oversized_answer_is_refused(raw_server: Callable[..., Any]) -> None:
    body = json.dumps({"padding": "x" * (2 << 20)}).encode()
    server = raw_server(
        lambda head, index: (
            b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
    )
    with pytest.raises(SectraRequestFailed, match="larger than"):
        _post(server.url, "t")


def test_cookies_from_sectra_are_never_sent_back(raw_server: Callable[..., Any]) -> None:
    answer = json.dumps({**pending_result("s-1", "1.0").model_dump(mode="json"), "id": 1, "versionId": "v"})
    server = raw_server(
        lambda head, index: (
            b"HTTP/1.1 201 Created\r\nSet-Cookie: session=abc; Path=/\r\n"
            + b"Content-Type: application/json\r\nConnection: close\r\n"
            + f"Content-Length: {len(answer)}\r\n\r\n{answer}".encode()
        )
    )

    async def twice() -> None:
        poster = AsyncResultPoster(
            ssl_context=ssl.create_default_context(),
            timeout=5.0,
            connections_per_server=1,
            keepalive_seconds=30.0,
        )
        try:
            for _ in range(2):
                await poster.create_results(server.url, "t", pending_result("s-1", "1.0"), path=PATH)
        finally:
            await poster.close()

    asyncio.run(twice())
    assert len(server.requests) == 2
    assert all(b"cookie:" not in head.lower() for head in server.requests)
    assert all(b"authorization: bearer t\r\n" in head.lower() for head in server.requests)
