"""Real parts for the webhook tests: our app under uvicorn on a real port, Sectra's own mock server
(on another port), and a real Redis. Only Sectra is remote and not ours; its mock is the real thing
Sectra ships for integrators, with a recorder added so tests can assert what it received."""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import uvicorn
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from sectra_client.mock_server import MockSectraServer
from sectra_client.schemas import (
    DisplayedName,
    FocalPlane,
    ImageMetadata,
    OpticalPath,
    Size,
    SlideFormat,
    TileFormat,
)

from service.app import create_app
from workers.apps import AppConfig, default_apps
from workers.runstore import RunStore
from workers.settings import Settings

SECTRA_TOKEN = "sectra-callback-secret-0123456789"
NOTIFY_APP = "strand-notify"


def slide_metadata(slide_id: str = "slide-42", stain: str = "H&E", width: int = 40_000) -> ImageMetadata:
    jpeg = TileFormat(mimeType="image/jpeg", extension="jpg")
    return ImageMetadata(
        id=slide_id,
        isStreamable=True,
        imageSize=Size(width=width, height=30_000),
        tileSize=Size(width=256, height=256),
        micronsPerPixel=0.25,
        focalPlanes=[FocalPlane(id="0", offsetUm=0.0)],
        opticalPaths=[OpticalPath(id="0", description="Brightfield")],
        storedTileFormat=jpeg,
        availableTileFormats=[jpeg],
        fileFormat=SlideFormat(mimeType="image/tiff"),
        staining=DisplayedName(displayName=stain),
        block=DisplayedName(displayName="A1"),
    )


class ServerThread:
    """An ASGI app under uvicorn in a thread, on a port the OS picks."""

    def __init__(self, app: FastAPI) -> None:
        # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY only on sockets that say so, and
        # without it every answer written in two parts waits ~40 ms for a delayed ACK.
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self._server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True
        )

    def __enter__(self) -> ServerThread:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the app did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *_: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._sock.close()


class RecordingSectra(MockSectraServer):
    """MockSectraServer that records every request and can be told to fail result creation."""

    def __init__(self) -> None:
        super().__init__(token=SECTRA_TOKEN)
        self.requests: list[tuple[str, str]] = []
        self.fail_creates = False
        # Called as a result POST arrives, before it is stored (a test's way to act mid-create).
        self.on_result_post: Callable[[], None] | None = None

    def create_app(self) -> FastAPI:
        app = super().create_app()

        @app.middleware("http")
        async def record(request: Request, call_next: Callable[[Request], Any]) -> Response:
            self.requests.append((request.method, request.url.path))
            result_post = request.method == "POST" and request.url.path.endswith("/results")
            if self.fail_creates and result_post:
                return JSONResponse({"detail": "database unavailable"}, status_code=503)
            if self.on_result_post is not None and result_post:
                self.on_result_post()
            response: Response = await call_next(request)
            return response

        return app

    def start(self) -> None:
        """Serve on our own NODELAY socket (the base class's socket costs ~40 ms per answer)."""
        self._served = ServerThread(self.create_app()).__enter__()
        self._host, self._port = "127.0.0.1", int(self._served.url.rsplit(":", 1)[1])

    def stop(self) -> None:
        self._served.__exit__()

    def result_posts(self) -> int:
        return sum(1 for method, path in self.requests if method == "POST" and path.endswith("/results"))


@pytest.fixture
def sectra() -> Iterator[RecordingSectra]:
    server = RecordingSectra()
    server.run(port=0, host="127.0.0.1")
    try:
        yield server
    finally:
        server.stop()


def bridge_apps() -> dict[str, AppConfig]:
    apps = default_apps()
    apps[NOTIFY_APP] = AppConfig(
        id=NOTIFY_APP, display_name="Strand on new H&E slides", markers=["CD8"], start_on_new_images=True
    )
    return apps


@dataclass
class Bridge:
    """The running webhook and everything a test inspects behind it."""

    url: str
    client: httpx.Client
    store: RunStore
    enqueued: list[str]
    sectra: RecordingSectra
    settings: Settings
    apps: dict[str, AppConfig] = field(default_factory=bridge_apps)

    def invocation(self, action: str = "create", **overrides: Any) -> dict[str, Any]:
        body: dict[str, Any] = {
            "action": action,
            "applicationId": "strand-default",
            "slideId": "slide-42",
            "callbackInfo": {"url": self.sectra.url, "token": SECTRA_TOKEN},
            "cancellationToken": f"ct-{uuid.uuid4().hex[:8]}",
            "context": {},
        }
        if action in ("create", "newImageFiles"):
            body["input"] = {"type": "wholeSlide"}
        if action == "newImageFiles":
            body["imageInfo"] = slide_metadata().model_dump(mode="json")
        body.update(overrides)
        return body

    def post(self, body: Any, app_id: str = "strand-default", **kwargs: Any) -> httpx.Response:
        return self.client.post(f"/sectra/{app_id}", json=body, **kwargs)


BridgeFactory = Callable[..., Bridge]


@pytest.fixture
def make_bridge(
    sectra: RecordingSectra, redis_client: redis.Redis, key_prefix: str, tmp_path: Path
) -> Iterator[BridgeFactory]:
    """Start the webhook with settings overrides; every started server is stopped at teardown."""
    stack: list[ServerThread] = []
    clients: list[httpx.Client] = []

    def start(enqueue: Callable[[str], None] | None = None, **env: Any) -> Bridge:
        values: dict[str, Any] = {
            "SECTRA_ALLOWED_CALLBACK_URLS": sectra.url,
            "SECTRA_ALLOW_HTTP": True,
            "BRIDGE_WORK_DIR": tmp_path / "work",
            "REDIS_URL": "redis://127.0.0.1:1/0",  # never used: the store is passed in
        }
        values.update(env)
        settings = Settings(**values)
        store = RunStore(redis_client, prefix=key_prefix)
        enqueued: list[str] = []
        app = create_app(settings, bridge_apps(), store=store, enqueue=enqueue or enqueued.append)
        server = ServerThread(app).__enter__()
        stack.append(server)
        client = httpx.Client(base_url=server.url, timeout=30)
        clients.append(client)
        return Bridge(server.url, client, store, enqueued, sectra, settings)

    yield start
    for client in clients:
        client.close()
    for server in stack:
        server.__exit__()
    for key in redis_client.scan_iter(f"{key_prefix}:*"):
        redis_client.delete(key)


@pytest.fixture
def bridge(make_bridge: BridgeFactory) -> Bridge:
    return make_bridge()
