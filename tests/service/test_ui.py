"""The operator status page at /ui: its access rules over HTTP, its figures, and a real headless browser."""

from __future__ import annotations

import io
import re
import shutil
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

from service.ui import COOKIE_NAME, collect, stage_timings
from tests.service.conftest import SECTRA_TOKEN, Bridge, BridgeFactory
from workers.runstore import THUMBNAIL_BLOB, RunStatus, RunStore
from workers.states import WORKING_ORDER

ADMIN = "ui-admin-secret-0123"
UPLOAD_URL = "https://upload.strand.example/sessions/secret-session-42"
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


def start_run(bridge: Bridge, slide: str) -> str:
    """A run created the real way, through Sectra's webhook (so it carries a callback token)."""
    assert bridge.post(bridge.invocation(slideId=slide)).status_code == 200
    (record,) = [r for r in bridge.store.list_runs(limit=100) if r.slide_id == slide]
    return record.run_id


def advance(store: RunStore, run_id: str, to: RunStatus, **fields: Any) -> None:
    """Walk the state machine up to `to` (a final state is entered from the last working one)."""
    last = WORKING_ORDER.index(to) if to in WORKING_ORDER else len(WORKING_ORDER) - 1
    for status in WORKING_ORDER[1 : last + 1]:
        store.transition(run_id, status)
    if to not in WORKING_ORDER:
        store.transition(run_id, to)
    if fields:
        store.update(run_id, **fields)


def seed(bridge: Bridge) -> dict[str, str]:
    """Runs in every situation the page tells apart; credits that count: 7 + 5 + 3 = 15."""
    names = ("dl", "wait", "sub", "done", "late", "early", "cxl")
    runs = {name: start_run(bridge, f"slide-{name}") for name in names}
    store = bridge.store
    advance(
        store,
        runs["dl"],
        RunStatus.downloading,
        stage_progress=0.42,
        message="<script>alert(1)</script> Downloading 42 %",
        upload_url=UPLOAD_URL,
    )
    advance(store, runs["wait"], RunStatus.waiting, job_id="job-w", reserved_credits=7, message="Strand: 9 %")
    # Credits reserved but the run has not reached `waiting` yet: not counted.
    advance(store, runs["sub"], RunStatus.submitting, job_id="job-s", reserved_credits=100)
    advance(store, runs["done"], RunStatus.completed, job_id="job-d", reserved_credits=5)
    # Failed after submission: Strand kept the reservation.
    advance(
        store, runs["late"], RunStatus.failed, job_id="job-l", reserved_credits=3,
        error="strand_job_failed", message="Strand said <b>no</b> & gave up",
    )  # fmt: skip
    advance(store, runs["early"], RunStatus.failed, error="sectra_unreachable", message="Sectra is down")
    # Cancelled runs ask Strand for a refund: not counted.
    advance(store, runs["cxl"], RunStatus.cancelled, job_id="job-c", reserved_credits=11)
    return runs


STAGES_DONE = ("downloading", "deidentifying", "uploading", "submitting", "summarising", "publishing")


def picture_png() -> bytes:
    """A small JPEG of known pixels: what the publish step keeps beside a run (`workers.render`)."""
    buffer = io.BytesIO()
    Image.new("RGB", (64, 40), (10, 200, 30)).save(buffer, format="JPEG")
    return buffer.getvalue()


def finish_with_picture(store: RunStore, run_id: str) -> bytes:
    """The audit trail a pipeline writes for a run that went through every stage, and its picture."""
    for stage in STAGES_DONE[:4]:
        store.append_event(run_id, "stage_done", stage=stage)
    store.append_event(run_id, "job_finished", job_status="completed")
    for stage in STAGES_DONE[4:]:
        store.append_event(run_id, "stage_done", stage=stage)
    png = picture_png()
    store.put_blob(run_id, THUMBNAIL_BLOB, png)
    return png


def section(page: str, name: str) -> str:
    match = re.search(rf'<section id="{name}">(.*?)</section>', page, re.S)
    assert match, f"no section {name!r} on the page"
    return match.group(1)


def figure(page: str, name: str) -> int:
    match = re.search(rf'<strong id="{name}">(\d+)</strong>', page)
    assert match, f"no figure {name!r} on the page"
    return int(match.group(1))


def test_ui_is_off_without_an_admin_token(bridge: Bridge) -> None:
    for path in ("/ui", "/ui?token=guess"):
        response = bridge.client.get(path, headers={"Authorization": "Bearer guess"})
        assert response.status_code == 404
        assert "set-cookie" not in response.headers


