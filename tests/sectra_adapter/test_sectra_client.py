"""SectraAdapter against real HTTP servers: calls, retries, timeouts, redirects, token refresh."""

from __future__ import annotations

import asyncio
import base64
import logging
import threading
from collections.abc import Callable
from urllib.parse import parse_qs

import pytest
from fastapi import FastAPI, Header, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from sectra_client.mock_server import MockSectraServer
from sectra_client.schemas import AdaptedResult, QualityControl, QualityControlData, QualityControlStatus

from sectra_adapter._client import SectraAdapter
from sectra_adapter._errors import (
    CallbackUrlRefused,
    SectraAuthError,
    SectraRequestFailed,
    SectraUnavailable,
    SectraVersionConflict,
)
from sectra_adapter._results import pending_result, progress_result

CLIENT_SECRET = "s3cret"
METADATA = {
    "id": "s-1",
    "isStreamable": True,
    "imageSize": {"width": 4000, "height": 3000},
    "tileSize": {"width": 256, "height": 256},
    "micronsPerPixel": 0.25,
    "focalPlanes": [],
    "opticalPaths": [],
    "storedTileFormat": {"mimeType": "image/jpeg", "extension": "jpg"},
    "availableTileFormats": [],
    "fileFormat": {"mimeType": "image/tiff"},
    "staining": {"displayName": "H&E"},
    "block": {"displayName": "A1"},
}


def test_metadata_and_result_lifecycle_against_the_mock(mock_sectra: MockSectraServer, token: str) -> None:
    with SectraAdapter(mock_sectra.url, token, allow_http=True) as sectra:
        metadata = sectra.get_image_metadata("s-9")
        assert (metadata.id, metadata.staining.displayName) == ("s-9", "HE")
        created = sectra.create_results("app", pending_result("s-9", "1.0"))
        assert sectra.get_result("app", created.id) == created
        updated = sectra.update_results(
            "app",
            created.id,
            AdaptedResult(
                **progress_result("s-9", "1.0", "Uploading 40 %").model_dump(), versionId=created.versionId
            ),
        )
        assert updated.id == created.id and updated.versionId != created.versionId
        assert [r.displayResult for r in sectra.get_all_results("s-9", "app")] == ["Uploading 40 %"]
        sectra.set_quality_control(
            "s-9",
            QualityControl(
                applicationVersion="1.0",
                qualityControl=QualityControlData(status=QualityControlStatus.REJECTED, versionId="v1"),
            ),
        )
    assert mock_sectra.get_results("app", "s-9")[0].displayResult == "Uploading 40 %"


def counting_app() -> FastAPI:
    """A Sectra stand-in whose behaviour each test scripts through `app.state.script`."""
    app = FastAPI()
    app.state.calls = []
    app.state.script = {}

    @app.api_route("/{path:path}", methods=["GET", "POST", "PUT"])
    async def anything(path: str, request: Request) -> Response:
        app.state.calls.append((request.method, "/" + path, request.headers.get("authorization")))
        return await app.state.script[(request.method, "/" + path)](request, len(app.state.calls))

    return app


def test_5xx_and_429_bursts_are_retried_honouring_retry_after(
    serve_asgi: Callable[..., str], sleeps: list[float]
) -> None:
    app = counting_app()

    async def info(request: Request, n: int) -> Response:
        if n == 1:
            return Response("busy", status_code=503, headers={"Retry-After": "4"})
        if n == 2:
            return Response("slow down", status_code=429, headers={"Retry-After": "2"})
        if n == 3:
            return Response("bad gateway", status_code=502)
        return JSONResponse(METADATA)

    app.state.script[("GET", "/slides/s-1/info")] = info
    with SectraAdapter(serve_asgi(app), "t", allow_http=True, sleep=sleeps) as sectra:
        assert sectra.get_image_metadata("s-1").imageSize.width == 4000
    assert len(app.state.calls) == 4
    assert sleeps[0] >= 4 and sleeps[1] >= 2 and len(sleeps) == 3


def test_retries_give_up_with_the_last_status(serve_asgi: Callable[..., str], sleeps: list[float]) -> None:
    app = counting_app()

    async def always_busy(request: Request, n: int) -> Response:
        return Response("busy", status_code=503)

    app.state.script[("GET", "/slides/s-1/info")] = always_busy
    sectra = SectraAdapter(serve_asgi(app), "t", allow_http=True, max_retries=2, sleep=sleeps)
    with sectra, pytest.raises(SectraRequestFailed) as failed:
        sectra.get_image_metadata("s-1")
    assert failed.value.status_code == 503 and len(app.state.calls) == 3 and len(sleeps) == 2


