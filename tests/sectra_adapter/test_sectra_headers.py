"""Webhook response headers: cached per Sectra server, and never a failure when /info is down."""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest
from fastapi import FastAPI, Header
from fastapi.responses import JSONResponse, Response
from sectra_client.schemas import ApplicationInfo

from sectra_adapter._errors import SectraUnavailable
from sectra_adapter._headers import DEFAULT_VERSIONS, sectra_response_headers
from sectra_adapter._versions import VersionCache


def info_app(status: int = 200) -> FastAPI:
    app = FastAPI()
    app.state.calls = 0

    @app.get("/{prefix:path}/info")
    def info(prefix: str, authorization: str | None = Header(None)) -> Response:
        app.state.calls += 1
        if authorization != "Bearer t":
            return JSONResponse({}, status_code=401)
        return JSONResponse({"apiVersion": "1.11", "softwareVersion": "4.3.2"}, status_code=status)

    return app


def test_headers_come_from_info_once_per_server(serve_asgi: Callable[..., str]) -> None:
    app = info_app()
    url = serve_asgi(app)
    for _ in range(5):
        headers = sectra_response_headers(url + "/ia/v1/", "t", allow_http=True)
        assert headers == {"X-Sectra-ApiVersion": "1.11", "X-Sectra-SoftwareVersion": "4.3.2"}
    assert app.state.calls == 1


def test_an_unreachable_info_falls_back_and_says_so(
    serve_asgi: Callable[..., str], caplog: pytest.LogCaptureFixture
) -> None:
    app = info_app(status=500)
    url = serve_asgi(app) + "/down"
    with caplog.at_level(logging.WARNING):
        first = sectra_response_headers(url, "t", allow_http=True)
        second = sectra_response_headers(url, "t", allow_http=True)
    expected = {"X-Sectra-ApiVersion": DEFAULT_VERSIONS.apiVersion, "X-Sectra-SoftwareVersion": "unknown"}
    assert first == second == expected
    assert "answering with the configured default versions" in caplog.text
    assert app.state.calls == 1  # not asked again right after a failure


def test_cache_serves_last_known_versions_when_a_refresh_fails() -> None:
    now = [0.0]
    cache = VersionCache(ttl=10, failure_backoff=5, clock=lambda: now[0])
    answers: list[ApplicationInfo | Exception] = [
        ApplicationInfo(apiVersion="1.10", softwareVersion="4.2"),
        SectraUnavailable("down"),
        ApplicationInfo(apiVersion="1.12", softwareVersion="5.0"),
    ]
    calls = []

    def fetch() -> ApplicationInfo:
        calls.append(now[0])
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert cache.get("u", fetch).apiVersion == "1.10"
    now[0] = 5
    assert cache.get("u", fetch).apiVersion == "1.10"  # fresh, no call
    now[0] = 11
    assert cache.get("u", fetch).apiVersion == "1.10"  # refresh failed: last known
    now[0] = 13
    assert cache.get("u", fetch).apiVersion == "1.10"  # within the failure backoff: no call
    now[0] = 17
    assert cache.get("u", fetch).apiVersion == "1.12"
    assert calls == [0, 11, 17]


def test_cache_without_any_value_raises() -> None:
    def fetch() -> ApplicationInfo:
        raise SectraUnavailable("down")

    with pytest.raises(SectraUnavailable):
        VersionCache().get("u", fetch)
