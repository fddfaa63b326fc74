"""The environment's outbound proxy (HTTP(S)_PROXY, ALL_PROXY, NO_PROXY) on every client we build.

Judged two ways: `EnvironmentProxies` against curl's documented reading of the variables, and
the clients against a real proxy (proxy.py, `tests.fixtures.http_proxy`) through which alone the
target host resolves.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Iterator

import httpx
import pytest
from sectra_client.mock_server import MockSectraServer

from sectra_adapter import (
    AsyncResultPoster,
    EnvironmentProxies,
    NotSent,
    SectraAdapter,
    SectraUnavailable,
    pending_result,
    proxy_aware_transport,
    results_path,
)
from tests.fixtures.http_proxy import ONLY_VIA_PROXY, http_proxy

APP = "strand-app"


@pytest.fixture(scope="module")
def proxy_url() -> Iterator[str]:
    with http_proxy(basic_auth="bridge:s3cret") as url:
        yield url


@pytest.fixture
def sectra_via_proxy(mock_sectra: MockSectraServer) -> str:
    """The mock's URL on a host only the proxy resolves."""
    return mock_sectra.url.replace("127.0.0.1", f"sectra.{ONLY_VIA_PROXY}")


# What curl's documentation says of each setting (curl(1), "ENVIRONMENT"; libcurl CURLOPT_NOPROXY):
# the scheme's own variable, else ALL_PROXY; NO_PROXY a comma list of hosts, each also matching
# its subdomains, a leading dot ignored, `*` matching every host; a proxy without a scheme is HTTP.
@pytest.mark.parametrize(
    ("environment", "url", "expected"),
    [
        ({}, "https://sectra.hospital.local/api", None),
        ({"HTTPS_PROXY": "http://proxy:3128"}, "https://strand.example/v1", "http://proxy:3128"),
        ({"HTTPS_PROXY": "http://proxy:3128"}, "http://sectra.hospital.local", None),
        ({"https_proxy": "proxy:3128"}, "https://strand.example/v1", "http://proxy:3128"),
        ({"ALL_PROXY": "http://all:8080"}, "http://sectra.hospital.local", "http://all:8080"),
        ({"ALL_PROXY": "http://all:8080", "HTTP_PROXY": "http://p:1"}, "http://a.b", "http://p:1"),
        ({"HTTPS_PROXY": "http://p:1", "NO_PROXY": "hospital.local"}, "https://sectra.hospital.local", None),
        ({"HTTPS_PROXY": "http://p:1", "NO_PROXY": "hospital.local"}, "https://hospital.local:8443", None),
        ({"HTTPS_PROXY": "http://p:1", "NO_PROXY": ".hospital.local"}, "https://pacs.hospital.local", None),
        (
            {"HTTPS_PROXY": "http://p:1", "NO_PROXY": "hospital.local"},
            "https://nothospital.local",
            "http://p:1",
        ),
        ({"HTTPS_PROXY": "http://p:1", "NO_PROXY": "a.example, b.example"}, "https://b.example", None),
        ({"HTTPS_PROXY": "http://p:1", "NO_PROXY": "*"}, "https://strand.example", None),
        ({"HTTPS_PROXY": "http://p:1", "NO_PROXY": "10.0.0.5"}, "https://10.0.0.5/api", None),
    ],
)
def test_the_environment_names_the_proxy_as_curl_reads_it(
    monkeypatch: pytest.MonkeyPatch, environment: dict[str, str], url: str, expected: str | None
) -> None:
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    assert EnvironmentProxies().for_url(url) == expected


def test_the_adapter_reaches_sectra_through_the_proxy(
    monkeypatch: pytest.MonkeyPatch, proxy_url: str, sectra_via_proxy: str, token: str
) -> None:
    monkeypatch.setenv("HTTP_PROXY", proxy_url)  # with the proxy's user and password in it
    with SectraAdapter(sectra_via_proxy, token, allow_http=True, max_retries=0) as sectra:
        stored = sectra.create_results(APP, pending_result("s-proxy", "1.0"))
        assert [r.id for r in sectra.get_all_results("s-proxy", APP)] == [stored.id]


def test_a_host_no_proxy_names_is_reached_directly(
    monkeypatch: pytest.MonkeyPatch, proxy_url: str, sectra_via_proxy: str, token: str
) -> None:
    monkeypatch.setenv("HTTP_PROXY", proxy_url)
    monkeypatch.setenv("NO_PROXY", f"localhost,{ONLY_VIA_PROXY}")
    with (
        SectraAdapter(sectra_via_proxy, token, allow_http=True, max_retries=0) as sectra,
        pytest.raises(SectraUnavailable, match="ConnectError"),
    ):
        sectra.create_results(APP, pending_result("s-direct", "1.0"))  # direct: the host does not resolve


def test_httpx_transport_reaches_its_host_through_the_proxy(
    monkeypatch: pytest.MonkeyPatch, proxy_url: str, sectra_via_proxy: str, token: str
) -> None:
    monkeypatch.setenv("HTTP_PROXY", proxy_url)
    auth = {"Authorization": f"Bearer {token}"}
    with httpx.Client(
        transport=proxy_aware_transport(httpx.Limits(max_connections=2)), headers=auth
    ) as client:
        assert client.get(f"{sectra_via_proxy}/info").status_code == 200
    monkeypatch.setenv("NO_PROXY", ONLY_VIA_PROXY)
    with (
        httpx.Client(transport=proxy_aware_transport()) as client,
        pytest.raises(httpx.ConnectError),
    ):
        client.get(f"{sectra_via_proxy}/info")


def test_the_webhooks_own_client_hands_a_proxied_post_back(
    monkeypatch: pytest.MonkeyPatch, mock_sectra: MockSectraServer, token: str
) -> None:
    """It speaks no proxy protocol: a POST the environment sends through a proxy is `NotSent` (the
    adapter sends it), and one NO_PROXY exempts goes out on its own connection."""
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # never connected to by this client

    async def post(url: str) -> object:
        poster = AsyncResultPoster(
            ssl_context=ssl.create_default_context(),
            timeout=5.0,
            connections_per_server=2,
            keepalive_seconds=30.0,
        )
        try:
            return await poster.create_results(
                url, token, pending_result("s-1", "1.0"), path=results_path(APP)
            )
        finally:
            await poster.close()

    with pytest.raises(NotSent, match="proxy"):
        asyncio.run(post(mock_sectra.url))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    assert asyncio.run(post(mock_sectra.url)) is not None