def test_a_post_that_reached_the_server_is_never_resent(
    serve_asgi: Callable[..., str], sleeps: list[float]
) -> None:
    app = counting_app()

    async def busy(request: Request, n: int) -> Response:
        return Response("busy", status_code=503, headers={"Retry-After": "1"})

    app.state.script[("POST", "/applications/app/results")] = busy
    sectra = SectraAdapter(serve_asgi(app), "t", allow_http=True, sleep=sleeps)
    with sectra, pytest.raises(SectraRequestFailed) as failed:
        sectra.create_results("app", pending_result("s-1", "1.0"))
    assert failed.value.status_code == 503
    assert len(app.state.calls) == 1 and sleeps == []


def test_a_post_that_timed_out_is_not_resent(serve_asgi: Callable[..., str], sleeps: list[float]) -> None:
    app = counting_app()

    async def slow(request: Request, n: int) -> Response:
        await asyncio.sleep(1.0)
        return JSONResponse({}, status_code=201)

    app.state.script[("POST", "/applications/app/results")] = slow
    sectra = SectraAdapter(serve_asgi(app), "t", allow_http=True, timeout=0.3, sleep=sleeps)
    with sectra, pytest.raises(SectraUnavailable, match="not retried"):
        sectra.create_results("app", pending_result("s-1", "1.0"))
    assert len(app.state.calls) == 1 and sleeps == []


def test_a_post_that_never_connected_is_retried(
    serve_asgi: Callable[..., str], free_port: int, sleeps: list[float]
) -> None:
    """Connection refused proves the request never left; the server comes up during the backoff."""
    app = counting_app()

    async def create(request: Request, n: int) -> Response:
        body = await request.json()
        return JSONResponse({**body, "id": 7, "versionId": "v1"}, status_code=201)

    app.state.script[("POST", "/applications/app/results")] = create

    def start_server_instead_of_sleeping(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) == 1:
            serve_asgi(app, free_port)

    sectra = SectraAdapter(
        f"http://127.0.0.1:{free_port}", "t", allow_http=True, sleep=start_server_instead_of_sleeping
    )
    with sectra:
        created = sectra.create_results("app", pending_result("s-1", "1.0"))
    assert created.id == 7 and len(app.state.calls) == 1 and len(sleeps) == 1


def test_slow_answers_time_out_and_idempotent_calls_are_retried(
    serve_asgi: Callable[..., str], sleeps: list[float]
) -> None:
    app = counting_app()

    async def first_slow(request: Request, n: int) -> Response:
        if n == 1:
            await asyncio.sleep(1.5)
        return JSONResponse(METADATA)

    app.state.script[("GET", "/slides/s-1/info")] = first_slow
    with SectraAdapter(serve_asgi(app), "t", allow_http=True, timeout=0.3, sleep=sleeps) as sectra:
        assert sectra.get_image_metadata("s-1").id == "s-1"
    assert len(app.state.calls) == 2 and len(sleeps) == 1


def test_unreachable_sectra_gives_up_after_the_retries(free_port: int, sleeps: list[float]) -> None:
    sectra = SectraAdapter(f"http://127.0.0.1:{free_port}", "t", allow_http=True, max_retries=3, sleep=sleeps)
    with sectra, pytest.raises(SectraUnavailable, match="after 4 attempts") as failed:
        sectra.get_image_metadata("s-1")
    assert "ConnectError" in str(failed.value) and len(sleeps) == 3


def test_redirects_are_not_followed(serve_asgi: Callable[..., str]) -> None:
    elsewhere = counting_app()
    other = serve_asgi(elsewhere)
    app = counting_app()

    async def redirect(request: Request, n: int) -> Response:
        return RedirectResponse(f"{other}/slides/s-1/info", status_code=302)

    app.state.script[("GET", "/slides/s-1/info")] = redirect
    sectra = SectraAdapter(serve_asgi(app), "t", allow_http=True)
    with sectra, pytest.raises(SectraRequestFailed, match="redirects are not followed") as failed:
        sectra.get_image_metadata("s-1")
    assert failed.value.status_code == 302 and elsewhere.state.calls == []


def test_version_conflicts_raise_their_own_error(serve_asgi: Callable[..., str]) -> None:
    app = counting_app()

    async def conflict(request: Request, n: int) -> Response:
        return JSONResponse({"message": "versionId is stale"}, status_code=409)

    app.state.script[("PUT", "/applications/app/results/3")] = conflict
    stale = AdaptedResult(**pending_result("s-1", "1.0").model_dump(), versionId="old")
    sectra = SectraAdapter(serve_asgi(app), "t", allow_http=True)
    with sectra, pytest.raises(SectraVersionConflict, match="versionId is stale"):
        sectra.update_results("app", 3, stale)