def test_ui_refuses_without_a_valid_token(make_bridge: BridgeFactory) -> None:
    bridge = make_bridge(BRIDGE_ADMIN_TOKEN=ADMIN)
    refusals = [
        bridge.client.get("/ui"),
        bridge.client.get("/ui", headers={"Authorization": "Bearer wrong"}),
        bridge.client.get("/ui", params={"token": "wrong"}),
        # A valid header does not turn a wrong query token into a cookie.
        bridge.client.get("/ui", params={"token": "wrong"}, headers={"Authorization": f"Bearer {ADMIN}"}),
        # The cookie carries a derived value; the raw token in its place is refused.
        bridge.client.get("/ui", headers={"Cookie": f"{COOKIE_NAME}={ADMIN}"}),
    ]
    for response in refusals:
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == "Bearer"
        assert "set-cookie" not in response.headers
    allowed = bridge.client.get("/ui", headers={"Authorization": f"Bearer {ADMIN}"})
    assert allowed.status_code == 200
    assert allowed.headers["content-type"].startswith("text/html")


def test_query_token_is_exchanged_for_a_strict_httponly_cookie(make_bridge: BridgeFactory) -> None:
    bridge = make_bridge(BRIDGE_ADMIN_TOKEN=ADMIN)
    exchange = bridge.client.get("/ui", params={"token": ADMIN}, follow_redirects=False)
    assert exchange.status_code == 303
    assert exchange.headers["location"] == "/ui"
    assert exchange.headers["referrer-policy"] == "no-referrer"
    set_cookie = exchange.headers["set-cookie"]
    attributes = {part.strip().split("=")[0].lower() for part in set_cookie.split(";")}
    assert {"httponly", "path", "samesite"} <= attributes
    assert "samesite=strict" in set_cookie.lower()
    assert "path=/ui" in set_cookie.lower()
    value = exchange.cookies[COOKIE_NAME]
    assert ADMIN not in set_cookie

    page = bridge.client.get("/ui", headers={"Cookie": f"{COOKIE_NAME}={value}"})
    assert page.status_code == 200
    assert "Runs in flight" in page.text
    # The cookie opens the page only, never the admin API.
    assert bridge.client.get("/runs", headers={"Cookie": f"{COOKIE_NAME}={value}"}).status_code == 401


def test_page_shows_in_flight_failures_and_todays_credits(make_bridge: BridgeFactory) -> None:
    bridge = make_bridge(BRIDGE_ADMIN_TOKEN=ADMIN)
    runs = seed(bridge)
    response = bridge.client.get("/ui", headers={"Authorization": f"Bearer {ADMIN}"})
    assert response.status_code == 200
    page = response.text

    in_flight, failures = section(page, "in-flight"), section(page, "failures")
    assert set(re.findall(r'<tr id="run-([^"]+)"', in_flight)) == {runs["dl"], runs["wait"], runs["sub"]}
    assert set(re.findall(r'<tr id="run-([^"]+)"', failures)) == {runs["late"], runs["early"]}
    assert figure(page, "in-flight-count") == 3
    assert figure(page, "credits-today") == 15
    assert figure(page, "runs-today") == 7

    dl_row = re.search(rf'<tr id="run-{runs["dl"]}">.*?</tr>', in_flight, re.S)
    assert dl_row
    assert '<td class="stage">downloading</td>' in dl_row.group(0)
    assert '<progress max="1" value="0.420"></progress> 42 %' in dl_row.group(0)
    assert "&lt;script&gt;alert(1)&lt;/script&gt; Downloading 42 %" in dl_row.group(0)
    assert "strand_job_failed" in failures
    assert "Strand said &lt;b&gt;no&lt;/b&gt; &amp; gave up" in failures
    assert "sectra_unreachable" in failures

    assert "<script" not in page  # escaped, and the page has none of its own
    assert "<b>" not in page
    assert SECTRA_TOKEN not in page
    assert UPLOAD_URL not in page
    assert 'http-equiv="refresh" content="10"' in page
    assert not re.search(r'\b(src|href)="', page)  # no external assets
    assert "script-src" not in response.headers["content-security-policy"]
    assert response.headers["cache-control"] == "no-store"


