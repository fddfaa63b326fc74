"""The FastAPI application: Sectra's webhook, the admin API, probes and metrics.

`create_app` takes every dependency as an argument (settings, apps, run store,
the enqueue function, Sectra's transport) so tests and the demo wire real
parts explicitly; with none given it builds them from the environment.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager

import anyio
import httpx
import redis
from fastapi import FastAPI, Request

from service import health, routes_admin, routes_sectra, ui
from service.errors import install_error_handlers
from service.sectra_link import DEFAULT_HEADERS, SharedTransport
from service.state import ServiceState
from workers.apps import AppConfig, load_apps
from workers.runstore import RunStore
from workers.settings import Settings, get_settings

# Enough parallel calls to Sectra servers for the webhook's burst, few enough to be polite; every
# connection may stay open, since reconnecting under load costs more than an idle socket.
_SECTRA_POOL = httpx.Limits(max_connections=64, max_keepalive_connections=64, keepalive_expiry=30.0)
# Threads for blocking work (Redis, Sectra, the queue). Each request holds one for a few ms;
# more threads than this only fight over the GIL and raise latency under load.
BLOCKING_THREADS = 16


def _enqueue_with_celery(run_id: str) -> None:
    # Imported on first use: importing Celery costs the web process nothing until a run starts.
    from workers.dispatch import enqueue_run

    enqueue_run(run_id)


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
    sectra_transport: httpx.BaseTransport | None = None,
) -> FastAPI:
    settings = settings or get_settings()
    owned_redis: redis.Redis | None = None
    if store is None:
        owned_redis = redis.Redis.from_url(
            settings.redis_url, socket_timeout=5, socket_connect_timeout=2, health_check_interval=30
        )
        store = RunStore(owned_redis, retention_seconds=settings.run_retention_days * 86400)
    owned_transport = None if sectra_transport is not None else httpx.HTTPTransport(limits=_SECTRA_POOL)
    transport = sectra_transport or owned_transport
    assert transport is not None
    state = ServiceState(
        settings=settings,
        apps=apps if apps is not None else load_apps(settings.apps_file),
        store=store,
        enqueue=enqueue or _enqueue_with_celery,
        sectra_transport=SharedTransport(transport),
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        anyio.to_thread.current_default_thread_limiter().total_tokens = BLOCKING_THREADS
        yield
        if owned_transport is not None:
            owned_transport.close()
        if owned_redis is not None:
            owned_redis.close()

    app = FastAPI(
        title="sectra-strand-bridge",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.bridge = state
    install_error_handlers(app, _sectra_headers_for)
    app.include_router(routes_sectra.router)
    app.include_router(routes_admin.router)
    app.include_router(health.router)
    app.include_router(ui.router)
    return app
