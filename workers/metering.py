"""Outcome counts of the workers' calls to Strand, for `bridge_external_calls_total`.

A transport wrapper sees every request the Strand client makes (API calls and
upload PUTs alike) without the client knowing about our metrics: the clients
import nothing of ours.
"""

from __future__ import annotations

import httpx

from workers.observability import EXTERNAL_CALLS


class CountingTransport(httpx.BaseTransport):
    """Counts each response by status code, and each failed request by error type."""

    def __init__(self, service: str, inner: httpx.BaseTransport | None = None) -> None:
        self._service = service
        self._inner = inner or httpx.HTTPTransport()

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
