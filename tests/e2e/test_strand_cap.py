"""Strand's per-organisation cap on running jobs is a queue to wait in, not an outage.

`POST /predict` beyond the cap answers 429 with `Retry-After` (reference/strand-rest-api.md,
"Per-org concurrent job cap exceeded"); nothing was reserved. A run that meets it must wait its
turn for as long as the organisation is busy: never fail "after 5 attempts", and never back off so
far that Strand's freed slots sit idle (bench/soak.py measures the throughput this costs).
"""

from __future__ import annotations

from tests.e2e.conftest import Bridge
from workers.runstore import RunStatus


def test_more_429s_than_step_attempts_still_complete_with_one_job(bridge: Bridge) -> None:
    bridge.add_slide("slide-busy")
    before = bridge.strand.requests.by_endpoint()
    bridge.strand.reject_next_submits(6, status=429, retry_after=1)  # the pipeline allows 5 failed attempts
    record = bridge.wait_final(bridge.start_run("slide-busy").run_id, timeout=90)
    calls = bridge.strand.requests.by_endpoint() - before

    assert record.status == RunStatus.completed, record.error
    assert bridge.strand.stats.submits_rejected == 6
    assert bridge.strand.stats.submits_accepted == 1
    events = [e["event"] for e in bridge.store.events(record.run_id)]
    assert "step_failed" not in events, "a busy organisation is no failed step"
    assert events.count("strand_busy") == 6
    # Each 429 is asked again with the POST alone: priced once, and no lookup of jobs the 429 proves
    # were never made (`workers.stages.submit`).
    assert calls["POST /api/v1/predict"] == 7
    assert calls["POST /api/v1/predict/estimate"] == 1
    assert calls["GET /api/v1/samples/{upload_id}"] == 0
