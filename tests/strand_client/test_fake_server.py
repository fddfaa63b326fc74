"""The fake itself, at the wire: the GCS resumable protocol, the platform's newer endpoints and
body shapes, so a client other than ours (the official SDK) sees what the live platform sends."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

import strand_client
from strand_client import Client
from strand_client.testing import DEFAULT_API_KEY, FakeStrandServer

QUANTUM = 256 * 1024


@pytest.fixture
def api(fake: FakeStrandServer) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {fake.api_key}"}
    with httpx.Client(base_url=f"{fake.url}/api/v1", headers=headers, timeout=10) as raw:
        yield raw


def _session(api: httpx.Client, size: int) -> dict[str, str]:
    answer = api.post(
        "/uploads", json={"filename": "s.svs", "fileSize": size, "contentType": "image/aperio-svs"}
    )
    assert answer.status_code == 200
    body = answer.json()
    assert set(body) >= {"uploadId", "uploadUrl", "gcsPath"}
    return dict(body)


def _put(url: str, data: bytes, content_range: str) -> httpx.Response:
    return httpx.put(url, content=data, headers={"Content-Range": content_range}, timeout=10)


def test_gcs_resumable_protocol(api: httpx.Client, fake: FakeStrandServer) -> None:
    size = 2 * QUANTUM + 100
    data = bytes(range(256)) * (size // 256) + bytes(size % 256)
    session = _session(api, size)
    url = session["uploadUrl"]

    query = _put(url, b"", f"bytes */{size}")
    assert query.status_code == 308 and "Range" not in query.headers  # nothing persisted yet

    ahead = _put(url, data[QUANTUM : 2 * QUANTUM], f"bytes {QUANTUM}-{2 * QUANTUM - 1}/{size}")
    assert ahead.status_code == 400  # beyond the persisted offset

    first = _put(url, data[: QUANTUM + 1000], f"bytes 0-{QUANTUM + 999}/{size}")
    assert (
        first.status_code == 308 and first.headers["Range"] == f"bytes=0-{QUANTUM - 1}"
    )  # whole quanta only

    overlap = _put(url, data[1000:], f"bytes 1000-{size - 1}/{size}")  # starts inside what is held
    assert overlap.status_code == 200 and overlap.json()["size"] == str(size)
    assert _put(url, b"", f"bytes */{size}").status_code == 200
    assert fake.upload_path(session["uploadId"]).read_bytes() == data

    # Ingest starts from the finalised object alone, as the official SDK's polling expects.
    assert api.get(f"/uploads/{session['uploadId']}").json()["status"] == "ready"


def test_unknown_session_is_404(fake: FakeStrandServer) -> None:
    assert _put(f"{fake.url}/gcs/upload/nope", b"x", "bytes 0-0/1").status_code == 404


def test_size_mismatch_fails_the_upload(api: httpx.Client) -> None:
    session = _session(api, 1000)
    assert _put(session["uploadUrl"], bytes(10), "bytes 0-9/10").status_code == 200
    upload = api.get(f"/uploads/{session['uploadId']}").json()
    assert upload["status"] == "upload_failed"
    complete = api.post(f"/uploads/{session['uploadId']}/complete")
    assert complete.status_code == 409 and complete.json()["error"] == "upload_failed"


def test_complete_before_all_bytes_is_a_conflict(api: httpx.Client) -> None:
    session = _session(api, 2 * QUANTUM)
    _put(session["uploadUrl"], bytes(QUANTUM), f"bytes 0-{QUANTUM - 1}/{2 * QUANTUM}")
    assert api.get(f"/uploads/{session['uploadId']}").json()["status"] == "uploading"
    answer = api.post(f"/uploads/{session['uploadId']}/complete")
    assert answer.status_code == 409 and answer.json()["error"] == "upload_incomplete"


def test_preprocessing_then_ready(api: httpx.Client, fake: FakeStrandServer) -> None:
    fake.options.preprocess_seconds = 0.2
    session = _session(api, 10)
    _put(session["uploadUrl"], bytes(10), "bytes 0-9/10")
    assert api.get(f"/uploads/{session['uploadId']}").json()["status"] == "preprocessing"
    deadline = time.monotonic() + 10
    while api.get(f"/uploads/{session['uploadId']}").json()["status"] != "ready":
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_every_api_route_needs_the_key(fake: FakeStrandServer) -> None:
    for method, path in [
        ("GET", "/markers"),
        ("GET", "/jobs/x"),
        ("POST", "/predict"),
        ("GET", "/samples/x"),
    ]:
        answer = httpx.request(method, f"{fake.url}/api/v1{path}")
        assert answer.status_code == 401
        assert set(answer.json()) == {"error", "message"}


def test_error_bodies_have_the_documented_shape(api: httpx.Client) -> None:
    for answer in (api.get("/jobs/unknown"), api.get("/no/such/route"), api.post("/predict", json={})):
        body = answer.json()
        assert answer.status_code in (400, 404)
        assert isinstance(body["error"], str) and isinstance(body["message"], str)


def test_markers_catalog_follows_entitlement(api: httpx.Client, fake: FakeStrandServer) -> None:
    full = api.get("/markers").json()
    assert full["fullPanel"] is True and {"name": "CD8", "publicPanel": True} in full["markers"]
    fake.options.entitled_markers = frozenset({"CD8", "FOXP3"})
    gated = api.get("/markers").json()
    assert gated == {
        "markers": [{"name": "CD8", "publicPanel": True}, {"name": "FOXP3", "publicPanel": False}],
        "fullPanel": False,
    }


def test_dry_run_and_sample_detail(client: Client, api: httpx.Client, tiff_slide: Path) -> None:
    upload = client.uploads.upload_file(tiff_slide)
    dry = api.post("/predict", json={"uploadId": upload.id, "markers": ["CD8"], "dryRun": True})
    assert dry.status_code == 200 and dry.json()["estimatedCredits"] >= 1
    job = client.predict.submit(upload.id, ["CD8"])
    sample = api.get(f"/samples/{upload.id}").json()
    assert sample["ownership"] == "mine" and sample["jobCount"] == 1
    assert sample["jobs"][0]["id"] == job.id and sample["jobs"][0]["model"] == "v0.7"


def test_result_files_support_ranges_and_404(client: Client, api: httpx.Client, tiff_slide: Path) -> None:
    upload = client.uploads.upload_file(tiff_slide)
    job = client.predict.submit(upload.id, ["CD8"])
    job.wait(timeout=30)
    location = api.get(f"/jobs/{job.id}/results").json()
    assert set(location) == {"resultUrl", "resultBasePath", "expiresAt"}
    root = api.get(f"/jobs/{job.id}/results/files/zarr.json")
    assert root.headers["content-type"] == "application/json"
    names = [entry["name"] for entry in json.loads(root.content)["attributes"]["multiscales"]]
    assert names == ["H&E", "CD8"]
    part = api.get(f"/jobs/{job.id}/results/files/zarr.json", headers={"Range": "bytes=-10"})
    assert part.status_code == 206 and part.content == root.content[-10:]
    assert api.get(f"/jobs/{job.id}/results/files/markers/CD8/9/zarr.json").status_code == 404
    signed = httpx.get(location["resultUrl"])  # the signed URL needs no key
    assert signed.content == root.content


def test_sse_stream_snapshots_and_close_on_terminal(
    client: Client, api: httpx.Client, tiff_slide: Path
) -> None:
    upload = client.uploads.upload_file(tiff_slide)
    job = client.predict.submit(upload.id, ["CD8"])
    with api.stream("GET", f"/jobs/{job.id}/stream") as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        snapshots = [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: ")]
    assert snapshots[-1]["status"] == "completed"
    assert {"id", "status", "progress", "model", "resultGcsPath"} <= set(snapshots[-1])
    assert [s["progress"] for s in snapshots] == sorted(s["progress"] for s in snapshots)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_serve_forever_runs_standalone() -> None:
    port = _free_port()
    code = f"from strand_client.testing import serve_forever; serve_forever(port={port})"
    project = Path(strand_client.__file__).resolve().parents[1]
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=project)
    try:
        assert process.stdout is not None
        assert f"http://127.0.0.1:{port}" in process.stdout.readline()
        deadline = time.monotonic() + 20
        while True:
            try:
                answer = httpx.get(
                    f"http://127.0.0.1:{port}/api/v1/markers",
                    headers={"Authorization": f"Bearer {DEFAULT_API_KEY}"},
                )
                break
            except httpx.ConnectError:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        assert answer.status_code == 200 and answer.json()["markers"]
    finally:
        process.terminate()
        process.wait(timeout=20)