def test_credits_count_only_runs_created_today(make_bridge: BridgeFactory) -> None:
    bridge = make_bridge(BRIDGE_ADMIN_TOKEN=ADMIN)
    runs = seed(bridge)
    today = collect(bridge.store, datetime.now().astimezone())
    tomorrow = collect(bridge.store, datetime.now().astimezone() + timedelta(days=1))
    assert (today.credits_today, today.runs_today) == (15, 7)
    assert (tomorrow.credits_today, tomorrow.runs_today) == (0, 0)
    # Runs still in flight stay on the page whatever day they started.
    assert {r["run_id"] for r in tomorrow.in_flight} == {runs["dl"], runs["wait"], runs["sub"]}


def test_page_in_a_real_headless_browser(make_bridge: BridgeFactory, tmp_path: Path) -> None:
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if shutil.which(p) is None]
    if missing:
        pytest.fail(
            f"headless-browser test needs {', '.join(missing)}: "
            "apt-get install chromium chromium-driver (./dev test installs them)"
        )
    bridge = make_bridge(BRIDGE_ADMIN_TOKEN=ADMIN)
    runs = seed(bridge)
    finish_with_picture(bridge.store, runs["done"])

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
        "--window-size=1400,900",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    try:
        driver.set_page_load_timeout(60)
        driver.get(f"{bridge.url}/ui?token={ADMIN}")
        # The browser followed the exchange: the token is gone from the address bar.
        assert driver.current_url == f"{bridge.url}/ui"
        assert driver.title == "Sectra-Strand bridge: status"
        assert driver.find_element(By.ID, "credits-today").text == "15"
        in_flight = driver.find_element(By.ID, "in-flight")
        for name in ("dl", "wait", "sub"):
            assert in_flight.find_element(By.ID, f"run-{runs[name]}")
        row = in_flight.find_element(By.ID, f"run-{runs['dl']}")
        assert "<script>alert(1)</script> Downloading 42 %" in row.text  # shown as text, not run
        failures = driver.find_element(By.ID, "failures")
        assert "strand_job_failed" in failures.find_element(By.ID, f"run-{runs['late']}").text
        # The completed run's picture loaded (same origin, with the page's cookie, allowed by the CSP).
        picture = driver.find_element(By.ID, f"thumb-{runs['done']}")
        loaded = driver.execute_script("return [arguments[0].complete, arguments[0].naturalWidth]", picture)
        assert loaded == [True, 64]
        assert picture.size["width"] > 0 and picture.size["height"] > 0
        # A bar per stage, each drawn with a width, and the chart's bars for every day.
        card = driver.find_element(By.ID, f"done-{runs['done']}")
        bars = card.find_elements(By.CSS_SELECTOR, "rect.stage-bar")
        assert [b.get_attribute("data-stage") for b in bars] == [
            *STAGES_DONE[:4],
            "waiting",
            *STAGES_DONE[4:],
        ]
        assert all(b.size["width"] >= 1 for b in bars)
        chart = driver.find_element(By.ID, "daily-chart")
        day_bars = chart.find_elements(By.CSS_SELECTOR, "rect.bar-runs")
        assert len(day_bars) == 14
        assert day_bars[-1].get_attribute("data-value") == "7" and day_bars[-1].size["height"] > 50
        assert (
            chart.find_elements(By.CSS_SELECTOR, "rect.bar-credits")[-1].get_attribute("data-value") == "15"
        )
        # HttpOnly: the page's own scripts (were there any) could not read the cookie.
        assert driver.execute_script("return document.cookie") == ""
        (cookie,) = driver.get_cookies()
        assert cookie["name"] == COOKIE_NAME
        assert cookie["httpOnly"] is True
        assert cookie["sameSite"] == "Strict"
        shot = tmp_path / "ui.png"
        assert driver.save_screenshot(str(shot))
    finally:
        driver.quit()
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    print(f"screenshot: {shot}")


def test_stage_timings_are_the_gaps_between_stage_ends() -> None:
    # Written out: each stage lasts from the end of the one before (the run's creation for the first)
    # to its own `stage_done`; the wait for Strand ends at `job_finished`; other events do not count.
    events = [
        {"ts": 103.0, "event": "stage_done", "data": {"stage": "downloading"}},
        {"ts": 104.0, "event": "downloaded", "data": {"files": 1}},
        {"ts": 110.5, "event": "stage_done", "data": {"stage": "deidentifying"}},
        {"ts": 170.5, "event": "job_finished", "data": {"job_status": "completed"}},
        {"ts": 171.0, "event": "stage_done", "data": {"stage": "summarising"}},
    ]
    timings = [(t.stage, t.seconds) for t in stage_timings(100.0, events)]
    assert timings == [("downloading", 3.0), ("deidentifying", 7.5), ("waiting", 60.0), ("summarising", 0.5)]


