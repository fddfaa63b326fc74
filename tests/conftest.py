"""Shared fixtures: real services only. A test that needs one and cannot get it fails loudly."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
import redis


@pytest.fixture(scope="session")
def redis_url() -> str:
    """A real Redis (CI starts one if none answers). Tests use db 15 to stay clear of other data."""
    base = os.environ.get("REDIS_URL", "redis://localhost:6379/0")
    url = base.rsplit("/", 1)[0] + "/15" if base.count("/") >= 3 else base + "/15"
    try:
        redis.Redis.from_url(url, socket_connect_timeout=2).ping()
    except redis.RedisError as exc:
        pytest.fail(f"Redis is required for this test and does not answer on {url}: {exc}")
    return url


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def key_prefix() -> str:
    """A unique key namespace per test so parallel or repeated runs never collide."""
    return f"test-{uuid.uuid4().hex[:10]}"


@pytest.fixture(autouse=True)
def _fresh_sectra_versions() -> None:
    """Each test learns its Sectra's versions afresh: the cache is keyed by URL, and a test's mock may
    listen on a port an earlier test's mock (with other versions) used."""
    from sectra_adapter import VERSION_CACHE

    VERSION_CACHE.clear()


@pytest.fixture(autouse=True)
def _no_proxy_of_the_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every client honours HTTP(S)_PROXY / ALL_PROXY / NO_PROXY; a test sets them itself
    (tests.fixtures.http_proxy), so none inherits the machine's."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