def token_app(client_id: str = "bridge", app_id: str = "strand-app") -> FastAPI:
    """Sectra with expiring tokens: only tokens issued by its `/token` are valid."""
    app = FastAPI()
    app.state.valid = set()
    app.state.token_calls = []
    app.state.seen_tokens = []
    expected_basic = "Basic " + base64.b64encode(f"{client_id}:{CLIENT_SECRET}".encode()).decode()

    @app.post("/token")
    async def issue(
        applicationId: str, request: Request, authorization: str | None = Header(None)
    ) -> Response:
        grant_type = parse_qs((await request.body()).decode()).get("grant_type", [""])[0]
        app.state.token_calls.append((applicationId, grant_type))
        if authorization != expected_basic or applicationId != app_id or grant_type != "client_credentials":
            return JSONResponse({"error": "invalid_client"}, status_code=401)
        fresh = f"fresh-{len(app.state.token_calls)}"
        app.state.valid.add(fresh)
        return JSONResponse({"accessToken": fresh, "tokenType": "Bearer", "expiresIn": 3600})

    def authorised(authorization: str | None) -> bool:
        app.state.seen_tokens.append(authorization)
        return authorization is not None and authorization.removeprefix("Bearer ") in app.state.valid

    @app.get("/slides/{slide_id}/info")
    def info(slide_id: str, authorization: str | None = Header(None)) -> Response:
        if not authorised(authorization):
            return JSONResponse({"message": "token expired"}, status_code=401)
        return JSONResponse(METADATA)

    @app.post("/applications/{app_id}/results")
    async def create(app_id: str, request: Request, authorization: str | None = Header(None)) -> Response:
        if not authorised(authorization):
            return JSONResponse({"message": "token expired"}, status_code=401)
        app.state.created = getattr(app.state, "created", 0) + 1
        return JSONResponse(
            {**(await request.json()), "id": app.state.created, "versionId": "v"}, status_code=201
        )

    return app


def test_an_expired_token_is_refreshed_once_and_then_reused(serve_asgi: Callable[..., str]) -> None:
    app = token_app()
    sectra = SectraAdapter(
        serve_asgi(app),
        "expired-invocation-token",
        allow_http=True,
        client_id="bridge",
        client_secret=CLIENT_SECRET,
        application_id="strand-app",
    )
    with sectra:
        assert sectra.get_image_metadata("s-1").id == "s-1"
        assert sectra.get_image_metadata("s-1").id == "s-1"
        created = sectra.create_results("strand-app", pending_result("s-1", "1.0"))
    assert app.state.token_calls == [("strand-app", "client_credentials")]
    assert app.state.seen_tokens == ["Bearer expired-invocation-token"] + ["Bearer fresh-1"] * 3
    assert created.id == 1 and app.state.created == 1
    assert "fresh-1" not in repr(sectra) and "expired" not in repr(sectra)


def test_a_rejected_post_is_resent_once_after_refresh(serve_asgi: Callable[..., str]) -> None:
    app = token_app()
    sectra = SectraAdapter(
        serve_asgi(app),
        "expired",
        allow_http=True,
        client_id="bridge",
        client_secret=CLIENT_SECRET,
        application_id="strand-app",
    )
    with sectra:
        sectra.create_results("strand-app", pending_result("s-1", "1.0"))
    assert app.state.created == 1 and len(app.state.token_calls) == 1


def test_a_token_is_renewed_before_it_expires_not_after_a_401(serve_asgi: Callable[..., str]) -> None:
    app = token_app()  # grants live 3600 s
    now = [1000.0]
    sectra = SectraAdapter(
        serve_asgi(app),
        "expired",
        allow_http=True,
        client_id="bridge",
        client_secret=CLIENT_SECRET,
        application_id="strand-app",
        clock=lambda: now[0],
    )
    with sectra:
        sectra.get_image_metadata("s-1")  # 401, renewed once, resent
        now[0] += 3000.0  # well inside the grant: the same token is used
        sectra.get_image_metadata("s-1")
        now[0] += 560.0  # 40 s before `expiresIn` runs out: renewed before the request leaves
        sectra.get_image_metadata("s-1")
    assert len(app.state.token_calls) == 2
    assert app.state.seen_tokens == [
        "Bearer expired",
        "Bearer fresh-1",
        "Bearer fresh-1",
        "Bearer fresh-2",
    ], "the renewed token went out at once, with no refused request in between"


