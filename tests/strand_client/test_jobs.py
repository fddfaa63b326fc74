"""Following jobs (SSE and polling), their outcomes, cancel, and results access."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from strand_client import (
    BadRequestError,
    Client,
    ConflictError,
    Job,
    JobEvent,
    JobFailedError,
    JobTimeoutError,
    NotFoundError,
)
from strand_client.testing import FakeStrandServer


@pytest.fixture
def upload_id(client: Client, tiff_slide: Path) -> str:
    return client.uploads.upload_file(tiff_slide).id


def test_wait_follows_progress_to_completion(client: Client, fake: FakeStrandServer, upload_id: str) -> None:
    job = client.predict.submit(upload_id, ["CD8", "PanCK"])
    events: list[JobEvent] = []
    status = job.wait(timeout=30, on_event=events.append)

    assert status.status == "completed" and status.results_available
    assert status.markers == ("CD8", "PanCK")
    progress = [e.progress or 0.0 for e in events if e.status == "running"]
    assert progress == sorted(progress) and len(progress) >= 2
    assert events[-1].is_terminal
    assert job.reserved_credits is not None
    assert fake.balance == 10_000 - job.reserved_credits  # charged on completion
    assert fake.pending == 0


def test_stream_events_ignores_heartbeats_and_stops_at_terminal(
    client: Client, fake: FakeStrandServer, upload_id: str
) -> None:
    fake.options.job_duration = None
    job = client.predict.submit(upload_id, ["CD8"])
    headers = {"Authorization": f"Bearer {fake.api_key}"}
    with httpx.stream(
        "GET", f"{fake.url}/api/v1/jobs/{job.id}/stream", headers=headers, timeout=5
    ) as response:
        lines = response.iter_lines()
        first = [next(lines) for _ in range(4)]  # snapshot, blank, then heartbeats while queued
    assert first[0].startswith("data: ") and ": heartbeat" in first[2:]

    events = job.stream_events()
    assert next(events).status == "queued"
    fake.advance(job.id, "running", 0.5)
    event = next(events)
    assert (event.status, event.progress) == ("running", 0.5)
    fake.advance(job.id, "completed")
    assert next(events).status == "completed"
    assert list(events) == []


@pytest.mark.parametrize("abrupt", [True, False])
def test_dropped_stream_is_reconnected(
    client: Client, fake: FakeStrandServer, upload_id: str, abrupt: bool
) -> None:
    fake.options.job_duration = None
    job = client.predict.submit(upload_id, ["CD8"])
    fake.drop_sse_after(1, connections=2, abrupt=abrupt)
    events = job.stream_events()
    assert next(events).status == "queued"
    fake.advance(job.id, "running", 0.25)
    assert next(events).progress == 0.25
    fake.advance(job.id, "completed")
    assert next(events).status == "completed"
    assert fake.stats.sse_connections >= 3


def test_wait_falls_back_to_polling_when_streaming_fails(
    client: Client, fake: FakeStrandServer, upload_id: str
) -> None:
    job = client.predict.submit(upload_id, ["CD8"])
    fake.fail_next_requests(f"/api/v1/jobs/{job.id}/stream", 100, status=503)
    status = job.wait(timeout=30, poll_interval=0.05)
    assert status.status == "completed"
    assert fake.stats.sse_connections == 0


def test_wait_times_out_while_heartbeats_keep_the_stream_alive(
    client: Client, fake: FakeStrandServer, upload_id: str
) -> None:
    fake.options.job_duration = None
    job = client.predict.submit(upload_id, ["CD8"])
    with pytest.raises(JobTimeoutError):
        job.wait(timeout=0.5)
    assert job.refresh().status == "queued"


def test_wait_slice_returns_the_latest_status_without_raising(
    client: Client, fake: FakeStrandServer, upload_id: str
) -> None:
    fake.options.job_duration = None
    job = client.predict.submit(upload_id, ["CD8"])
    fake.advance(job.id, "running", 0.5)
    status = job.wait_slice(0.3)
    assert (status.status, status.progress) == ("running", 0.5)
    fake.advance(job.id, "failed", error_message="GPU lost")
    assert job.wait_slice(5).status == "failed"


def test_a_wait_slice_ends_at_its_deadline_though_heartbeats_restart_the_read_timer(
    client: Client, fake: FakeStrandServer, upload_id: str
) -> None:
    """Every line on the stream restarts its read timer: without reconnecting, a 3 s slice met by a
    heartbeat at 2.5 s would wait for the next one and end at 5 s, one heartbeat late."""
    fake.options.job_duration = None
    fake.options.heartbeat_interval = 2.5
    job = client.predict.submit(upload_id, ["CD8"])
    started = time.monotonic()
    status = job.wait_slice(3.0)
    elapsed = time.monotonic() - started
    assert status.status == "queued"
    assert 3.0 <= elapsed < 4.0, f"the slice took {elapsed:.2f} s"


def test_failed_job_raises_with_the_platform_message(
    client: Client, fake: FakeStrandServer, upload_id: str
) -> None:
    fake.fail_next_job("Tissue detection found no tissue")
    job = client.predict.submit(upload_id, ["CD8"])
    with pytest.raises(JobFailedError) as raised:
        job.wait(timeout=30)
    assert raised.value.job_id == job.id
    assert raised.value.error_message == "Tissue detection found no tissue"
    assert fake.balance == 10_000 and fake.pending == 0  # refunded


def test_partial_failure_returns_with_results_for_delivered_markers(
    client: Client, fake: FakeStrandServer, upload_id: str
) -> None:
    fake.options.patches_per_credit = 1  # one credit per marker on this one-patch slide
    fake.partial_fail_next_job(["Ki67"])
    job = client.predict.submit(upload_id, ["CD8", "PanCK", "Ki67"])
    status = job.wait(timeout=30)

    assert status.status == "partial_failed" and status.results_available
    assert status.error_message is not None and "Ki67" in status.error_message
    with job.results() as results:
        assert results.marker_names() == ["CD8", "PanCK"]
    assert 10_000 - fake.balance == 2 and job.reserved_credits == 3  # charged for two markers of three


def test_unknown_statuses_are_waited_out(client: Client, fake: FakeStrandServer, upload_id: str) -> None:
    fake.options.job_duration = None
    job = client.predict.submit(upload_id, ["CD8"])
    fake.advance(job.id, "gpu_warming_up", 0.1)
    status = job.wait_slice(0.3)
    assert status.status == "gpu_warming_up" and not status.is_terminal
    fake.advance(job.id, "completed")
    assert job.wait(timeout=10).status == "completed"


def test_cancel_refunds_and_a_second_cancel_is_refused(
    client: Client, fake: FakeStrandServer, upload_id: str
) -> None:
    fake.options.job_duration = None
    job = client.predict.submit(upload_id, ["CD8", "Ki67"])
    assert fake.pending == job.reserved_credits

    status = job.cancel()
    assert status.status == "cancelled"
    assert fake.pending == 0 and fake.balance == 10_000
    assert fake.stats.cancels == 1
    assert job.wait(timeout=10).status == "cancelled"
    with pytest.raises(BadRequestError):
        client.jobs.cancel(job.id)
    with pytest.raises(NotFoundError):
        client.jobs.cancel("no-such-job")


def test_jobs_get_and_for_upload(client: Client, upload_id: str) -> None:
    first = client.predict.submit(upload_id, ["CD8"])
    second = client.predict.submit(upload_id, ["PanCK"])
    fetched = client.jobs.get(first.id)
    assert isinstance(fetched, Job) and fetched.reserved_credits == first.reserved_credits
    assert [j.id for j in client.jobs.for_upload(upload_id)] == [second.id, first.id]
    with pytest.raises(NotFoundError):
        client.jobs.for_upload("no-such-upload")
    with pytest.raises(NotFoundError):
        client.jobs.get("no-such-job")


def test_results_before_completion_are_a_conflict(
    client: Client, fake: FakeStrandServer, upload_id: str
) -> None:
    fake.options.job_duration = None
    job = client.predict.submit(upload_id, ["CD8"])
    with pytest.raises(ConflictError) as raised:
        job.results()
    assert raised.value.status_code == 409


def test_download_results_mirrors_the_store_byte_for_byte(
    client: Client, fake: FakeStrandServer, upload_id: str, tmp_path: Path
) -> None:
    job = client.predict.submit(upload_id, ["CD8", "PanCK"])
    job.wait(timeout=30)
    target = job.download_results(path=tmp_path / "store")
    files = fake.results_fixture(job.id).files
    written = {p.relative_to(target).as_posix(): p.read_bytes() for p in target.rglob("*") if p.is_file()}
    assert written == files


def test_download_results_as_anndata(client: Client, upload_id: str) -> None:
    job = client.predict.submit(upload_id, ["CD8", "PanCK"])
    job.wait(timeout=30)
    adata = job.download_results()
    assert list(adata.var_names) == ["CD8", "PanCK"]
    assert adata.n_obs > 0 and adata.obsm["spatial"].shape == (adata.n_obs, 2)
