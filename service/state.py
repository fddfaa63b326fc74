"""What every route needs, built once per app: settings, apps, the run store, the queue, Sectra transport."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import httpx
from fastapi import Request

from sectra_adapter import SectraClientPool, proxy_aware_transport
from service.loop_clients import LoopClients
from workers.apps import AppConfig
from workers.metering import CountingTransport
from workers.runstore import RunStore
from workers.settings import Settings

# Per Sectra server: as many connections as the blocking threads that can call it at once
# (`app.BLOCKING_THREADS`), every one kept open, since reconnecting under load costs more than an idle socket.
SECTRA_SERVER_LIMITS = httpx.Limits(max_connections=16, max_keepalive_connections=16, keepalive_expiry=30.0)


@dataclass(frozen=True, slots=True)
class ServiceState:
    settings: Settings
    apps: Mapping[str, AppConfig]
    store: RunStore
    # Hands a recorded run to the workers; the Celery boundary (tests pass a list's `append`).
    enqueue: Callable[[str], None]
    # The transport of the webhook's one-off Sectra calls (`/info`, see `sectra_link`).
    sectra_transport: httpx.BaseTransport
    # The clients of the webhook's per-invocation Sectra calls, one per callback server; closed at shutdown.
    sectra_clients: SectraClientPool
    # The create path's clients on the event loop (Redis, Sectra's result POST, the queue).
    loop: LoopClients


def sectra_client_pool() -> SectraClientPool:
    """Each Sectra server its own bounded connection pool, counted in `bridge_external_calls_total`."""

    def own_transport() -> httpx.BaseTransport:
        return CountingTransport("sectra", proxy_aware_transport(SECTRA_SERVER_LIMITS))

    return SectraClientPool(own_transport)


def get_state(request: Request) -> ServiceState:
    state: ServiceState = request.app.state.bridge
    return state