def test_without_credentials_the_error_says_what_to_configure(serve_asgi: Callable[..., str]) -> None:
    sectra = SectraAdapter(serve_asgi(token_app()), "expired-secret-token", allow_http=True)
    with sectra, pytest.raises(SectraAuthError) as failed:
        sectra.get_image_metadata("s-1")
    assert "SECTRA_CLIENT_ID" in str(failed.value) and "SECTRA_CLIENT_SECRET" in str(failed.value)
    assert "expired-secret-token" not in str(failed.value)


def test_wrong_credentials_are_reported_without_the_secret(serve_asgi: Callable[..., str]) -> None:
    app = token_app()
    sectra = SectraAdapter(
        serve_asgi(app),
        "expired",
        allow_http=True,
        client_id="bridge",
        client_secret="not-the-secret",
        application_id="strand-app",
    )
    with sectra, pytest.raises(SectraAuthError, match="refused the client credentials") as failed:
        sectra.get_image_metadata("s-1")
    assert "not-the-secret" not in str(failed.value) and len(app.state.token_calls) == 1


def test_concurrent_401s_refresh_the_token_once(serve_asgi: Callable[..., str]) -> None:
    app = token_app()
    sectra = SectraAdapter(
        serve_asgi(app),
        "expired",
        allow_http=True,
        client_id="bridge",
        client_secret=CLIENT_SECRET,
        application_id="strand-app",
    )
    errors: list[BaseException] = []

    def fetch() -> None:
        try:
            sectra.get_image_metadata("s-1")
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)

    with sectra:
        threads = [threading.Thread(target=fetch) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert errors == [] and len(app.state.token_calls) == 1


def test_version_info_is_cached_per_server(serve_asgi: Callable[..., str]) -> None:
    app = counting_app()

    async def info(request: Request, n: int) -> Response:
        return JSONResponse({"apiVersion": "1.12", "softwareVersion": "5.0.1"})

    app.state.script[("GET", "/info")] = info
    url = serve_asgi(app)
    for _ in range(3):
        with SectraAdapter(url + "/", "t", allow_http=True) as sectra:
            assert sectra.response_headers == {
                "X-Sectra-ApiVersion": "1.12",
                "X-Sectra-SoftwareVersion": "5.0.1",
            }
    assert len(app.state.calls) == 1


def test_plain_http_needs_allow_http() -> None:
    with pytest.raises(CallbackUrlRefused, match="SECTRA_ALLOW_HTTP"):
        SectraAdapter("http://127.0.0.1:1", "t")


def test_logs_and_errors_never_carry_the_token(
    serve_asgi: Callable[..., str], sleeps: list[float], caplog: pytest.LogCaptureFixture
) -> None:
    app = counting_app()
    secret = "tok-9d8c7b6a"

    async def echo(request: Request, n: int) -> Response:
        return Response(
            f"bad request from {request.headers['authorization']}", status_code=502 if n < 3 else 400
        )

    app.state.script[("GET", "/slides/s-1/info")] = echo
    sectra = SectraAdapter(serve_asgi(app), secret, allow_http=True, sleep=sleeps)
    with caplog.at_level(logging.DEBUG), sectra, pytest.raises(SectraRequestFailed) as failed:
        sectra.get_image_metadata("s-1")
    assert failed.value.status_code == 400
    assert secret not in str(failed.value) and "Bearer ***" in str(failed.value)
    assert secret not in caplog.text and all(secret not in str(r.__dict__) for r in caplog.records)


def test_ids_from_invocations_cannot_reshape_the_path(serve_asgi: Callable[..., str]) -> None:
    app = FastAPI()
    app.state.raw_paths = []

    @app.api_route("/{path:path}", methods=["GET"])
    def anything(path: str, request: Request) -> Response:
        app.state.raw_paths.append(request.scope["raw_path"])
        return JSONResponse({"message": "no such slide"}, status_code=404)

    sectra = SectraAdapter(serve_asgi(app), "t", allow_http=True)
    with sectra:
        for slide_id in ("../../applications/x/results?y=1", ".."):
            with pytest.raises(SectraRequestFailed):
                sectra.get_image_metadata(slide_id)
    assert app.state.raw_paths == [
        b"/slides/..%2F..%2Fapplications%2Fx%2Fresults%3Fy%3D1/info",
        b"/slides/%2E%2E/info",
    ]
