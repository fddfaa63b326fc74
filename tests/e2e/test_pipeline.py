"""A Sectra invocation in, a Strand analysis on the slide out: the product, end to end."""

from __future__ import annotations

import concurrent.futures
import io
import math
import re

import httpx
import numpy as np
from PIL import Image

from tests.e2e.conftest import APP, LABEL_MARKER, PHI, Bridge
from tests.fixtures.slides import glass_on_the_right
from workers.runstore import THUMBNAIL_BLOB, RunStatus


def _truth_fraction(values: np.ndarray, threshold: float) -> float:
    tissue = ~np.isnan(values)
    return float(((values >= threshold) & tissue).sum() / tissue.sum())


def test_happy_path_posts_ground_truth_figures_once_and_sends_no_phi(bridge: Bridge) -> None:
    slide = bridge.add_slide("slide-happy")
    record = bridge.wait_final(bridge.start_run("slide-happy").run_id)

    assert record.status == RunStatus.completed, record.error
    results = bridge.results("slide-happy")
    assert len(results) == 1, "exactly one result per run on the slide"
    result = results[0]
    truth = bridge.strand.results_fixture(record.job_id).truth
    for marker in ("CD8", "PanCK", "Ki67"):
        expected = _truth_fraction(truth[marker], 0.5)
        assert f"{marker} {expected * 100:.1f}%" in result.displayResult
        stored = next(m for m in record.summary["markers"] if m["marker"] == marker)
        assert math.isclose(stored["positive_fraction"], expected, abs_tol=1e-9)
    assert result.data.result.type.value == "primitive"
    (gallery,) = bridge.galleries("slide-happy")  # and one hotspot gallery, its id kept with the run
    assert gallery.id == record.review_result_id
    assert bridge.strand.stats.uploads_completed == 1
    assert bridge.strand.stats.submits_accepted == 1

    sent = bridge.strand.upload_path(record.upload_id).read_bytes()
    for secret in (*PHI.values(), slide.name):
        assert secret.encode() not in sent, "identifying text reached Strand"
    assert LABEL_MARKER not in sent and LABEL_MARKER[::-1] not in sent, "label pixels reached Strand"
    upload = bridge.strand.uploads[record.upload_id]
    assert upload.filename == f"{record.run_id}.svs"
    assert not (bridge.work_dir / record.run_id).exists(), "staged slide files are removed after publishing"
    events = [e["event"] for e in bridge.store.events(record.run_id)]
    assert "deidentified" in events and "published" in events

    logs = bridge.worker.logs()
    assert record.run_id in logs, "worker logs carry the run id"
    for secret in (bridge.strand.api_key, bridge.sectra.token, *PHI.values(), slide.name):
        assert secret not in logs, "a secret or patient identifier reached the worker log"
    metrics = bridge.worker_metrics()
    assert 'bridge_runs_finished_total{app="strand-default",status="completed"} 1.0' in metrics
    assert 'bridge_external_calls_total{outcome="202",service="strand"} 1.0' in metrics, "one submit"
    assert 'bridge_stage_duration_seconds_count{stage="uploading"} 1.0' in metrics
    assert 'bridge_external_calls_total{outcome="200",service="sectra"}' in metrics
    web = httpx.get(f"{bridge.webhook_url}/metrics", timeout=10).text
    assert re.search(r'bridge_external_calls_total\{outcome="20[01]",service="sectra"\}', web), (
        "the web role counts its Sectra calls by status code, as the workers do"
    )
    assert 'outcome="ok"' not in web and 'outcome="error"' not in web
    assert "bridge_slide_bytes_uploaded_total " in metrics
    assert "bridge_slide_bytes_uploaded_total 0.0" not in metrics
    audit = repr(bridge.store.events(record.run_id))
    for secret in (bridge.strand.api_key, bridge.sectra.token, *PHI.values()):
        assert secret not in audit


def test_ten_concurrent_duplicate_invocations_are_one_run_and_one_job(bridge: Bridge) -> None:
    bridge.add_slide("slide-dup")
    body = bridge.invocation("slide-dup", "retry-token-1")
    with concurrent.futures.ThreadPoolExecutor(max_workers=10) as pool:
        answers = list(pool.map(lambda _: bridge.post(body), range(10)))
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
    assert len({a.json()["id"] for a in answers}) == 1
    run_id = bridge.store.find(APP, "slide-dup", "retry-token-1")
    assert run_id is not None
    record = bridge.wait_final(run_id)
    assert record.status == RunStatus.completed, record.error
    assert bridge.strand.stats.submits_accepted == 1
    assert bridge.strand.stats.uploads_completed == 1
    assert len(bridge.results("slide-dup")) == 1


