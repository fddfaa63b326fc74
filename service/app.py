"""The FastAPI application: Sectra's webhook, the admin API, probes and metrics.

`create_app` takes every dependency as an argument (settings, apps, run store,
the enqueue function) so tests and the demo wire real
parts explicitly; with none given it builds them from the environment.
"""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

import anyio
import httpx
import redis
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from sectra_adapter import SharedTransport, proxy_aware_transport
from service import health, routes_admin, routes_sectra, ui
from service.auth import require_admin_token
from service.errors import install_error_handlers
from service.loop_clients import LoopClients
from service.openapi import build_openapi
from service.sectra_link import DEFAULT_HEADERS, WEBHOOK_SECTRA_TIMEOUT
from service.state import ServiceState, sectra_client_pool
from workers.apps import AppConfig, load_apps
from workers.dispatch import DirectEnqueue, enqueue_run_direct
from workers.metering import CountingTransport
from workers.runstore import RunStore
from workers.settings import Settings, get_settings

# For the webhook's `/info` calls (once per Sectra server an hour); each invocation's own calls go
# through `state.sectra_clients`, a bounded pool per server.
_SECTRA_POOL = httpx.Limits(max_connections=64, max_keepalive_connections=64, keepalive_expiry=30.0)
# Threads for blocking work (Redis, Sectra, the queue). Each request holds one for a few ms;
# more threads than this only fight over the GIL and raise latency under load.
BLOCKING_THREADS = 16


def _sectra_headers_for(request: Request) -> Mapping[str, str]:
    """Every answer to Sectra carries its version headers, error answers included."""
    if not request.url.path.startswith("/sectra"):
        return {}
    known: dict[str, str] | None = getattr(request.state, "sectra_headers", None)
    return known or DEFAULT_HEADERS


def create_app(
    settings: Settings | None = None,
    apps: dict[str, AppConfig] | None = None,
    *,
    store: RunStore | None = None,
    enqueue: Callable[[str], None] | None = None,
) -> FastAPI:
    settings = settings or get_settings()
    owned_redis: redis.Redis | None = None
    if store is None:
        owned_redis = redis.Redis.from_url(
            settings.redis_url, socket_timeout=5, socket_connect_timeout=2, health_check_interval=30
        )
        store = RunStore(owned_redis, retention_seconds=settings.run_retention_days * 86400)
    owned_transport = proxy_aware_transport(_SECTRA_POOL)
    state = ServiceState(
        settings=settings,
        apps=apps if apps is not None else load_apps(settings.apps_file),
        store=store,
        enqueue=enqueue or enqueue_run_direct,
        # Counted like the workers' calls: `bridge_external_calls_total{service="sectra"}` by status code.
        sectra_transport=SharedTransport(CountingTransport("sectra", owned_transport)),
        # Per-invocation calls: a pooled client per Sectra server.
        sectra_clients=sectra_client_pool(),
        # A custom `enqueue` (tests, the demo) is called in a worker thread; the default is awaited.
        loop=LoopClients(store, WEBHOOK_SECTRA_TIMEOUT, enqueue=DirectEnqueue() if enqueue is None else None),
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        anyio.to_thread.current_default_thread_limiter().total_tokens = BLOCKING_THREADS
        # On the serving loop, before the first request can pay for it.
        state.loop.prepare()
        # What is imported and built by now lives as long as the process. Frozen out of the garbage
        # collector's reach, it is not walked by a full collection, which any allocation-heavy
        # request can trigger and which holds the GIL, so the event loop (~80 ms when it walked it).
        gc.freeze()
        yield
        await state.loop.close()
        state.sectra_clients.close()
        owned_transport.close()
        if owned_redis is not None:
            owned_redis.close()

    app = FastAPI(
        title="sectra-strand-bridge",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,  # served by `_serve_openapi`, behind the admin token
    )
    app.state.bridge = state
    install_error_handlers(app, _sectra_headers_for)
    routes_sectra.add_routes(app)
    app.include_router(routes_admin.router)
    app.include_router(health.router)
    app.include_router(ui.router)
    _serve_openapi(app)
    return app


def _serve_openapi(app: FastAPI) -> None:
    """`GET /openapi.json`, behind the admin token like `/runs` and `/ui`.

    The document names the admin and status-page routes and this bridge's configured app ids,
    which the bridge otherwise hides while the admin API is off (those routes answer 404 then).
    Integrators get the IA-API contract from Sectra itself; operators, who hold the token, get this.
    """
    document: dict[str, Any] = {}

    @app.get("/openapi.json", include_in_schema=False)
    def openapi_document(request: Request) -> JSONResponse:
        state: ServiceState = app.state.bridge
        require_admin_token(request, state.settings.admin_token)
        if not document:
            document.update(build_openapi(app, state.apps, state.settings))
        return JSONResponse(document)
