"""Case-level runs, piece by piece: the version check, the stain choice, the plan index, the summary's words.

The whole flow (webhook, fan-out task, sibling runs, refreshes) runs under a
real worker in tests/e2e/test_case_runs.py.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
import redis

from sectra_adapter import MarkerSummary, api_version_at_least, check_stain
from workers.apps import AppConfig
from workers.case import CASE_RUN_TOKEN, CaseIndex, CasePlan, CaseSlide, run_token, summary_result
from workers.runstore import RunRecord, RunStatus, run_id_for
from workers.summary_record import StoredSummary

CASE_APP = AppConfig(id="case-app", display_name="Case", markers=["CD8", "Ki67"], scope="case")
SLIDE_APP = AppConfig(id="slide-app", display_name="Slide", markers=["CD8"])
HE = CASE_APP.slide_gate.stain_patterns


@pytest.mark.parametrize(
    ("version", "expected"),
    [
        ("1.9", True),
        ("1.10", True),
        ("1.9.2", True),
        ("2.0", True),
        ("1.8", False),
        ("1.8.9", False),
        ("1", False),
        ("", False),
        ("1.x", False),
        ("v1.9", False),
    ],
)
def test_api_version_compares_numerically_not_as_text(version: str, expected: bool) -> None:
    assert api_version_at_least(version, (1, 9)) is expected


@pytest.mark.parametrize("stain", ["H&E", "h & e", "HE", "Hematoxylin and eosin"])
def test_he_stains_pass_the_stain_check(stain: str) -> None:
    assert check_stain(stain, HE) is None


def test_other_stains_are_refused_in_plain_words() -> None:
    assert check_stain("PAS", HE) == "Stain is 'PAS'; this app analyses H&E slides"
    assert check_stain("  ", HE) == "The slide has no stain recorded; this app analyses H&E slides"


def test_only_case_scope_apps_key_runs_by_slide_alone() -> None:
    assert run_token(CASE_APP, "token-1") == run_token(CASE_APP, "token-2") == CASE_RUN_TOKEN
    assert run_token(SLIDE_APP, "token-1") == "token-1"
    assert not CASE_RUN_TOKEN.isprintable(), "no token Sectra may send (printable) can collide with it"


def test_case_index_keeps_plans_and_which_cases_list_a_run(
    redis_client: redis.Redis, key_prefix: str
) -> None:
    cases = CaseIndex(redis_client, prefix=key_prefix, ttl_seconds=60)
    root, other_root, member = (run_id_for("a", s, CASE_RUN_TOKEN) for s in ("s1", "s9", "s2"))
    plan = CasePlan(
        root_run_id=root,
        app_id="a",
        slide_id="s1",
        slides=[CaseSlide(slide_id="s1", block="A1", run_id=root), CaseSlide(slide_id="s2", block="A2")],
        result_id=7,
        version_id="v1",
    )
    cases.save(plan)
    assert cases.get(root) == plan
    assert cases.get(other_root) is None
    cases.watch(root, [root, member])
    cases.watch(other_root, [member])
    assert cases.cases_of(member) == sorted([root, other_root])
    assert cases.cases_of(root) == [root]
    assert 0 < redis_client.ttl(f"{key_prefix}:case-of:{member}") <= 60
    with pytest.raises(ValueError):
        cases.get("run-x:events")


def _record(slide_id: str, status: RunStatus, **fields: Any) -> RunRecord:
    now = time.time()
    return RunRecord(
        run_id=run_id_for(CASE_APP.id, slide_id, CASE_RUN_TOKEN),
        app_id=CASE_APP.id,
        slide_id=slide_id,
        cancellation_token=CASE_RUN_TOKEN,
        source="case",
        callback_url="https://sectra.example",
        callback_token="t",
        status=status,
        created_at=now,
        updated_at=now,
        **fields,
    )


def test_summary_names_each_slide_by_block_and_place_and_says_what_was_found() -> None:
    marker = MarkerSummary(
        marker="CD8",
        positive_fraction=0.123,
        positive_area_mm2=1.0,
        tissue_area_mm2=8.0,
        mean=0.2,
        p50=0.1,
        p90=0.5,
        p99=0.9,
    )
    done = _record(
        "s1",
        RunStatus.completed,
        job_id="job-1",
        slide_width=1000,
        slide_height=800,
        summary=StoredSummary(markers=[marker], missing={"Ki67": "not delivered"}).to_record(),
    )
    failed = _record("s2", RunStatus.failed, message="Slide is too small to analyse")
    waiting = _record("s3", RunStatus.waiting, message="Strand: running 40 %")
    slides = [
        CaseSlide(slide_id="s1", block="A1", specimen="colon", run_id=done.run_id),
        CaseSlide(slide_id="s2", block="A2", run_id=failed.run_id),
        CaseSlide(slide_id="s4", block="A2", refusal="Stain is 'PAS'; this app analyses H&E slides"),
        CaseSlide(slide_id="s3", block="", run_id=waiting.run_id),
    ]
    plan = CasePlan(root_run_id=failed.run_id, app_id=CASE_APP.id, slide_id="s2", slides=slides)
    records: dict[str, RunRecord | None] = {r.run_id: r for r in (done, failed, waiting)}

    result = summary_result(plan, records, CASE_APP)

    assert result.slideId == "s2", "the summary sits on the invoked slide"
    assert result.displayResult == "Case: 1 of 3 H&E slides analysed, 1 could not be, 1 under way"
    rows = result.displayProperties
    assert rows["Status"] == "Running"
    assert rows["Block A1 (colon), 1 of 3"] == "CD8 12.3% | Ki67 n/a"
    assert rows["Block A2, 2 of 3, this slide"] == "not analysed: Slide is too small to analyse"
    assert rows["Unnamed block, 3 of 3"] == "under way: Strand: running 40 %"
    assert rows["Block A2, not analysed"] == "Stain is 'PAS'; this app analyses H&E slides"
    assert result.data.context["kind"] == "case-summary"

    records[waiting.run_id] = None  # its result (so its run) was deleted in Sectra
    ended = summary_result(plan, records, CASE_APP)
    assert ended.displayProperties["Status"] == "Complete"
    assert ended.displayResult == "Case: 1 of 3 H&E slides analysed, 2 could not be"