def test_insufficient_credits_fails_in_plain_words_without_a_job(bridge: Bridge) -> None:
    bridge.add_slide("slide-poor")
    bridge.strand.balance = 0
    record = bridge.wait_final(bridge.start_run("slide-poor").run_id)
    assert record.status == RunStatus.failed
    (result,) = bridge.results("slide-poor")
    assert "Not enough Strand credits" in result.displayResult
    assert "0 available" in result.displayResult
    assert bridge.strand.stats.submits_accepted == 0


def test_failed_strand_job_reaches_the_pathologist(bridge: Bridge) -> None:
    bridge.add_slide("slide-fail")
    bridge.strand.fail_next_job("Inference failed: tissue not detected")
    record = bridge.wait_final(bridge.start_run("slide-fail").run_id)
    assert record.status == RunStatus.failed
    (result,) = bridge.results("slide-fail")
    assert "tissue not detected" in result.displayResult
    assert bridge.strand.stats.submits_accepted == 1


def test_strand_429_and_5xx_bursts_are_retried_without_a_second_job(bridge: Bridge) -> None:
    bridge.add_slide("slide-flaky")
    bridge.strand.reject_next_submits(2, status=429, retry_after=1)
    bridge.strand.fail_next_puts(3, status=503)
    record = bridge.wait_final(bridge.start_run("slide-flaky").run_id, timeout=90)
    assert record.status == RunStatus.completed, record.error
    assert bridge.strand.stats.submits_accepted == 1
    assert bridge.strand.stats.submits_rejected == 2
    assert bridge.strand.stats.uploads_completed == 1


def test_cancel_while_waiting_cancels_the_strand_job_and_says_credits_were_refunded(bridge: Bridge) -> None:
    bridge.add_slide("slide-cancel")
    bridge.strand.options.job_duration = None  # jobs stay queued until the test moves them
    token = "cancel-token-1"
    run_id = bridge.start_run("slide-cancel", token).run_id
    waiting = bridge.wait_for(run_id, lambda r: r.status == RunStatus.waiting)
    balance_before = bridge.strand.balance - bridge.strand.pending

    answer = bridge.post(bridge.invocation("slide-cancel", token, action="cancel"))
    assert answer.status_code == 200
    record = bridge.wait_final(run_id)

    assert record.status == RunStatus.cancelled
    assert bridge.strand.stats.cancels == 1
    assert bridge.strand.jobs[waiting.job_id].status == "cancelled"
    assert bridge.strand.balance - bridge.strand.pending == balance_before + (waiting.reserved_credits or 0)
    (result,) = bridge.results("slide-cancel")
    assert result.displayResult.startswith("Cancelled")
    assert f"{waiting.reserved_credits} reserved credits refunded" in result.displayResult


def test_callback_url_outside_the_allow_list_is_refused_before_any_request(bridge: Bridge) -> None:
    body = bridge.invocation("slide-evil")
    body["callbackInfo"]["url"] = "http://127.0.0.1:9/evil"
    answer = bridge.post(body)
    assert answer.status_code == 403
    assert answer.json()["error"]
    assert bridge.store.list_runs(limit=10) == []
    assert bridge.strand.stats.upload_sessions_opened == 0
    assert bridge.results("slide-evil") == []


def test_worker_killed_mid_wait_finishes_the_run_exactly_once(bridge: Bridge) -> None:
    bridge.add_slide("slide-kill-wait")
    bridge.strand.options.job_duration = None
    run_id = bridge.start_run("slide-kill-wait").run_id
    waiting = bridge.wait_for(run_id, lambda r: r.status == RunStatus.waiting and r.job_id is not None)

    bridge.worker.kill()
    bridge.strand.advance(waiting.job_id, "completed", 1.0)
    bridge.worker.start()

    record = bridge.wait_final(run_id, timeout=90)
    assert record.status == RunStatus.completed, record.error
    assert bridge.strand.stats.submits_accepted == 1
    assert bridge.strand.stats.uploads_completed == 1
    assert len(bridge.results("slide-kill-wait")) == 1


def test_worker_killed_mid_upload_moves_again_within_30_s_on_the_same_session(bridge: Bridge) -> None:
    bridge.restart_worker(without=("BRIDGE_LEASE_SECONDS",))  # the product's lease, not the tests' short one
    slide = bridge.add_slide("slide-kill-upload", width=4096, height=3072)
    bridge.strand.latency = 0.4  # every request is slow, so the test can catch the upload mid-way
    run_id = bridge.start_run("slide-kill-upload").run_id
    bridge.wait_for(run_id, lambda r: r.status == RunStatus.uploading and r.upload_offset > 0, timeout=90)

    bridge.worker.kill()
    stalled_at = bridge.store.require(run_id).upload_offset
    bridge.strand.latency = 0.0
    bridge.worker.start()  # replaced at once, as Kubernetes does

    # The promise: a dead worker's run moves again within 30 s of its replacement starting.
    bridge.wait_for(
        run_id, lambda r: r.upload_offset > stalled_at or r.status != RunStatus.uploading, timeout=30
    )
    record = bridge.wait_final(run_id, timeout=120)
    assert record.status == RunStatus.completed, record.error
    assert bridge.strand.stats.upload_sessions_opened == 1, "the persisted session was resumed"
    assert bridge.strand.stats.uploads_completed == 1
    assert bridge.strand.stats.submits_accepted == 1
    assert bridge.strand.stats.bytes_received < 2 * slide.stat().st_size
    assert len(bridge.results("slide-kill-upload")) == 1


