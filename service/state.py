"""What every route needs, built once per app: settings, apps, the run store, the queue, Sectra transport."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import httpx
from fastapi import Request

from workers.apps import AppConfig
from workers.runstore import RunStore
from workers.settings import Settings


@dataclass(frozen=True, slots=True)
class ServiceState:
    settings: Settings
    apps: Mapping[str, AppConfig]
    store: RunStore
    # Hands a recorded run to the workers; the Celery boundary (tests pass a list's `append`).
    enqueue: Callable[[str], None]
    # One connection pool for every Sectra call the webhook makes (see `sectra_link`).
    sectra_transport: httpx.BaseTransport


def get_state(request: Request) -> ServiceState:
    state: ServiceState = request.app.state.bridge
    return state
