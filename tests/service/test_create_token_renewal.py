"""A `create` whose callback token Sectra refuses: renewed through `/token` when credentials are set.

The create path posts on the event loop and hands a 401 back to `SectraAdapter` (nothing was
stored), which renews the token with client credentials or says which settings are missing.
The Sectra here issues and checks tokens as IA-API's `/token` does (client credentials, Basic auth).
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from urllib.parse import parse_qs

import pytest
from fastapi import FastAPI, Header, Request, Response
from fastapi.responses import JSONResponse

from tests.service.conftest import BridgeFactory, ServerThread

CLIENT_ID = "bridge"
CLIENT_SECRET = "s3cret-for-tests"
APP_ID = "strand-default"


def _token_sectra() -> FastAPI:
    app = FastAPI()
    app.state.valid = set()
    app.state.posts = []
    app.state.token_calls = 0
    basic = "Basic " + base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()

    @app.get("/info")
    def info() -> Response:
        return JSONResponse({"apiVersion": "1.10", "softwareVersion": "4.2.0.0"})

    @app.post("/token")
    async def issue(request: Request, authorization: str | None = Header(None)) -> Response:
        app.state.token_calls += 1
        grant = parse_qs((await request.body()).decode()).get("grant_type", [""])[0]
        if authorization != basic or grant != "client_credentials":
            return JSONResponse({"error": "invalid_client"}, status_code=401)
        fresh = f"fresh-{app.state.token_calls}"
        app.state.valid.add(fresh)
        return JSONResponse({"accessToken": fresh, "tokenType": "Bearer", "expiresIn": 3600})

    @app.post("/applications/{app_id}/results")
    async def create(app_id: str, request: Request, authorization: str | None = Header(None)) -> Response:
        token = (authorization or "").removeprefix("Bearer ")
        app.state.posts.append(token)
        if token not in app.state.valid:
            return JSONResponse({"message": "token expired"}, status_code=401)
        stored = len([t for t in app.state.posts if t in app.state.valid])
        return JSONResponse({**(await request.json()), "id": stored, "versionId": "v1"}, status_code=201)

    return app


@pytest.fixture
def token_sectra() -> Iterator[tuple[FastAPI, str]]:
    app = _token_sectra()
    with ServerThread(app) as server:
        yield app, server.url


def _invocation(url: str) -> dict[str, object]:
    return {
        "action": "create",
        "applicationId": APP_ID,
        "slideId": "slide-42",
        "callbackInfo": {"url": url, "token": "expired-invocation-token"},
        "cancellationToken": "ct-renewal",
        "input": {"type": "wholeSlide"},
    }


def test_an_expired_token_is_renewed_and_one_result_stored(
    make_bridge: BridgeFactory, token_sectra: tuple[FastAPI, str]
) -> None:
    sectra, url = token_sectra
    bridge = make_bridge(
        SECTRA_ALLOWED_CALLBACK_URLS=url, SECTRA_CLIENT_ID=CLIENT_ID, SECTRA_CLIENT_SECRET=CLIENT_SECRET
    )
    response = bridge.client.post(f"/sectra/{APP_ID}", json=_invocation(url))
    assert response.status_code == 200, response.text
    assert response.json()["id"] == 1
    assert sectra.state.token_calls == 1
    stored = [token for token in sectra.state.posts if token in sectra.state.valid]
    assert stored == ["fresh-1"]  # exactly one result stored, with the renewed token
    assert len(bridge.enqueued) == 1


def test_a_refused_token_without_credentials_names_the_settings(
    make_bridge: BridgeFactory, token_sectra: tuple[FastAPI, str]
) -> None:
    sectra, url = token_sectra
    bridge = make_bridge(SECTRA_ALLOWED_CALLBACK_URLS=url)
    response = bridge.client.post(f"/sectra/{APP_ID}", json=_invocation(url))
    assert response.status_code == 502
    assert response.json()["error"] == "sectra_refused"
    assert "SECTRA_CLIENT_ID" in response.json()["message"]
    assert sectra.state.token_calls == 0
    assert bridge.store.list_runs() == []
    assert bridge.enqueued == []
