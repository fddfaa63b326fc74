"""Estimate, dry run and submit: credits, models, and the "exactly once" rules of submitting."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from strand_client import (
    BadRequestError,
    Client,
    InsufficientCreditsError,
    RateLimitError,
    StrandConnectionError,
    SubmissionUncertainError,
)
from strand_client.testing import FakeStrandServer


@pytest.fixture
def upload_id(client: Client, tiff_slide: Path) -> str:
    return client.uploads.upload_file(tiff_slide).id


def test_estimate_reports_cost_balance_and_pending(
    client: Client, fake: FakeStrandServer, upload_id: str
) -> None:
    first = client.predict.estimate(upload_id, ["CD8", "PanCK"])
    assert (first.patch_count, first.marker_count, first.org_balance, first.org_pending) == (1, 2, 10_000, 0)
    assert first.estimated_credits >= 1

    job = client.predict.submit(upload_id, ["CD8", "PanCK"])
    after = client.predict.estimate(upload_id, ["CD8", "PanCK"])
    assert job.reserved_credits == first.estimated_credits
    assert after.org_pending == first.estimated_credits == fake.pending


def test_estimate_is_retried_on_transient_errors(
    client: Client, fake: FakeStrandServer, upload_id: str
) -> None:
    fake.fail_next_requests("/api/v1/predict/estimate", 2, status=503)
    assert client.predict.estimate(upload_id, ["CD8"]).marker_count == 1
    assert (
        fake.faults.take_request_fault("/api/v1/predict/estimate") is None
    )  # both injected failures were used


def test_dry_run_prices_without_reserving(client: Client, fake: FakeStrandServer, upload_id: str) -> None:
    estimate = client.predict.dry_run(upload_id, ["CD8", "Ki67"], model="v0.5")
    assert estimate.marker_count == 2
    assert fake.stats.submits_accepted == 0 and fake.pending == 0


def test_submit_carries_the_model(client: Client, upload_id: str) -> None:
    assert client.predict.submit(upload_id, ["CD8"], model="v0.5").refresh().model == "v0.5"
    assert client.predict.submit(upload_id, ["CD8"]).refresh().model == "v0.7"
    with pytest.raises(BadRequestError) as raised:
        client.predict.submit(upload_id, ["CD8"], model="v10")
    assert raised.value.error_code == "unknown_model"


def test_submit_5xx_is_not_retried_and_is_uncertain(
    client: Client, fake: FakeStrandServer, upload_id: str
) -> None:
    fake.reject_next_submits(1, status=503, retry_after=None)
    with pytest.raises(SubmissionUncertainError) as raised:
        client.predict.submit(upload_id, ["CD8"])
    assert raised.value.status_code == 503
    assert (fake.stats.submits_rejected, fake.stats.submits_accepted) == (1, 0)
    assert client.jobs.for_upload(upload_id) == []


def test_uncertain_submit_that_went_through_is_found_on_the_upload(
    client: Client, fake: FakeStrandServer, upload_id: str
) -> None:
    fake.reject_next_submits(1, status=502, retry_after=None, after_create=True)
    with pytest.raises(SubmissionUncertainError):
        client.predict.submit(upload_id, ["CD8", "Ki67"])
    (job,) = client.jobs.for_upload(upload_id)
    assert job.markers == ("CD8", "Ki67")
    assert fake.stats.submits_accepted == 1


def test_submit_timeout_after_sending_is_uncertain(
    fake: FakeStrandServer, client_factory: Callable[..., Client], upload_id: str
) -> None:
    impatient = client_factory(timeout=0.3)
    fake.latency = 0.6
    with pytest.raises(SubmissionUncertainError):
        impatient.predict.submit(upload_id, ["CD8"])
    fake.latency = 0.0
    # Strand goes on to process the request the client gave up on: the job is found by looking it up.
    deadline = time.monotonic() + 10
    while not (jobs := impatient.jobs.for_upload(upload_id)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [job.markers for job in jobs] == [("CD8",)]
    assert fake.stats.submits_accepted == 1


def test_concurrency_cap_answers_429_with_retry_after_and_no_retry(
    client: Client, fake: FakeStrandServer, upload_id: str
) -> None:
    fake.options.job_duration = None
    fake.options.max_concurrent_jobs = 1
    fake.options.concurrency_retry_after = 7
    client.predict.submit(upload_id, ["CD8"])
    with pytest.raises(RateLimitError) as raised:
        client.predict.submit(upload_id, ["CD8"])
    assert raised.value.retry_after == 7
    assert raised.value.error_code == "concurrency_limit"
    assert (fake.stats.submits_accepted, fake.stats.submits_rejected) == (1, 1)


def test_injected_429_on_submit(client: Client, fake: FakeStrandServer, upload_id: str) -> None:
    fake.reject_next_submits(1, status=429, retry_after=3)
    with pytest.raises(RateLimitError) as raised:
        client.predict.submit(upload_id, ["CD8"])
    assert raised.value.retry_after == 3
    assert client.predict.submit(upload_id, ["CD8"]).id


def test_insufficient_credits_reserves_nothing(
    client: Client, fake: FakeStrandServer, upload_id: str
) -> None:
    fake.options.job_duration = None
    fake.options.patches_per_credit = 1
    markers = ["CD8", "Ki67", "PanCK"]
    cost = client.predict.estimate(upload_id, markers).estimated_credits
    assert cost == 3
    fake.balance = 5  # enough for one job, not two: the first reservation leaves 2
    client.predict.submit(upload_id, markers)
    with pytest.raises(InsufficientCreditsError) as raised:
        client.predict.submit(upload_id, markers)
    assert (raised.value.required, raised.value.balance) == (3, 2)
    assert fake.pending == 3 and fake.stats.submits_accepted == 1


def test_unreachable_strand_is_a_connection_error_not_an_uncertain_submit(fake: FakeStrandServer) -> None:
    port = fake.port
    fake.stop()
    offline = Client(api_key=fake.api_key, base_url=f"http://127.0.0.1:{port}", max_retries=1)
    with offline, pytest.raises(StrandConnectionError):
        offline.predict.submit("any-upload", ["CD8"])


def test_markers_must_not_be_empty(client: Client, upload_id: str) -> None:
    with pytest.raises(ValueError, match="at least one marker"):
        client.predict.submit(upload_id, [" "])