def test_completed_runs_show_picture_figures_and_stage_bars(make_bridge: BridgeFactory) -> None:
    bridge = make_bridge(BRIDGE_ADMIN_TOKEN=ADMIN)
    runs = seed(bridge)
    finish_with_picture(bridge.store, runs["done"])
    page = bridge.client.get("/ui", headers={"Authorization": f"Bearer {ADMIN}"}).text

    completed = section(page, "completed")
    card = re.search(rf'<div class="result" id="done-{runs["done"]}">(.*?)</svg></div>', completed, re.S)
    assert card, completed
    assert re.search(
        rf'<img class="thumb" id="thumb-{runs["done"]}" src="/ui/runs/{runs["done"]}/thumbnail.jpg\?v=\d+"',
        card.group(1),
    )
    bars = re.findall(r'<rect class="stage-bar" data-stage="([a-z]+)"', card.group(1))
    assert bars == [*STAGES_DONE[:4], "waiting", *STAGES_DONE[4:]]
    # The only images are this origin's run pictures; nothing else is fetched.
    sources = re.findall(r'\b(?:src|href)="([^"]*)"', page)
    assert sources and all(
        re.fullmatch(r"/ui/runs/run-[0-9a-f]{24}/thumbnail\.jpg\?v=\d+", s) for s in sources
    )
    assert "<script" not in page


def test_the_chart_counts_runs_and_credits_by_the_day_they_started(make_bridge: BridgeFactory) -> None:
    bridge = make_bridge(BRIDGE_ADMIN_TOKEN=ADMIN)
    seed(bridge)  # 7 runs today, 15 credits that count
    now = datetime.now().astimezone()
    today = collect(bridge.store, now)
    assert len(today.days) == 14 and today.days[-1].day == now.date().isoformat()
    assert (today.days[-1].runs, today.days[-1].credits) == (7, 15)
    assert all((d.runs, d.credits) == (0, 0) for d in today.days[:-1])
    # Three days on, the same runs are the bar three days back.
    later = collect(bridge.store, now + timedelta(days=3))
    assert [(d.runs, d.credits) for d in later.days[-4:]] == [(7, 15), (0, 0), (0, 0), (0, 0)]
    # Sixteen days on, they have left the chart.
    assert all(d.runs == 0 for d in collect(bridge.store, now + timedelta(days=16)).days)

    chart = section(bridge.client.get("/ui", headers={"Authorization": f"Bearer {ADMIN}"}).text, "per-day")
    assert len(re.findall(r'<rect class="bar-runs"', chart)) == 14
    assert f'<rect class="bar-runs" data-day="{now.date().isoformat()}" data-value="7"' in chart
    assert f'<rect class="bar-credits" data-day="{now.date().isoformat()}" data-value="15"' in chart


def test_the_picture_route_is_behind_the_page_token_and_private(make_bridge: BridgeFactory) -> None:
    bridge = make_bridge(BRIDGE_ADMIN_TOKEN=ADMIN)
    run_id = start_run(bridge, "slide-picture")
    advance(bridge.store, run_id, RunStatus.completed)
    png = finish_with_picture(bridge.store, run_id)
    path = f"/ui/runs/{run_id}/thumbnail.jpg"

    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Cookie": f"{COOKIE_NAME}={ADMIN}"}):
        refused = bridge.client.get(path, headers=headers)
        assert refused.status_code == 401 and refused.json()["error"] == "unauthorized"
    cookie = bridge.client.get("/ui", params={"token": ADMIN}, follow_redirects=False).cookies[COOKIE_NAME]
    for headers in ({"Authorization": f"Bearer {ADMIN}"}, {"Cookie": f"{COOKIE_NAME}={cookie}"}):
        answer = bridge.client.get(path, headers=headers)
        assert answer.status_code == 200
        assert answer.headers["content-type"] == "image/jpeg"
        assert answer.headers["cache-control"].split(",")[0] == "private"
        assert answer.content == png
    for missing in (f"/ui/runs/{'run-' + '0' * 24}/thumbnail.jpg", "/ui/runs/not-a-run/thumbnail.jpg"):
        absent = bridge.client.get(missing, headers={"Authorization": f"Bearer {ADMIN}"})
        assert absent.status_code == 404
        assert absent.json()["error"] == "not_found"


def test_the_picture_route_is_off_without_an_admin_token(bridge: Bridge) -> None:
    run_id = start_run(bridge, "slide-off")
    answer = bridge.client.get(f"/ui/runs/{run_id}/thumbnail.jpg", headers={"Authorization": "Bearer x"})
    assert answer.status_code == 404
