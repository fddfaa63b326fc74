"""The fake's per-endpoint request counters (what bench/soak.py and bench/waiting.py report).

The oracle is the list of requests this test sends with plain httpx, not the client under test.
"""

from __future__ import annotations

import uuid
from collections import Counter

import httpx

from strand_client.testing import FakeStrandServer
from strand_client.testing.counting import RequestKey


def test_counts_by_route_template_and_status(fake: FakeStrandServer) -> None:
    auth = {"Authorization": f"Bearer {fake.api_key}"}
    with httpx.Client(base_url=fake.url, headers=auth, timeout=10) as http:
        for _ in range(3):
            assert http.get(f"/api/v1/jobs/{uuid.uuid4()}").status_code == 404
        assert http.get("/api/v1/markers").status_code == 200
        assert http.get("/api/v1/markers", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert http.put(f"/gcs/upload/{uuid.uuid4().hex}", content=b"x").status_code == 404

    counts = fake.requests.snapshot()
    assert counts == Counter(
        {
            RequestKey("GET", "/api/v1/jobs/{job_id}", 404): 3,  # three ids, one key
            RequestKey("GET", "/api/v1/markers", 200): 1,
            RequestKey("GET", "/api/v1/markers", 401): 1,
            RequestKey("PUT", "/gcs/upload/*", 404): 1,  # a plain route: its first two segments
        }
    )
    assert fake.requests.by_endpoint()["GET /api/v1/markers"] == 2


def test_injected_faults_are_counted_without_their_ids(fake: FakeStrandServer) -> None:
    fake.fail_next_requests("/api/v1/jobs", 2, status=503)
    auth = {"Authorization": f"Bearer {fake.api_key}"}
    with httpx.Client(base_url=fake.url, headers=auth, timeout=10) as http:
        statuses = [http.get(f"/api/v1/jobs/{uuid.uuid4()}").status_code for _ in range(3)]
    assert statuses == [503, 503, 404]
    counts = fake.requests.snapshot()
    assert counts[RequestKey("GET", "/api/v1/*", 503)] == 2  # answered before any route matched
    assert counts[RequestKey("GET", "/api/v1/jobs/{job_id}", 404)] == 1
