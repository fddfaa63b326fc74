"""Client configuration and key handling: where the key comes from, and where it never goes."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from strand_client import AuthError, Client, UploadCheckpoint
from strand_client.testing import FakeStrandServer


class RecordingTransport(httpx.HTTPTransport):
    """The real transport, noting which requests carried an Authorization header."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, str, bool]] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.seen.append((request.method, request.url.path, "authorization" in request.headers))
        return super().handle_request(request)


def test_missing_key_is_a_clear_auth_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STRAND_API_KEY", raising=False)
    with pytest.raises(AuthError, match="STRAND_API_KEY") as raised:
        Client()
    assert raised.value.error_code == "missing_api_key"


def test_key_and_url_come_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, fake: FakeStrandServer
) -> None:
    monkeypatch.setenv("STRAND_API_KEY", fake.api_key)
    monkeypatch.setenv("STRAND_BASE_URL", fake.url + "/")
    with Client() as client:
        assert client.api_root == f"{fake.url}/api/v1"
        assert "CD8" in client.markers.list()


def test_default_base_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STRAND_BASE_URL", raising=False)
    with Client(api_key="sk-strand-x") as client:
        assert client.base_url == "https://app.strandai.com"


def test_key_is_sent_to_the_api_only_and_never_shown(
    fake: FakeStrandServer,
    make_file: Callable[..., Path],
    caplog: pytest.LogCaptureFixture,
) -> None:
    transport = RecordingTransport()
    fake.fail_next_puts(1, status=503)
    fake.fail_next_requests("/api/v1/uploads/", 1, status=503)
    checkpoints: list[UploadCheckpoint] = []
    with caplog.at_level(logging.DEBUG), Client(fake.api_key, fake.url, transport=transport) as client:
        client.uploads.upload_file(make_file(300 * 1024), on_checkpoint=checkpoints.append)
        shown = repr(client) + repr(client._http) + repr(client._http.client.auth)

    upload_requests = [seen for seen in transport.seen if seen[1].startswith("/gcs/")]
    api_requests = [seen for seen in transport.seen if seen[1].startswith("/api/v1/")]
    assert upload_requests and not any(auth for _, _, auth in upload_requests)
    assert api_requests and all(auth for _, _, auth in api_requests)
    assert fake.api_key not in shown
    assert fake.api_key not in caplog.text
    assert "Strand call failed, retrying" in caplog.text  # the retries did log, without the key
    assert fake.api_key not in str(checkpoints)
