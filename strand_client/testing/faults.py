"""Fault injection for the fake platform: the switches tests flip, and the middleware that applies
the generic ones (latency, "fail the next N requests under this path")."""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from dataclasses import dataclass
from typing import Any

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send


@dataclass(frozen=True)
class PutFault:
    """What to do to one data PUT: answer `status` without storing, or keep only `fraction` of it."""

    status: int | None = None
    retry_after: float | None = None
    fraction: float | None = None


@dataclass(frozen=True)
class SseDrop:
    after_events: int
    abrupt: bool


@dataclass(frozen=True)
class SubmitRejection:
    status: int
    retry_after: float | None
    after_create: bool  # the job exists although the answer is an error: the "maybe submitted" case


@dataclass
class _RequestFault:
    prefix: str
    remaining: int
    status: int
    retry_after: float | None


class Faults:
    """Armed faults, consumed one request at a time. Thread-safe: tests arm them while requests run."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.latency = 0.0
        self._put_failures: deque[PutFault] = deque()
        self._partial_puts: deque[PutFault] = deque()
        self._periodic: tuple[int | None, int | None, int, float] = (None, None, 503, 0.5)
        self._data_puts = 0
        self._sse_drops: deque[SseDrop] = deque()
        self._submits: deque[SubmitRejection] = deque()
        self._requests: list[_RequestFault] = []

    def fail_puts(self, n: int, status: int, retry_after: float | None) -> None:
        with self._lock:
            self._put_failures.extend(PutFault(status, retry_after) for _ in range(n))

    def keep_partial(self, n: int, fraction: float) -> None:
        with self._lock:
            self._partial_puts.extend(PutFault(fraction=fraction) for _ in range(n))

    def periodic(
        self, fail_every: int | None, keep_partial_every: int | None, status: int, fraction: float
    ) -> None:
        with self._lock:
            self._periodic = (fail_every, keep_partial_every, status, fraction)
            self._data_puts = 0

    def drop_sse(self, after_events: int, connections: int, abrupt: bool) -> None:
        with self._lock:
            self._sse_drops.extend(SseDrop(after_events, abrupt) for _ in range(connections))

    def reject_submits(self, n: int, status: int, retry_after: float | None, after_create: bool) -> None:
        with self._lock:
            self._submits.extend(SubmitRejection(status, retry_after, after_create) for _ in range(n))

    def fail_requests(self, prefix: str, n: int, status: int, retry_after: float | None) -> None:
        with self._lock:
            self._requests.append(_RequestFault(prefix, n, status, retry_after))

    def take_put_failure(self) -> PutFault | None:
        """For any PUT to a session, status queries included (GCS fails those too)."""
        with self._lock:
            return self._put_failures.popleft() if self._put_failures else None

    def take_data_put_fault(self) -> PutFault | None:
        """For PUTs that carry bytes; the periodic pattern counts only these."""
        with self._lock:
            self._data_puts += 1
            fail_every, partial_every, status, fraction = self._periodic
            # Offset the partial pattern by half a period so the two faults never hit the same PUT.
            if fail_every and self._data_puts % fail_every == 0:
                return PutFault(status, None)
            if partial_every and (self._data_puts + partial_every // 2) % partial_every == 0:
                return PutFault(fraction=fraction)
            return self._partial_puts.popleft() if self._partial_puts else None

    def take_sse_drop(self) -> SseDrop | None:
        with self._lock:
            return self._sse_drops.popleft() if self._sse_drops else None

    def take_submit_rejection(self) -> SubmitRejection | None:
        with self._lock:
            return self._submits.popleft() if self._submits else None

    def take_request_fault(self, path: str) -> _RequestFault | None:
        with self._lock:
            for fault in self._requests:
                if fault.remaining > 0 and path.startswith(fault.prefix):
                    fault.remaining -= 1
                    return fault
            return None


async def drain(receive: Receive) -> int:
    """Read and discard a request body, so an early error answer reaches a client still sending."""
    received = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return received
        received += len(message.get("body", b""))
        if not message.get("more_body", False):
            return received


def error_body(code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"error": code, "message": message, **extra}


class FaultMiddleware:
    """Applies generic request faults and answer latency (pure ASGI, so streaming stays intact)."""

    def __init__(self, app: ASGIApp, faults: Faults) -> None:
        self.app = app
        self.faults = faults

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        fault = self.faults.take_request_fault(scope["path"])
        if fault is not None:
            await drain(receive)
            headers = {"Retry-After": f"{fault.retry_after:g}"} if fault.retry_after is not None else None
            body = error_body("injected_fault", f"Injected HTTP {fault.status} (fault injection)")
            await JSONResponse(body, fault.status, headers=headers)(scope, receive, send)
            return
        latency = self.faults.latency
        if latency <= 0:
            await self.app(scope, receive, send)
            return

        async def late_send(message: Message) -> None:
            # The work is done at once and only the answer is late: a client that times out
            # has no way to know whether its request took effect, as with a real slow link.
            if message["type"] == "http.response.start":
                await asyncio.sleep(latency)
            await send(message)

        await self.app(scope, receive, late_send)
