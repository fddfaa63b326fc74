"""The live Strand platform's behaviour beyond the reference, and de-identification, end to end."""

from __future__ import annotations

from tests.e2e.conftest import APP, PHI, TIL_APP, Bridge
from workers.runstore import RunStatus


def test_partially_failed_job_posts_delivered_markers_and_names_the_missing_one(bridge: Bridge) -> None:
    bridge.add_slide("slide-partial")
    bridge.strand.partial_fail_next_job(["Ki67"], "Ki67 failed after 3 retries")
    record = bridge.wait_final(bridge.start_run("slide-partial").run_id)
    assert record.status == RunStatus.completed, record.error
    (result,) = bridge.results("slide-partial")
    assert "CD8 " in result.displayResult and "PanCK " in result.displayResult
    assert "Ki67 n/a" in result.displayResult
    properties = " ".join(f"{k} {v}" for k, v in result.displayProperties.items())
    assert "Ki67" in properties and "did not deliver" in properties


def test_marker_not_enabled_for_the_organisation_is_said_in_plain_words(bridge: Bridge) -> None:
    bridge.add_slide("slide-entitled")
    bridge.strand.options.entitled_markers = frozenset({"CD8", "PanCK"})
    record = bridge.wait_final(bridge.start_run("slide-entitled").run_id)
    assert record.status == RunStatus.failed
    (result,) = bridge.results("slide-entitled")
    assert "Ki67 is not enabled for this Strand organisation" in result.displayResult
    assert bridge.strand.stats.submits_accepted == 0


def test_two_apps_on_one_slide_upload_it_once(bridge: Bridge) -> None:
    bridge.add_slide("slide-shared")
    first = bridge.wait_final(bridge.start_run("slide-shared").run_id)
    assert first.status == RunStatus.completed, first.error
    bytes_after_first = bridge.strand.stats.bytes_received

    second = bridge.wait_final(bridge.start_run("slide-shared", app=TIL_APP).run_id)
    assert second.status == RunStatus.completed, second.error
    assert bridge.strand.stats.bytes_received == bytes_after_first, "the second app sent slide bytes again"
    assert second.upload_id == first.upload_id
    assert bridge.strand.stats.uploads_completed == 1
    assert bridge.strand.stats.submits_accepted == 2
    assert len(bridge.results("slide-shared", app=TIL_APP)) == 1
    assert bridge.strand.jobs[second.job_id].model == "v0.7"


def test_submit_answer_lost_after_the_job_was_created_is_adopted_not_resubmitted(bridge: Bridge) -> None:
    bridge.add_slide("slide-lost-answer")
    bridge.strand.reject_next_submits(1, status=503, retry_after=None, after_create=True)
    record = bridge.wait_final(bridge.start_run("slide-lost-answer").run_id, timeout=90)
    assert record.status == RunStatus.completed, record.error
    assert len(bridge.strand.jobs) == 1, "a maybe-submitted job must be found, not paid for twice"
    assert record.job_id in bridge.strand.jobs


def test_unsupported_slide_format_is_refused_before_anything_reaches_strand(bridge: Bridge) -> None:
    path = bridge.slides_dir / f"{PHI['accessionNumber']}.mrxs"
    path.write_bytes(b"MRXS-ish index that no de-identifier understands\x00" * 100)
    bridge.add_slide("slide-mrxs")
    bridge.sectra.add_slide_files("slide-mrxs", path)
    record = bridge.wait_final(bridge.start_run("slide-mrxs").run_id)
    assert record.status == RunStatus.failed
    (result,) = bridge.results("slide-mrxs")
    assert "cannot be de-identified" in result.displayResult
    assert "not sent to Strand" in result.displayResult
    assert bridge.strand.stats.upload_sessions_opened == 0


def test_cancel_while_uploading_stops_before_any_job(bridge: Bridge) -> None:
    bridge.add_slide("slide-cancel-upload", width=4096, height=3072)
    bridge.strand.latency = 0.4
    token = "cancel-upload-1"
    run_id = bridge.start_run("slide-cancel-upload", token).run_id
    bridge.wait_for(run_id, lambda r: r.status == RunStatus.uploading and r.upload_offset > 0, timeout=90)
    assert bridge.post(bridge.invocation("slide-cancel-upload", token, action="cancel")).status_code == 200
    record = bridge.wait_final(run_id, timeout=60)
    assert record.status == RunStatus.cancelled
    assert bridge.strand.stats.submits_accepted == 0
    (result,) = bridge.results("slide-cancel-upload")
    assert result.displayResult.startswith("Cancelled")
    assert not (bridge.work_dir / run_id).exists()


def test_dropped_sse_stream_falls_back_and_the_run_completes(bridge: Bridge) -> None:
    bridge.restart_worker(BRIDGE_WAIT_SLICE_SECONDS="3")
    bridge.add_slide("slide-sse")
    bridge.strand.options.job_duration = 3.0
    bridge.strand.drop_sse_after(1, connections=3)
    record = bridge.wait_final(bridge.start_run("slide-sse").run_id, timeout=90)
    assert record.status == RunStatus.completed, record.error
    assert bridge.strand.stats.sse_connections >= 1
    assert len(bridge.results("slide-sse", app=APP)) == 1
