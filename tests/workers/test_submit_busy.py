"""A run at Strand's cap asks again with the POST alone (`workers.stages.submit`).

Real Redis, MockSectraServer and the fake Strand; the oracle is the fake's count of the requests
it answered, by endpoint.
"""

from __future__ import annotations

import pytest

from tests.workers.test_daily_limits import RigFactory, _app, rig_factory
from workers.runstore import RunStatus
from workers.stages import submit

__all__ = ["rig_factory"]  # the fixture, imported for this module's tests

PREDICT = "POST /api/v1/predict"
ESTIMATE = "POST /api/v1/predict/estimate"
LOOKUP = "GET /api/v1/samples/{upload_id}"


def test_each_429_is_asked_again_without_pricing_or_looking_up(rig_factory: RigFactory) -> None:
    rig = rig_factory([_app("busy")])
    rig.add_slide("s-1")
    rig.strand.reject_next_submits(3, status=429, retry_after=1)
    record = rig.run("busy", "s-1")
    calls = rig.strand.requests.by_endpoint()
    assert record.status == RunStatus.completed, record.error
    assert (calls[PREDICT], calls[ESTIMATE], calls[LOOKUP]) == (4, 1, 0)
    assert rig.strand.stats.submits_accepted == 1


def test_an_estimate_older_than_its_reuse_window_is_asked_again(
    rig_factory: RigFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(submit, "ESTIMATE_REUSE_SECONDS", 0.0)
    rig = rig_factory([_app("busy")])
    rig.add_slide("s-1")
    rig.strand.reject_next_submits(2, status=429, retry_after=1)
    record = rig.run("busy", "s-1")
    calls = rig.strand.requests.by_endpoint()
    assert record.status == RunStatus.completed, record.error
    assert (calls[PREDICT], calls[ESTIMATE]) == (3, 3)


def test_a_refused_run_retried_by_an_operator_is_priced_afresh(rig_factory: RigFactory) -> None:
    """The balance was short; topped up, the operator's retry must see the new balance, not the old."""
    rig = rig_factory([_app("busy")])
    rig.add_slide("s-1")
    rig.strand.balance = 0
    refused = rig.run("busy", "s-1")
    assert refused.status == RunStatus.failed and refused.job_id is None
    rig.strand.balance = 10_000
    store = rig.ctx.store
    store.transition(refused.run_id, RunStatus.submitting, retry=True, attempts=0, error=None)
    record = rig.finish(refused.run_id)
    assert record.status == RunStatus.completed, record.error
    assert rig.strand.requests.by_endpoint()[ESTIMATE] == 2


def test_an_unconfirmed_submit_is_still_looked_up_after_a_429(rig_factory: RigFactory) -> None:
    """A 429 proves only its own POST made no job: an earlier POST whose answer was lost may have."""
    rig = rig_factory([_app("busy")])
    rig.add_slide("s-1")
    rig.strand.reject_next_submits(1, status=503, retry_after=None)  # the outcome of this one is unknown
    rig.strand.reject_next_submits(1, status=429, retry_after=1)
    record = rig.run("busy", "s-1")
    calls = rig.strand.requests.by_endpoint()
    assert record.status == RunStatus.completed, record.error
    # After the unknown outcome, every later attempt looks first: the 429's and the one that submits.
    assert calls[LOOKUP] == 2
    assert calls[ESTIMATE] == 2  # only a 429 keeps the estimate: the unknown outcome is priced again
    assert rig.strand.stats.submits_accepted == 1
