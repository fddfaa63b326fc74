"""A `scope: case` app: one create analyses every H&E slide of the case, with a case summary.

The case is what MockSectraServer serves for IA-API 1.9's
`GET /slides/{id}/request/images/info`: every slide registered with the same
accession number, in registration order. Figures are checked against the fake
Strand server's ground truth, not against the bridge's own arithmetic.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from sectra_client.schemas import DisplayedName
from sectra_client.schemas.image import Specimen

from tests.e2e.conftest import CASE_APP, FINAL, Bridge
from workers.runstore import RunRecord, RunStatus

ACCESSION = "ACC-CASE-0007"
# (slide id, block, stain), in the order Sectra lists the case.
CASE = [
    ("case-a1", "A1", "H&E"),
    ("case-a2", "A2", "H&E"),
    ("case-a2-pas", "A2", "PAS"),
    ("case-b1", "B1", "HE"),
]
HE_SLIDES = ["case-a1", "case-a2", "case-b1"]


def _add_case(bridge: Bridge) -> None:
    for slide_id, block, stain in CASE:
        bridge.add_slide(slide_id, stain=stain)
        meta = bridge.sectra._slides[slide_id]  # what add_slide registered, moved into one case
        bridge.sectra.add_slide(
            meta.model_copy(
                update={
                    "accessionNumber": ACCESSION,
                    "block": DisplayedName(displayName=block),
                    "specimen": Specimen(anatomy="colon"),
                }
            )
        )


def _case_runs(bridge: Bridge) -> list[RunRecord]:
    return bridge.store.list_runs(app_id=CASE_APP)


def _poll(what: str, probe: Any, timeout: float = 90.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _kind(result: Any) -> str:
    return str(result.data.context["kind"])


def _summary(bridge: Bridge, slide_id: str) -> Any:
    found = [r for r in bridge.results(slide_id, app=CASE_APP) if _kind(r) == "case-summary"]
    assert len(found) <= 1, "one case summary per case"
    return found[0] if found else None


def _truth_line(bridge: Bridge, job_id: str) -> str:
    """What the slide's line must read, from Strand's ground truth (threshold 0.5, tissue = not NaN)."""
    truth = bridge.strand.results_fixture(job_id).truth
    parts = []
    for marker in ("CD8", "PanCK", "Ki67"):
        values = truth[marker]
        tissue = ~np.isnan(values)
        fraction = float(((values >= 0.5) & tissue).sum() / tissue.sum())
        parts.append(f"{marker} {fraction * 100:.1f}%")
    return " | ".join(parts)


def test_case_of_three_he_slides_gets_three_runs_their_results_and_a_summary(bridge: Bridge) -> None:
    _add_case(bridge)
    body = bridge.invocation("case-a2", app=CASE_APP)
    answer = bridge.post(body)
    assert answer.status_code == 200, answer.text
    pending = answer.json()
    assert pending["slideId"] == "case-a2" and pending["data"]["context"]["kind"] == "pending"

    runs = _poll("three runs", lambda: (r := _case_runs(bridge)) and len(r) == 3 and r)
    assert sorted(r.slide_id for r in runs) == sorted(HE_SLIDES), "one run per H&E slide, none for PAS"
    done = [bridge.wait_final(r.run_id, timeout=90) for r in runs]
    assert all(r.status == RunStatus.completed for r in done), [(r.slide_id, r.message) for r in done]
    assert len({r.job_id for r in done}) == 3
    assert bridge.strand.stats.submits_accepted == 3, "one Strand job per slide"
    assert sorted(j.upload_id for j in bridge.strand.jobs.values()) == sorted(str(r.upload_id) for r in done)

    lines = {}
    for record in done:
        own = [r for r in bridge.results(record.slide_id, app=CASE_APP) if _kind(r) != "case-summary"]
        assert len(own) == 1, f"exactly one result of its own on {record.slide_id}"
        assert own[0].slideId == record.slide_id and _kind(own[0]) == "final"
        lines[record.slide_id] = _truth_line(bridge, str(record.job_id))
        assert own[0].displayResult == lines[record.slide_id]
    assert bridge.results("case-a2-pas", app=CASE_APP) == [], "the PAS slide is not analysed"
    for sibling in ("case-a1", "case-b1"):
        assert _summary(bridge, sibling) is None, "the summary is on the invoked slide only"

    summary = _poll(
        "a summary naming 3 of 3",
        lambda: (s := _summary(bridge, "case-a2")) and "3 of 3" in s.displayResult and s,
    )
    assert summary.displayResult == "Case: 3 of 3 H&E slides analysed"
    rows = summary.displayProperties
    assert rows["Status"] == "Complete"
    assert rows["Block A1 (colon), 1 of 3"] == lines["case-a1"]
    assert rows["Block A2 (colon), 2 of 3, this slide"] == lines["case-a2"]
    assert rows["Block B1 (colon), 3 of 3"] == lines["case-b1"]
    assert rows["Block A2 (colon), not analysed"] == "Stain is 'PAS'; this app analyses H&E slides"

    # Sectra invokes the app again on the case (the same slide, then a sibling): nothing new is paid for.
    results_before = {s: len(bridge.results(s, app=CASE_APP)) for s, _, _ in CASE}
    for slide_id in ("case-a2", "case-b1"):
        again = bridge.post(bridge.invocation(slide_id, app=CASE_APP))
        assert again.status_code == 200, again.text
        assert again.json()["slideId"] == slide_id
    assert again.json()["id"] == next(r for r in done if r.slide_id == "case-b1").sectra_result_id
    assert sorted(r.run_id for r in _case_runs(bridge)) == sorted(r.run_id for r in done)
    assert all(r.status in FINAL for r in _case_runs(bridge))
    assert bridge.strand.stats.submits_accepted == 3
    assert {s: len(bridge.results(s, app=CASE_APP)) for s, _, _ in CASE} == results_before


def test_sectra_below_ia_api_1_9_analyses_the_invoked_slide_alone_and_says_so(bridge: Bridge) -> None:
    bridge.sectra.api_version = "1.8"
    _add_case(bridge)
    answer = bridge.post(bridge.invocation("case-a1", app=CASE_APP))
    assert answer.status_code == 200, answer.text

    summary = _poll(
        "a summary naming 1 of 1",
        lambda: (s := _summary(bridge, "case-a1")) and "1 of 1" in s.displayResult and s,
    )
    assert "only this slide" in summary.displayResult
    assert "IA-API 1.8" in summary.displayProperties["Case listing"]
    runs = _case_runs(bridge)
    assert [r.slide_id for r in runs] == ["case-a1"]
    assert bridge.wait_final(runs[0].run_id).status == RunStatus.completed
    assert bridge.strand.stats.submits_accepted == 1
    for sibling in ("case-a2", "case-b1"):
        assert bridge.results(sibling, app=CASE_APP) == []


def test_cancel_and_delete_from_sectra_find_a_case_run_by_their_own_token(bridge: Bridge) -> None:
    bridge.add_slide("case-solo")
    body = bridge.invocation("case-solo", app=CASE_APP)
    created = bridge.post(body)
    assert created.status_code == 200, created.text
    cancel = bridge.post({**body, "action": "cancel"})
    assert cancel.status_code == 200, cancel.text
    note = cancel.json()["note"]
    assert note == "cancellation requested" or note.startswith("the run has already"), note
    (run,) = _case_runs(bridge)
    bridge.wait_final(run.run_id)

    delete = bridge.post({**body, "action": "delete", "input": created.json()})
    assert delete.json() == {"note": "run deleted"}
    assert _case_runs(bridge) == []
    again = bridge.post(bridge.invocation("case-solo", app=CASE_APP))
    assert again.status_code == 200, again.text
    assert again.json()["id"] != created.json()["id"], "a deleted run's slide is analysed afresh"
    (fresh,) = _case_runs(bridge)
    assert bridge.wait_final(fresh.run_id).status == RunStatus.completed


def test_a_slide_added_to_an_analysed_case_reuses_the_runs_of_the_others(bridge: Bridge) -> None:
    _add_case(bridge)
    bridge.post(bridge.invocation("case-a1", app=CASE_APP)).raise_for_status()
    first = _poll("three runs", lambda: (r := _case_runs(bridge)) and len(r) == 3 and r)
    for record in first:
        assert bridge.wait_final(record.run_id, timeout=90).status == RunStatus.completed
    assert bridge.strand.stats.submits_accepted == 3

    bridge.add_slide("case-c1")  # a recut, scanned later into the same case
    meta = bridge.sectra._slides["case-c1"]
    bridge.sectra.add_slide(
        meta.model_copy(update={"accessionNumber": ACCESSION, "block": DisplayedName(displayName="C1")})
    )
    bridge.post(bridge.invocation("case-c1", app=CASE_APP)).raise_for_status()
    summary = _poll(
        "a summary on the new slide naming 4 of 4",
        lambda: (s := _summary(bridge, "case-c1")) and "4 of 4" in s.displayResult and s,
    )
    runs = _case_runs(bridge)
    assert sorted(r.slide_id for r in runs) == sorted([*HE_SLIDES, "case-c1"])
    assert bridge.strand.stats.submits_accepted == 4, "only the new slide is sent to Strand"
    assert summary.displayProperties["Block C1, 4 of 4, this slide"].startswith("CD8 ")
    assert summary.displayProperties["Block A1 (colon), 1 of 4"].startswith("CD8 ")
    assert _summary(bridge, "case-a1") is not None, "the first case summary stays where it was"
