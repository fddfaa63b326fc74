"""Every documented error answer maps to its typed exception, with the server's code and message."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from strand_client import (
    AuthError,
    BadRequestError,
    Client,
    ConflictError,
    MarkerNotAvailableError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    ServerError,
    StrandConnectionError,
    StrandError,
    UnknownMarkersError,
)
from strand_client.testing import FakeStrandServer


@pytest.fixture
def upload_id(client: Client, tiff_slide: Path) -> str:
    return client.uploads.upload_file(tiff_slide).id


def test_400_unknown_markers_names_them(client: Client, upload_id: str) -> None:
    with pytest.raises(UnknownMarkersError) as raised:
        client.predict.submit(upload_id, ["CD8", "CD999", "Foo"])
    assert raised.value.unknown == ["CD999", "Foo"]
    assert raised.value.status_code == 400 and raised.value.error_code == "unknown_markers"
    assert isinstance(raised.value, BadRequestError)


def test_400_other_bad_request(client: Client, upload_id: str) -> None:
    with pytest.raises(BadRequestError) as raised:
        client.predict.estimate(upload_id, ["CD8"], model="v10")
    assert raised.value.error_code == "unknown_model" and "v10" in raised.value.message


def test_401_wrong_key(fake: FakeStrandServer) -> None:
    with Client(api_key="sk-strand-wrong", base_url=fake.url) as wrong, pytest.raises(AuthError) as raised:
        wrong.markers.list()
    assert raised.value.status_code == 401 and raised.value.message == "Missing or invalid API key"


def test_403_marker_not_available_names_them(client: Client, fake: FakeStrandServer, upload_id: str) -> None:
    fake.options.entitled_markers = frozenset({"CD8", "PanCK"})
    with pytest.raises(MarkerNotAvailableError) as raised:
        client.predict.estimate(upload_id, ["CD8", "Ki67", "FOXP3"])
    assert raised.value.unavailable == ["Ki67", "FOXP3"]
    assert raised.value.status_code == 403


def test_other_403_is_permission_denied(client: Client, fake: FakeStrandServer) -> None:
    fake.fail_next_requests("/api/v1/markers", 1, status=403)
    with pytest.raises(PermissionDeniedError) as raised:
        client.markers.list()
    assert raised.value.error_code == "injected_fault"


def test_404_unknown_upload_and_job(client: Client) -> None:
    with pytest.raises(NotFoundError) as raised:
        client.uploads.get("no-such-upload")
    assert raised.value.error_code == "upload_not_found"
    with pytest.raises(NotFoundError):
        client.predict.estimate("no-such-upload", ["CD8"])
    with pytest.raises(NotFoundError):
        client.jobs.get("no-such-job").refresh()


def _open_session(fake: FakeStrandServer, size: int) -> dict[str, str]:
    """`POST /uploads` by hand, to hold an upload in a state the client itself never leaves it in."""
    answer = httpx.post(
        f"{fake.url}/api/v1/uploads",
        json={"filename": "slide.tif", "fileSize": size, "contentType": "image/tiff"},
        headers={"Authorization": f"Bearer {fake.api_key}"},
    )
    return dict(answer.json())


def test_409_estimate_before_the_upload_has_dimensions(client: Client, fake: FakeStrandServer) -> None:
    session = _open_session(fake, 10)
    with pytest.raises(ConflictError) as raised:
        client.predict.estimate(session["uploadId"], ["CD8"])
    assert raised.value.error_code == "upload_missing_dimensions"


def test_409_submit_before_the_upload_is_ready(
    client: Client, fake: FakeStrandServer, tiff_slide: Path
) -> None:
    fake.options.preprocess_seconds = 60
    size = tiff_slide.stat().st_size
    session = _open_session(fake, size)
    stored = httpx.put(
        session["uploadUrl"],
        content=tiff_slide.read_bytes(),
        headers={"Content-Range": f"bytes 0-{size - 1}/{size}"},
    )
    assert stored.status_code == 200
    assert client.uploads.get(session["uploadId"]).status == "preprocessing"
    with pytest.raises(ConflictError) as raised:
        client.predict.submit(session["uploadId"], ["CD8"])
    assert raised.value.error_code == "upload_not_ready"


def test_429_on_reads_is_retried_and_surfaces_when_persistent(client: Client, fake: FakeStrandServer) -> None:
    fake.fail_next_requests("/api/v1/markers", 2, status=429, retry_after=0)
    assert "CD8" in client.markers.list()
    fake.fail_next_requests("/api/v1/markers", 10, status=429, retry_after=0.01)
    with pytest.raises(RateLimitError) as raised:
        client.markers.list()
    assert raised.value.retry_after == 0.01


def test_5xx_on_reads_is_retried_then_raised_as_server_error(client: Client, fake: FakeStrandServer) -> None:
    fake.fail_next_requests("/api/v1/markers", 5, status=502)
    assert client.markers.list()
    fake.fail_next_requests("/api/v1/markers", 6, status=500)
    with pytest.raises(ServerError) as raised:
        client.markers.list()
    assert raised.value.status_code == 500


def test_unreachable_reads_are_retried_then_a_connection_error(fake: FakeStrandServer) -> None:
    port = fake.port
    fake.stop()
    offline = Client(api_key=fake.api_key, base_url=f"http://127.0.0.1:{port}", max_retries=2)
    with offline, pytest.raises(StrandConnectionError):
        offline.markers.list()


def test_every_error_is_a_strand_error() -> None:
    for error in (UnknownMarkersError, MarkerNotAvailableError, ServerError, StrandConnectionError):
        assert issubclass(error, StrandError)


def test_retry_after_is_a_floor_for_the_clients_own_backoff(client: Client, fake: FakeStrandServer) -> None:
    """The policy's own waits are milliseconds here; the server asked for 0.15 s, so at least that passes.

    (Within the policy's cap of four times its longest wait, 0.2 s for this test policy.)
    """
    fake.fail_next_requests("/api/v1/markers", 1, status=503, retry_after=0.15)
    started = time.monotonic()
    assert "CD8" in client.markers.list()
    assert time.monotonic() - started >= 0.15
