"""`SectraClientPool`: one client per Sectra server, shared by adapters of different tokens.

The remote is faked at the transport (httpx.MockTransport records what would go on the wire);
everything above it is the real adapter and pool.
"""

from __future__ import annotations

import json
import threading

import httpx
import pytest

from sectra_adapter._client import SectraAdapter
from sectra_adapter._pool import SectraClientPool
from sectra_adapter._results import pending_result

APP = "strand-default"


class FakeSectra:
    """Answers `POST /applications/{app}/results` as Sectra does, and records every request."""

    def __init__(self, set_cookie: bool = False) -> None:
        self.requests: list[httpx.Request] = []
        self.transports = 0
        self.closed = 0
        self.set_cookie = set_cookie
        self._lock = threading.Lock()

    def transport(self) -> httpx.BaseTransport:
        fake = self

        class Counted(httpx.MockTransport):
            def close(self) -> None:
                fake.closed += 1

        with self._lock:
            self.transports += 1
        return Counted(self._answer)

    def _answer(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        body = json.loads(request.content)
        stored = {**body, "id": len(self.requests), "versionId": "v1"}
        headers = {"Set-Cookie": "session=abc123; Path=/"} if self.set_cookie else {}
        return httpx.Response(201, json=stored, headers=headers)


def _create(pool: SectraClientPool, base: str, token: str) -> None:
    with pool.client(base) as client:
        adapter = SectraAdapter(base, token, allow_http=True, client=client)
        adapter.create_results(APP, pending_result("slide-1", "1.0"))
        adapter.close()  # an adapter on a pooled client leaves it open for the next one


def test_adapters_of_different_tokens_share_one_client_and_send_their_own_token() -> None:
    sectra = FakeSectra()
    pool = SectraClientPool(sectra.transport)
    _create(pool, "http://sectra-a", "token-one")
    _create(pool, "http://sectra-a", "token-two")
    assert sectra.transports == 1 and len(pool) == 1
    assert [r.headers["authorization"] for r in sectra.requests] == ["Bearer token-one", "Bearer token-two"]
    # What `http_client()` sets on every adapter's client, pooled or not.
    assert all(r.headers["accept"] == "application/json" for r in sectra.requests)
    assert all(r.extensions["timeout"]["read"] == 30.0 for r in sectra.requests)  # the adapter's own
    pool.close()
    assert sectra.closed == 1


def test_no_cookie_from_one_invocation_goes_out_with_the_next() -> None:
    sectra = FakeSectra(set_cookie=True)
    pool = SectraClientPool(sectra.transport)
    _create(pool, "http://sectra-a", "token-one")
    _create(pool, "http://sectra-a", "token-two")
    assert "cookie" not in sectra.requests[1].headers
    pool.close()


def test_servers_beyond_the_bound_evict_the_least_recently_used() -> None:
    sectra = FakeSectra()
    pool = SectraClientPool(sectra.transport, max_servers=2)
    _create(pool, "http://sectra-a", "t")
    _create(pool, "http://sectra-b", "t")
    _create(pool, "http://sectra-a", "t")  # a is now the most recently used
    _create(pool, "http://sectra-c", "t")  # evicts b
    assert len(pool) == 2 and sectra.transports == 3 and sectra.closed == 1
    _create(pool, "http://sectra-a", "t")
    assert sectra.transports == 3  # a was kept
    _create(pool, "http://sectra-b", "t")
    assert sectra.transports == 4  # b was built anew
    pool.close()
    assert sectra.closed == 4


def test_an_evicted_client_in_use_is_closed_only_when_its_request_ends() -> None:
    sectra = FakeSectra()
    pool = SectraClientPool(sectra.transport, max_servers=1)
    with pool.client("http://sectra-a") as held:
        _create(pool, "http://sectra-b", "t")  # evicts a while it is held
        assert sectra.closed == 0
        SectraAdapter("http://sectra-a", "t", allow_http=True, client=held).create_results(
            APP, pending_result("slide-1", "1.0")
        )
    assert sectra.closed == 1
    pool.close()


def test_a_closed_pool_refuses_new_requests() -> None:
    pool = SectraClientPool(FakeSectra().transport)
    pool.close()
    with pytest.raises(RuntimeError, match="closed"), pool.client("http://sectra-a"):
        pass


def test_an_adapter_with_its_own_client_still_closes_it() -> None:
    sectra = FakeSectra()
    adapter = SectraAdapter("http://sectra-a", "t", allow_http=True, transport=sectra.transport())
    adapter.create_results(APP, pending_result("slide-1", "1.0"))
    adapter.close()
    assert sectra.closed == 1