def test_sectra_down_at_publish_is_retried_until_it_answers_keeping_the_summary(bridge: Bridge) -> None:
    bridge.add_slide("slide-sectra-down")
    bridge.strand.options.job_duration = None
    run_id = bridge.start_run("slide-sectra-down").run_id
    waiting = bridge.wait_for(run_id, lambda r: r.status == RunStatus.waiting and r.job_id is not None)

    port = bridge.sectra.port
    bridge.sectra.stop()
    bridge.strand.advance(waiting.job_id, "completed", 1.0)
    stalled = bridge.wait_for(
        run_id, lambda r: r.status == RunStatus.publishing and r.attempts >= 1, timeout=90
    )
    assert stalled.summary is not None, "the summary is kept while Sectra is away"
    bridge.sectra.run(port=port, host="127.0.0.1")

    record = bridge.wait_final(run_id, timeout=120)
    assert record.status == RunStatus.completed, record.error
    (result,) = bridge.results("slide-sectra-down")
    assert "CD8 " in result.displayResult and "%" in result.displayResult
    assert bridge.strand.stats.submits_accepted == 1


def test_delete_while_waiting_cancels_the_strand_job_and_removes_the_run(bridge: Bridge) -> None:
    bridge.add_slide("slide-delete")
    bridge.strand.options.job_duration = None
    token = "delete-token-1"
    run_id = bridge.start_run("slide-delete", token).run_id
    waiting = bridge.wait_for(run_id, lambda r: r.status == RunStatus.waiting and r.job_id is not None)
    (stored,) = bridge.results("slide-delete")
    body = bridge.invocation("slide-delete", token, action="delete")
    body["input"] = stored.model_dump(mode="json")

    answer = bridge.post(body)

    assert answer.status_code == 200, answer.text
    assert bridge.store.get(run_id) is None
    assert bridge.strand.jobs[waiting.job_id].status == "cancelled"
    # The web role never touches slide files, and a waiting run has none left to remove (they went
    # once Strand held the upload); the janitor's sweep of a deleted run's files is tested on its own.
    assert not (bridge.work_dir / run_id).exists()


def test_a_run_waiting_on_strand_holds_no_slide_files_and_is_still_drawn_on_its_slide(bridge: Bridge) -> None:
    """Once Strand holds the upload, the slide leaves the work volume; publish draws on the kept thumbnail."""
    bridge.add_slide("slide-released", content=glass_on_the_right)
    bridge.strand.options.job_duration = None
    run_id = bridge.start_run("slide-released").run_id
    waiting = bridge.wait_for(run_id, lambda r: r.status == RunStatus.waiting and r.job_id is not None)
    assert not (bridge.work_dir / run_id).exists(), "a run waiting on Strand holds no slide files"
    assert "slide_files_released" in [e["event"] for e in bridge.store.events(run_id)]

    bridge.strand.advance(waiting.job_id, "completed", 1.0)
    record = bridge.wait_final(run_id)
    assert record.status == RunStatus.completed, record.error
    events = [e["event"] for e in bridge.store.events(run_id)]
    assert events.count("downloaded") == 1 and "fetch_again" not in events, "the slide was fetched once"
    blob = bridge.store.get_blob(run_id, THUMBNAIL_BLOB)
    assert blob is not None
    picture = np.asarray(Image.open(io.BytesIO(blob)).convert("RGB")).astype(float)
    # The 1024 x 768 slide at the stored picture's 480 px, the legend panel to its right, the results'
    # translucent bands over both halves. Where nothing is drawn, the left half shows the stain and the
    # right half the glass (243, 243, 241); a neutral canvas is one flat (232, 232, 228).
    slide = picture[: 480 * 768 // 1024, :480]
    left, right = slide[:, :240].reshape(-1, 3), slide[:, 240:].reshape(-1, 3)

    def stained(pixels: np.ndarray) -> float:
        red, green, blue = pixels.T
        return float(((red > 160) & (green < 150) & (blue > 130)).mean())

    def glass(pixels: np.ndarray) -> float:
        return float((pixels >= 238).all(axis=1).mean())

    assert stained(left) > 0.1 and glass(left) < 0.01, "the left half is not the stain"
    assert glass(right) > 0.05 and stained(right) < 0.01, "the right half is not the glass"
