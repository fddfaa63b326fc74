"""A worker's Sectra adapters share one connection pool (`PipelineContext.sectra`), and nothing else.

Progress updates go out every few seconds per run; each used to open its own pool, so its own TCP
(in production TLS) connection. The server here records the client port of every request: one
port means one connection, reused. Cookies and tokens stay per adapter.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import uvicorn
from fastapi import FastAPI, Header, Request, Response
from fastapi.responses import JSONResponse

from workers.apps import load_apps
from workers.context import PipelineContext
from workers.metering import InFlight
from workers.runstore import RunStore
from workers.settings import Settings
from workers.upload_index import UploadIndex


def _sectra() -> FastAPI:
    app = FastAPI()
    app.state.seen = []  # (client port, Authorization, Cookie)

    @app.get("/info")
    def info(request: Request, authorization: str = Header(""), cookie: str = Header("")) -> Response:
        assert request.client is not None
        app.state.seen.append((request.client.port, authorization, cookie))
        response = JSONResponse({"apiVersion": "1.10", "softwareVersion": "4.2.0.0"})
        response.set_cookie("session", authorization)  # a cookie a careless client would send back
        return response

    return app


@pytest.fixture
def sectra_url() -> Iterator[tuple[FastAPI, str]]:
    app = _sectra()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_keep_alive=60))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the test server did not start"
        time.sleep(0.01)
    yield app, f"http://127.0.0.1:{sock.getsockname()[1]}"
    server.should_exit = True
    thread.join(timeout=10)
    sock.close()


def test_adapters_of_two_runs_reuse_one_connection_and_share_no_cookie(
    sectra_url: tuple[FastAPI, str], redis_client: redis.Redis, key_prefix: str, tmp_path: Path
) -> None:
    app, url = sectra_url
    ctx = PipelineContext(
        settings=Settings(BRIDGE_WORK_DIR=tmp_path / "work", SECTRA_ALLOW_HTTP=True),
        apps=load_apps(None),
        store=RunStore(redis_client, prefix=key_prefix, retention_seconds=3600),
        strand_factory=lambda: None,  # type: ignore[arg-type,return-value]
        uploads=UploadIndex(redis_client, prefix=key_prefix),
        in_flight=InFlight(redis_client, prefix=key_prefix),
    )
    records = []
    for token in ("token-run-1", "token-run-2"):
        record, _ = ctx.store.create_or_get(
            app_id="strand-default",
            slide_id="slide-1",
            cancellation_token=token,
            callback_url=url,
            callback_token=token,
            source="create",
        )
        records.append(record)
    try:
        for _ in range(3):  # three progress updates of each run, each through a new adapter
            for record in records:
                with ctx.sectra(record) as sectra:
                    sectra.fetch_version_info()
    finally:
        ctx.close()
    ports = {port for port, _, _ in app.state.seen}
    assert len(app.state.seen) == 6
    assert len(ports) == 1, app.state.seen  # one connection for all six requests
    assert [auth for _, auth, _ in app.state.seen] == ["Bearer token-run-1", "Bearer token-run-2"] * 3
    assert all(cookie == "" for _, _, cookie in app.state.seen)
