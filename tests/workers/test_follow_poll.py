"""How often a waiting run looks at its Strand job: no more often than Strand's SSE stream would
talk to a follower, once the job is past its first seconds.

The stream sends a keep-alive every 15 s (reference/strand-rest-api.md, `GET /jobs/{id}/stream`):
a poller looking more often than that costs Strand more requests than following the stream would.
A short job is still seen soon: the first looks come within seconds.
"""

from __future__ import annotations

import itertools
import time

from workers.runstore import RunRecord
from workers.stages.follow import next_poll_delay

HEARTBEAT = 15.0  # reference/strand-rest-api.md


def _waiting(age: float) -> RunRecord:
    now = time.time()
    return RunRecord(
        run_id="run-poll",
        app_id="strand-default",
        slide_id="s-1",
        cancellation_token="t",
        source="create",
        callback_url="https://pacs.example/ia-api",
        callback_token="t",
        created_at=now - age,
        updated_at=now,
        submit_intent_at=now - age,
    )


def _poll_ages(horizon: float) -> list[float]:
    """The ages at which a run looks, as the pipeline schedules them: once at submit, then each delay."""
    ages = [0.0]
    while ages[-1] < horizon:
        ages.append(ages[-1] + next_poll_delay(_waiting(ages[-1])))
    return ages


def test_a_short_job_is_seen_within_seconds() -> None:
    ages = _poll_ages(60)
    assert ages[1] <= 2.5  # a 1.3 s job (bench/soak.py) is seen finished on the second look


def test_past_its_first_seconds_a_job_is_looked_at_no_more_often_than_the_heartbeat() -> None:
    ages = _poll_ages(3600)
    settled = [later - earlier for earlier, later in itertools.pairwise(ages) if earlier >= HEARTBEAT]
    assert settled and min(settled) >= HEARTBEAT - 0.5  # 0.5 s: the real clock moves while we compute
    young = [a for a in ages if a < HEARTBEAT]
    assert len(young) <= 5  # the ramp to the heartbeat: 0, 2, 4, 8 s
    per_hour = len(ages) - 1
    assert per_hour <= 3600 / HEARTBEAT + len(young)
