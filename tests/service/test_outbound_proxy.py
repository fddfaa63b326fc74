"""The workers' and the webhook's calls go through the proxy the environment names (the Helm chart's
`proxy.https` / `proxy.noProxy`), judged by a real proxy (proxy.py) through which alone the target
host resolves (`tests.fixtures.http_proxy`)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from prometheus_client import REGISTRY

from service.cli import main
from strand_client import Client as StrandClient
from strand_client import StrandConnectionError
from strand_client.testing import FakeStrandServer
from tests.fixtures.http_proxy import ONLY_VIA_PROXY, http_proxy
from tests.service.conftest import SECTRA_TOKEN, BridgeFactory, RecordingSectra
from workers.metering import CountingTransport
from workers.runstore import run_id_for
from workers.settings import get_settings


def _sectra_connect_failures() -> float:
    sample = REGISTRY.get_sample_value(
        "bridge_external_calls_total", {"service": "sectra", "outcome": "ConnectFailed"}
    )
    return sample or 0.0


@pytest.fixture
def strand() -> Iterator[FakeStrandServer]:
    server = FakeStrandServer(job_duration=0.1)
    server.start()
    try:
        yield server
    finally:
        server.close()


def test_the_workers_strand_client_uploads_and_asks_through_the_proxy(
    monkeypatch: pytest.MonkeyPatch, strand: FakeStrandServer, tmp_path: Path
) -> None:
    slide = tmp_path / "slide.svs"
    slide.write_bytes(bytes(range(256)) * 4096)  # 1 MiB
    via = strand.url.replace("127.0.0.1", f"strand.{ONLY_VIA_PROXY}")
    with http_proxy() as proxy:
        monkeypatch.setenv("HTTPS_PROXY", "http://unused.invalid:1")  # only http:// is asked for here
        monkeypatch.setenv("HTTP_PROXY", proxy)
        # As workers.runtime makes it: a counting transport over the default wire.
        with StrandClient(
            api_key=strand.api_key, base_url=via, transport=CountingTransport("strand")
        ) as client:
            assert client.markers.list()
            upload = client.uploads.upload_file(slide)
            assert client.predict.estimate(upload.id, ["CD8"]).marker_count == 1
    assert strand.stats.upload_sessions_opened == 1


def test_without_the_proxy_the_same_host_is_not_reached(strand: FakeStrandServer) -> None:
    via = strand.url.replace("127.0.0.1", f"strand.{ONLY_VIA_PROXY}")
    with (
        StrandClient(
            api_key=strand.api_key, base_url=via, max_retries=0, transport=CountingTransport("strand")
        ) as client,
        pytest.raises(StrandConnectionError),
    ):
        client.markers.list()


def test_a_create_stores_its_pending_result_through_the_proxy(
    monkeypatch: pytest.MonkeyPatch, make_bridge: BridgeFactory, sectra: RecordingSectra
) -> None:
    """The webhook's own client speaks no proxy protocol; a callback the environment proxies takes the
    adapter's client, which goes through the proxy: Sectra's /info and the result's POST alike."""
    via = sectra.url.replace("127.0.0.1", f"sectra.{ONLY_VIA_PROXY}")
    with http_proxy() as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy)
        monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")  # the test's own calls to the bridge
        bridge = make_bridge(SECTRA_ALLOWED_CALLBACK_URLS=via)
        body = bridge.invocation(callbackInfo={"url": via, "token": SECTRA_TOKEN})
        direct_attempts = _sectra_connect_failures()
        response = bridge.post(body)
    # Not tried direct first (which, where only the proxy gets out, waits out the connect timeout).
    assert _sectra_connect_failures() == direct_attempts
    assert response.status_code == 200, response.text
    (stored,) = sectra.get_results("strand-default", "slide-42")
    assert response.json()["id"] == stored.id
    assert response.headers["X-Sectra-ApiVersion"] == sectra.api_version
    run_id = run_id_for("strand-default", "slide-42", body["cancellationToken"])
    assert bridge.store.require(run_id).sectra_result_id == stored.id
    assert bridge.enqueued == [run_id]


def test_check_reaches_strand_through_the_proxy_and_says_so_without_its_password(
    monkeypatch: pytest.MonkeyPatch, redis_url: str, strand: FakeStrandServer
) -> None:
    via = strand.url.replace("127.0.0.1", f"strand.{ONLY_VIA_PROXY}")
    with http_proxy(basic_auth="it-dept:proxy-pass-93") as proxy:
        port = proxy.rsplit(":", 1)[1]
        monkeypatch.setenv("HTTP_PROXY", proxy)
        get_settings.cache_clear()
        try:
            env = {"REDIS_URL": redis_url, "STRAND_API_KEY": strand.api_key, "STRAND_BASE_URL": via}
            result = CliRunner().invoke(main, ["check"], env=env)
        finally:
            get_settings.cache_clear()
    assert f"Strand answers at {via}, through the proxy at 127.0.0.1:{port}" in result.output
    assert "proxy-pass-93" not in result.output and strand.api_key not in result.output
