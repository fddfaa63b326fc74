"""Per-endpoint request counters for the fake platform: what benches and tests read to say how many
calls of each kind one run costs Strand (e.g. status polls per minute, estimates per 429).

Counted as pure ASGI around everything else (fault injection included), keyed by the route
template FastAPI matched, so `/api/v1/jobs/{job_id}` is one key however many jobs there are.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send


def _route_of(scope: Scope) -> str:
    """The matched route's template; else (plain Starlette routes such as the GCS upload, answers
    no route saw: an injected fault, a 404) the path's first two segments, so ids never become keys."""
    path = getattr(scope.get("route"), "path", None)
    if isinstance(path, str):
        return path
    head = [part for part in str(scope["path"]).split("/") if part][:2]
    return "/" + "/".join([*head, "*"])


@dataclass(frozen=True, slots=True)
class RequestKey:
    method: str
    route: str  # the route template, e.g. "/api/v1/jobs/{job_id}"
    status: int


class RequestCounts:
    """Thread-safe counts of answered requests by (method, route template, status)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[RequestKey] = Counter()

    def add(self, key: RequestKey) -> None:
        with self._lock:
            self._counts[key] += 1

    def snapshot(self) -> Counter[RequestKey]:
        with self._lock:
            return Counter(self._counts)

    def by_endpoint(self) -> Counter[str]:
        """Counts keyed "METHOD route", every status together."""
        out: Counter[str] = Counter()
        for key, n in self.snapshot().items():
            out[f"{key.method} {key.route}"] += n
        return out


class RequestCounting:
    """Counts each answer when its status line is sent (an SSE stream counts once, when it opens)."""

    def __init__(self, app: ASGIApp, counts: RequestCounts) -> None:
        self.app = app
        self.counts = counts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def counting_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                self.counts.add(RequestKey(scope["method"], _route_of(scope), int(message["status"])))
            await send(message)

        await self.app(scope, receive, counting_send)
