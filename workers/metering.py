"""Worker metrics that need more than a counter: outbound call outcomes and runs in flight.

`bridge_external_calls_total` counts the workers' calls to Strand and Sectra by status code.

A transport wrapper sees every request the Strand client makes (API calls and
upload PUTs alike) without the client knowing about our metrics: the clients
import nothing of ours.
"""

from __future__ import annotations

import httpx
import redis

from sectra_adapter import proxy_aware_transport
from workers.observability import EXTERNAL_CALLS, RUNS_IN_FLIGHT


class CountingTransport(httpx.BaseTransport):
    """Counts each response by status code, and each failed request by error type."""

    def __init__(self, service: str, inner: httpx.BaseTransport | None = None) -> None:
        self._service = service
        # httpx's own, with the environment's proxy (httpx reads it only for a transport it makes).
        self._inner = inner or proxy_aware_transport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        try:
            response = self._inner.handle_request(request)
        except httpx.TransportError as exc:
            EXTERNAL_CALLS.labels(service=self._service, outcome=type(exc).__name__).inc()
            raise
        EXTERNAL_CALLS.labels(service=self._service, outcome=str(response.status_code)).inc()
        return response

    def close(self) -> None:
        self._inner.close()


class InFlight:
    """`bridge_runs_in_flight`, raised once when a run starts and lowered once when it ends.

    A Redis set of the runs counted decides both, so the gauge cannot drift: a run
    that ends without having started (cancelled while `received`), a run that is
    retried and ends twice, or two workers racing on one end, move it once each
    way. The raise and the lower may happen on different pods; the fleet's sum is
    the number of runs under way.
    """

    def __init__(self, client: redis.Redis, *, prefix: str = "bridge") -> None:
        self._redis = client
        self._key = f"{prefix}:in-flight"

    def started(self, run_id: str) -> None:
        if self._redis.sadd(self._key, run_id):
            RUNS_IN_FLIGHT.inc()

    def finished(self, run_id: str) -> None:
        if self._redis.srem(self._key, run_id):
            RUNS_IN_FLIGHT.dec()
