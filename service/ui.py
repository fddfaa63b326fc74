"""A read-only status page for operators at `GET /ui`, behind the admin token.

A browser cannot attach a bearer header to a bookmark, so the admin token may
also arrive once as `?token=`; it is swapped for an HttpOnly, SameSite=Strict
cookie and the browser is sent back to a clean `/ui`, so the token leaves the
address bar and the history. The cookie holds an HMAC of the token, not the
token: a copied cookie opens this page only, never the admin API.

The page is plain server-rendered HTML (no script, no external asset) that
refreshes itself, built only from `RunRecord.public_dict()`, which leaves out
callback tokens and upload URLs. Every value goes through `html.escape`:
messages and errors may quote text from Sectra or Strand.

Completed runs show the picture the publish step kept (`workers.render`), served
from this origin at `/ui/runs/{run_id}/thumbnail.jpg` behind the same cookie or
token, with their figures and a bar per stage from the audit trail; a chart
(inline SVG) shows runs and credits per day. Work per refresh stays bounded: the
newest 20 completed runs, each run's audit trail read once and cached, and the
days before today re-read at most every five minutes.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import time
import weakref
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timedelta
from html import escape
from typing import Any

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import SecretStr

from service.auth import bearer_matches, require_admin_token
from service.errors import ApiError
from service.state import ServiceState, get_state
from workers.apps import AppConfig
from workers.quotas import DailyCredits, DayUse
from workers.runstore import THUMBNAIL_BLOB, RunRecord, RunStatus, RunStore
from workers.states import WORKING_ORDER

log = logging.getLogger(__name__)

COOKIE_NAME = "bridge_ui"
REFRESH_SECONDS = 10
# Long enough for a shift at the operator's desk; a new day asks for the token again.
_COOKIE_MAX_AGE = 12 * 3600
# Per working status: far above any real backlog, small enough that a runaway one cannot stall the page.
_IN_FLIGHT_PER_STATUS = 200
_RECENT_FAILURES = 25
# Today's runs are read newest first in growing pages; the cap bounds the work one refresh may do.
_TODAY_FIRST_PAGE = 200
_TODAY_CAP = 12_800
# Strand has reserved (and will charge) credits once a run has a job; these statuses come after that.
_CHARGED = frozenset({RunStatus.waiting, RunStatus.summarising, RunStatus.publishing, RunStatus.completed})
# Completed runs shown with their picture, figures and stage timings: the newest few, not the archive.
_RECENT_COMPLETED = 20
# The chart of runs and credits per day. Days before today change rarely, so they are read at most
# every few minutes (per store); today's bars come from the runs the page reads anyway.
_CHART_DAYS = 14
_CHART_CACHE_SECONDS = 300.0
_CHART_CAP = 12_800
# A completed run's stage timings and figures are read once (its audit trail is read whole), then
# kept per (run, last write); the bound covers far more runs than the page shows.
_RUN_CACHE_SIZE = 512
# Audit events that end a stage: `stage_done` names it; `job_finished` ends the wait for Strand.
_STAGE_END = {"stage_done": None, "job_finished": RunStatus.waiting.value}

_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5rem;color:#1d1d1f;background:#fafafa}
h1{font-size:1.3rem;margin:0 0 .2rem}h2{font-size:1.05rem;margin:1.6rem 0 .4rem}
.meta{color:#666}.figures{display:flex;gap:1rem;margin-top:1rem}
.figure{background:#fff;border:1px solid #ddd;border-radius:6px;padding:.6rem 1rem}
.figure strong{display:block;font-size:1.6rem}
table{border-collapse:collapse;width:100%;background:#fff}
th,td{border:1px solid #ddd;padding:.3rem .5rem;text-align:left;vertical-align:top}
th{background:#f0f0f0}code{font-size:.85em}.error{color:#a00000;font-weight:600}
progress{width:7rem}.empty{color:#666;font-style:italic}.nowrap{white-space:nowrap}
.results{display:flex;flex-wrap:wrap;gap:1rem}.result{background:#fff;border:1px solid #ddd;
border-radius:6px;padding:.6rem;width:380px}.thumb{display:block;width:380px;height:auto;
background:#eee}.nothumb{color:#666;font-style:italic;padding:1rem 0}.line{font-weight:600;margin:.3rem 0}
.chart text,.stages text{font:11px system-ui,sans-serif;fill:#333}
"""
# The stylesheet is inline, so the content policy allows exactly this block by its digest and nothing else.
_STYLE_HASH = base64.b64encode(hashlib.sha256(_STYLE.encode()).digest()).decode()
_SECURITY_HEADERS = {
    "Content-Security-Policy": (
        # Images from this origin only: the run pictures at /ui/runs/{run_id}/thumbnail.jpg.
        f"default-src 'none'; style-src 'sha256-{_STYLE_HASH}'; img-src 'self'; "
        "frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    ),
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}

router = APIRouter()
_CHALLENGE = {"WWW-Authenticate": "Bearer"}


@dataclass(frozen=True, slots=True)
class StageTime:
    """How long a run spent in one stage, from its audit trail (queueing included)."""

    stage: str
    seconds: float


@dataclass(frozen=True, slots=True)
class CompletedRun:
    """A finished run as the page shows it: public fields only, its figures line and stage timings."""

    run: dict[str, Any]
    figures: str
    has_thumbnail: bool
    stages: tuple[StageTime, ...]


@dataclass(frozen=True, slots=True)
class DayCount:
    """Runs started and credits reserved on one local day (`day` is YYYY-MM-DD)."""

    day: str
    runs: int
    credits: int


@dataclass(frozen=True, slots=True)
class StatusSnapshot:
    """What the page shows, as public dicts (never records: those still hold credentials)."""

    generated_at: datetime
    in_flight: list[dict[str, Any]]
    in_flight_truncated: bool
    failures: list[dict[str, Any]]
    credits_today: int
    runs_today: int
    today_truncated: bool
    # Credits reserved this UTC day against the daily limits (`workers.quotas`).
    daily: DayUse | None = None
    completed: list[CompletedRun] = field(default_factory=list)
    days: list[DayCount] = field(default_factory=list)  # oldest first, today last
    days_truncated: bool = False


def cookie_value(admin_token: SecretStr) -> str:
    """The cookie proves the token was presented without being the token."""
    key = admin_token.get_secret_value().encode()
    return hmac.new(key, b"sectra-strand-bridge /ui cookie v1", hashlib.sha256).hexdigest()


def _cookie_matches(presented: str | None, admin_token: SecretStr) -> bool:
    if not presented:
        return False
    return hmac.compare_digest(
        hashlib.sha256(presented.encode()).digest(),
        hashlib.sha256(cookie_value(admin_token).encode()).digest(),
    )


def collect(store: RunStore, now: datetime, apps: Mapping[str, AppConfig] | None = None) -> StatusSnapshot:
    """Read the page's figures from the store (blocking: call it from a worker thread).

    `now` must be timezone-aware; "today" starts at its local midnight. `apps` lets a completed
    run's figures be the very line its Sectra result shows.
    """
    in_flight, truncated = [], False
    for status in WORKING_ORDER:
        records = store.list_runs(status=status, limit=_IN_FLIGHT_PER_STATUS)
        truncated |= len(records) == _IN_FLIGHT_PER_STATUS
        in_flight += [r.public_dict() for r in records]
    in_flight.sort(key=lambda r: r["created_at"], reverse=True)
    failures = [r.public_dict() for r in store.list_runs(status=RunStatus.failed, limit=_RECENT_FAILURES)]
    failures.sort(key=lambda r: r["updated_at"], reverse=True)

    day_start = now.replace(hour=0, minute=0, second=0, microsecond=0).timestamp()
    limit = _TODAY_FIRST_PAGE
    while True:
        runs = store.list_runs(limit=limit)
        if len(runs) < limit or runs[-1].created_at < day_start or limit >= _TODAY_CAP:
            break
        limit *= 2
    today = [r for r in runs if r.created_at >= day_start]
    credits = sum(_charged_credits(r) for r in today)
    today_truncated = len(runs) >= _TODAY_CAP and len(today) == len(runs)
    days, days_truncated = _day_counts(store, now, today)
    return StatusSnapshot(
        generated_at=now,
        in_flight=in_flight,
        in_flight_truncated=truncated,
        failures=failures,
        credits_today=credits,
        runs_today=len(today),
        today_truncated=today_truncated,
        completed=_completed_runs(store, apps or {}),
        days=days,
        days_truncated=days_truncated or today_truncated,
    )


def _charged_credits(record: RunRecord) -> int:
    # A run that failed after submission still had its credits reserved by Strand.
    if record.status in _CHARGED or (record.status is RunStatus.failed and record.job_id is not None):
        return record.reserved_credits or 0
    return 0


# Per store (a test or a second app has its own), so one store's figures never show on another's page.
_PAST_DAYS: weakref.WeakKeyDictionary[RunStore, tuple[date, float, dict[date, tuple[int, int]], bool]] = (
    weakref.WeakKeyDictionary()
)
_RUN_CACHE: weakref.WeakKeyDictionary[
    RunStore, OrderedDict[tuple[str, float], tuple[str, tuple[StageTime, ...]]]
] = weakref.WeakKeyDictionary()


def _day_counts(store: RunStore, now: datetime, today: Sequence[RunRecord]) -> tuple[list[DayCount], bool]:
    """The last `_CHART_DAYS` local days, oldest first; True when the cap cut the oldest days short."""
    tz = now.tzinfo
    first = now.date() - timedelta(days=_CHART_DAYS - 1)
    cached = _PAST_DAYS.get(store)
    if cached is None or cached[0] != now.date() or time.monotonic() - cached[1] > _CHART_CACHE_SECONDS:
        first_start = datetime.combine(first, datetime.min.time(), tz).timestamp()
        day_start = datetime.combine(now.date(), datetime.min.time(), tz).timestamp()
        limit = _TODAY_FIRST_PAGE
        while True:
            runs = store.list_runs(limit=limit)
            if len(runs) < limit or runs[-1].created_at < first_start or limit >= _CHART_CAP:
                break
            limit *= 2
        past: dict[date, tuple[int, int]] = {}
        for record in runs:
            if first_start <= record.created_at < day_start:
                day = datetime.fromtimestamp(record.created_at, tz).date()
                count, credits = past.get(day, (0, 0))
                past[day] = (count + 1, credits + _charged_credits(record))
        truncated = len(runs) >= _CHART_CAP and runs[-1].created_at >= first_start
        cached = (now.date(), time.monotonic(), past, truncated)
        _PAST_DAYS[store] = cached
    past = cached[2]
    days = [
        DayCount(day.isoformat(), *past.get(day, (0, 0)))
        for day in (first + timedelta(days=offset) for offset in range(_CHART_DAYS - 1))
    ]
    days.append(DayCount(now.date().isoformat(), len(today), sum(_charged_credits(r) for r in today)))
    return days, cached[3]


def stage_timings(created_at: float, events: Iterable[Mapping[str, Any]]) -> tuple[StageTime, ...]:
    """Seconds per stage from the audit trail: each stage ends at its `stage_done` (the wait for
    Strand at `job_finished`) and begins where the one before ended (the first at the run's creation)."""
    start, out = created_at, []
    for event in events:
        if event.get("event") not in _STAGE_END:
            continue
        data = event.get("data")
        stage = _STAGE_END[event["event"]] or (data.get("stage") if isinstance(data, Mapping) else None)
        if not stage:
            continue
        ts = float(event["ts"])
        out.append(StageTime(str(stage), max(0.0, ts - start)))
        start = ts
    return tuple(out)


def _figures_line(record: RunRecord, app: AppConfig | None) -> str:
    """The result's `displayResult` as the publish step built it, or the markers' shares without the app."""
    if record.summary is None:
        return record.message
    if app is not None and record.job_id is not None:
        try:
            from sectra_adapter import build_final_result
            from workers.summary_record import run_summary

            return build_final_result(run_summary(record, app)).displayResult
        except Exception as exc:  # an old summary or a changed app: the shares below still say it
            log.debug("figures line rebuilt from the shares", extra={"error_type": type(exc).__name__})
    markers = record.summary.get("markers") or []
    shares = [
        f"{m['marker']} {float(m['positive_fraction']) * 100:.1f}%"
        for m in markers
        if isinstance(m, Mapping) and "marker" in m and isinstance(m.get("positive_fraction"), int | float)
    ]
    return " | ".join(shares) or record.message


# A run's stage transitions come early in its trail; a run with thousands of progress events is
# still read in one short page.
_STAGE_EVENTS = 200


def _has_thumbnail(store: RunStore, run_id: str) -> bool:
    # EXISTS, not GET: the page must not pull 20 pictures out of Redis to learn they are there.
    return store.has_blob(run_id, THUMBNAIL_BLOB)


def _completed_runs(store: RunStore, apps: Mapping[str, AppConfig]) -> list[CompletedRun]:
    cache = _RUN_CACHE.setdefault(store, OrderedDict())
    out = []
    for record in store.list_runs(status=RunStatus.completed, limit=_RECENT_COMPLETED):
        key = (record.run_id, record.updated_at)
        # Two refreshes may run at once (each in its own thread): read and write once, tolerate a miss.
        known = cache.get(key)
        if known is None:
            known = (
                _figures_line(record, apps.get(record.app_id)),
                stage_timings(record.created_at, store.events(record.run_id, limit=_STAGE_EVENTS)),
            )
            cache[key] = known
            while len(cache) > _RUN_CACHE_SIZE:
                cache.popitem(last=False)
        figures, stages = known
        out.append(CompletedRun(record.public_dict(), figures, _has_thumbnail(store, record.run_id), stages))
    return out


def _collect_with_limits(state: ServiceState, now: datetime) -> StatusSnapshot:
    snapshot = collect(state.store, now, state.apps)
    limits = {app_id: app.daily_credit_limit for app_id, app in state.apps.items()}
    daily = DailyCredits(state.store.client, prefix=state.store.prefix).use(
        limits, state.settings.daily_credit_limit
    )
    return replace(snapshot, daily=daily)


# -- rendering --------------------------------------------------------------------------------------


def _e(value: Any) -> str:
    return escape("" if value is None else str(value), quote=True)


def _when(timestamp: float | None, tz: Any) -> str:
    if timestamp is None:
        return ""
    return datetime.fromtimestamp(timestamp, tz).strftime("%Y-%m-%d %H:%M:%S")


def _progress(fraction: float | None) -> str:
    if fraction is None:
        return ""
    value = min(max(float(fraction), 0.0), 1.0)
    return f'<progress max="1" value="{value:.3f}"></progress> {value * 100:.0f} %'


def _table(rows: Iterable[str], headers: Iterable[str], empty: str, columns: int) -> str:
    body = "".join(rows) or f'<tr><td colspan="{columns}" class="empty">{_e(empty)}</td></tr>'
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _in_flight_row(run: Mapping[str, Any], tz: Any) -> str:
    return (
        f'<tr id="run-{_e(run["run_id"])}"><td class="nowrap"><code>{_e(run["run_id"])}</code></td>'
        f"<td>{_e(run['app_id'])}</td><td>{_e(run['slide_id'])}</td>"
        f'<td class="stage">{_e(run["status"])}</td>'
        f'<td class="nowrap">{_progress(run.get("stage_progress"))}</td>'
        f'<td class="message">{_e(run.get("message"))}</td>'
        f'<td class="nowrap">{_e(_when(run.get("created_at"), tz))}</td>'
        f'<td class="nowrap">{_e(_when(run.get("updated_at"), tz))}</td></tr>'
    )


def _failure_row(run: Mapping[str, Any], tz: Any) -> str:
    return (
        f'<tr id="run-{_e(run["run_id"])}"><td class="nowrap"><code>{_e(run["run_id"])}</code></td>'
        f"<td>{_e(run['app_id'])}</td><td>{_e(run['slide_id'])}</td>"
        f'<td class="error">{_e(run.get("error"))}</td><td class="message">{_e(run.get("message"))}</td>'
        f'<td class="nowrap">{_e(_when(run.get("updated_at"), tz))}</td></tr>'
    )


def _limit_row(scope: str, used: int, limit: int | None) -> str:
    shown = "no limit" if limit is None else str(limit)
    over = ' class="error"' if limit is not None and used >= limit else ""
    return f"<tr><td>{_e(scope)}</td><td{over}>{used}</td><td>{_e(shown)}</td></tr>"


def _daily_section(daily: DayUse | None) -> str:
    if daily is None:
        return ""
    rows = [_limit_row("All apps (BRIDGE_DAILY_CREDIT_LIMIT)", daily.bridge_used, daily.bridge_limit)]
    rows += [_limit_row(f"App {app_id}", used, limit) for app_id, (used, limit) in daily.apps.items()]
    table = _table(rows, ("Scope", "Credits reserved", "Daily limit"), "", 3)
    return f'<section id="daily-limits"><h2>Daily credit limits, {_e(daily.day)} (UTC)</h2>{table}</section>'


# One colour per stage (Okabe-Ito, as the result drawings use), so the bars read the same on every run.
_STAGE_COLOURS = {
    RunStatus.downloading.value: "#56B4E9",
    RunStatus.deidentifying.value: "#009E73",
    RunStatus.uploading.value: "#E69F00",
    RunStatus.submitting.value: "#F0E442",
    RunStatus.waiting.value: "#0072B2",
    RunStatus.summarising.value: "#D55E00",
    RunStatus.publishing.value: "#CC79A7",
}
_BAR_WIDTH = 360


def _seconds(value: float) -> str:
    return f"{value:.1f} s" if value < 120 else f"{value / 60:.1f} min"


def _stage_bars(stages: Sequence[StageTime]) -> str:
    """One bar per stage, its length the stage's share of the run's time, scaled to the longest stage."""
    if not stages:
        return '<p class="empty">No stage timings in the audit trail.</p>'
    longest = max(s.seconds for s in stages) or 1.0
    row = 16
    parts = [
        f'<svg class="stages" width="{_BAR_WIDTH}" height="{row * len(stages)}" '
        f'role="img" aria-label="Time per stage">'
    ]
    for index, stage in enumerate(stages):
        width = max(1.0, (_BAR_WIDTH - 190) * stage.seconds / longest)
        y = index * row
        colour = _STAGE_COLOURS.get(stage.stage, "#999999")
        parts.append(
            f'<text x="0" y="{y + 11}">{_e(stage.stage)}</text>'
            f'<rect class="stage-bar" data-stage="{_e(stage.stage)}" x="100" y="{y + 2}" '
            f'width="{width:.1f}" height="11" fill="{colour}"><title>{_e(stage.stage)}: '
            f"{_e(_seconds(stage.seconds))}</title></rect>"
            f'<text x="{104 + width:.1f}" y="{y + 11}">{_e(_seconds(stage.seconds))}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _completed_card(done: CompletedRun, tz: Any) -> str:
    run = done.run
    run_id = _e(run["run_id"])
    if done.has_thumbnail:
        # The last write in the address: a re-drawn picture (after a review) is fetched afresh.
        version = int(float(run.get("updated_at") or 0))
        picture = (
            f'<img class="thumb" id="thumb-{run_id}" src="/ui/runs/{run_id}/thumbnail.jpg?v={version}" '
            f'alt="The result drawn on the slide">'
        )
    else:
        picture = '<p class="nothumb">No picture of this result.</p>'
    total = sum(s.seconds for s in done.stages)
    return (
        f'<div class="result" id="done-{run_id}">{picture}'
        f'<p class="line">{_e(done.figures)}</p>'
        f"<p><code>{run_id}</code><br>{_e(run['app_id'])} · slide {_e(run['slide_id'])}<br>"
        f"completed {_e(_when(run.get('updated_at'), tz))}"
        f"{f' in {_e(_seconds(total))}' if done.stages else ''}</p>"
        f"{_stage_bars(done.stages)}</div>"
    )


def _completed_section(completed: Sequence[CompletedRun], tz: Any) -> str:
    cards = "".join(_completed_card(done, tz) for done in completed)
    body = f'<div class="results">{cards}</div>' if cards else '<p class="empty">No completed run yet.</p>'
    return f'<section id="completed"><h2>Recent results (newest {_RECENT_COMPLETED})</h2>{body}</section>'


def _chart(days: Sequence[DayCount], truncated: bool) -> str:
    """Runs started (blue) and credits reserved (orange) per day, each scaled to its own largest day."""
    if not days:
        return ""
    group, bar, top, plot = 44, 16, 16, 110
    most_runs = max(d.runs for d in days) or 1
    most_credits = max(d.credits for d in days) or 1
    width = group * len(days) + 10
    parts = [
        f'<svg id="daily-chart" class="chart" width="{width}" height="{top + plot + 40}" role="img" '
        f'aria-label="Runs and credits per day, last {len(days)} days">'
    ]
    for index, day in enumerate(days):
        x = 10 + index * group
        for offset, value, most, colour, kind in (
            (0, day.runs, most_runs, "#0072B2", "runs"),
            (bar + 2, day.credits, most_credits, "#E69F00", "credits"),
        ):
            height = plot * value / most
            y = top + plot - height
            parts.append(
                f'<rect class="bar-{kind}" data-day="{_e(day.day)}" data-value="{value}" x="{x + offset}" '
                f'y="{y:.1f}" width="{bar}" height="{height:.1f}" fill="{colour}">'
                f"<title>{_e(day.day)}: {value} {kind}</title></rect>"
                f'<text x="{x + offset + bar / 2}" y="{y - 3:.1f}" text-anchor="middle">{value}</text>'
            )
        parts.append(
            f'<text x="{x + bar}" y="{top + plot + 14}" text-anchor="middle">{_e(day.day[5:])}</text>'
        )
    parts.append(
        f'<rect x="10" y="{top + plot + 24}" width="10" height="10" fill="#0072B2"></rect>'
        f'<text x="24" y="{top + plot + 33}">runs started</text>'
        f'<rect x="120" y="{top + plot + 24}" width="10" height="10" fill="#E69F00"></rect>'
        f'<text x="134" y="{top + plot + 33}">credits reserved{" (at least)" if truncated else ""}</text>'
        "</svg>"
    )
    return "".join(parts)


def _chart_section(days: Sequence[DayCount], truncated: bool) -> str:
    if not days:
        return ""
    heading = f"<h2>Runs and credits per day (last {len(days)} days)</h2>"
    return f'<section id="per-day">{heading}{_chart(days, truncated)}</section>'


def render(snapshot: StatusSnapshot) -> str:
    tz = snapshot.generated_at.tzinfo
    in_flight = _table(
        (_in_flight_row(r, tz) for r in snapshot.in_flight),
        ("Run", "App", "Slide", "Stage", "Progress", "Message", "Created", "Updated"),
        "No run in flight.",
        8,
    )
    failures = _table(
        (_failure_row(r, tz) for r in snapshot.failures),
        ("Run", "App", "Slide", "Error", "Message", "Failed at"),
        "No failed run.",
        6,
    )
    more = " (at least)" if snapshot.in_flight_truncated else ""
    credits_note = " (at least)" if snapshot.today_truncated else ""
    day = snapshot.generated_at.strftime("%Y-%m-%d %Z")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="refresh" content="{REFRESH_SECONDS}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Sectra-Strand bridge: status</title><style>{_STYLE}</style></head>
<body><h1>Sectra-Strand bridge</h1>
<p class="meta">Read-only status at {_e(snapshot.generated_at.strftime("%Y-%m-%d %H:%M:%S %Z"))};
refreshes every {REFRESH_SECONDS} s.</p>
<div class="figures">
<div class="figure">Runs in flight<strong id="in-flight-count">{len(snapshot.in_flight)}</strong>
{_e(more)}</div>
<div class="figure">Credits used today<strong id="credits-today">{snapshot.credits_today}</strong>
{_e(credits_note)} {_e(day)}</div>
<div class="figure">Runs started today<strong id="runs-today">{snapshot.runs_today}</strong></div>
</div>
<section id="in-flight"><h2>Runs in flight</h2>{in_flight}</section>
<section id="failures"><h2>Recent failures</h2>{failures}</section>
{_completed_section(snapshot.completed, tz)}
{_chart_section(snapshot.days, snapshot.days_truncated)}
{_daily_section(snapshot.daily)}
</body></html>
"""


# -- route ----------------------------------------------------------------------------------------


@router.get("/ui", response_model=None)
async def status_page(request: Request, token: str | None = None) -> Response:
    state = get_state(request)
    expected = state.settings.admin_token
    if expected is None:
        require_admin_token(request, expected)  # the admin surface is off: 404
    assert expected is not None
    if token is not None:
        # The query token alone decides here: a valid header must not turn a wrong one into a cookie.
        if not bearer_matches(f"Bearer {token}", expected):
            raise ApiError(401, "unauthorized", "the admin token is not valid", headers=_CHALLENGE)
        redirect = RedirectResponse("/ui", status_code=303, headers=_SECURITY_HEADERS)
        redirect.set_cookie(
            COOKIE_NAME,
            cookie_value(expected),
            max_age=_COOKIE_MAX_AGE,
            path="/ui",
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return redirect
    if not _cookie_matches(request.cookies.get(COOKIE_NAME), expected):
        require_admin_token(request, expected)  # a bearer header still works; otherwise 401
    now = datetime.fromtimestamp(time.time()).astimezone()
    snapshot = await anyio.to_thread.run_sync(_collect_with_limits, state, now)
    return HTMLResponse(render(snapshot), headers=_SECURITY_HEADERS)


_PICTURE_HEADERS = {
    # Private: the picture is for this operator's browser only, never a shared cache. The address
    # carries the run's last write, so a browser may keep it across the page's refreshes.
    "Cache-Control": "private, max-age=600",
    "Content-Security-Policy": "default-src 'none'",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}


@router.get(
    "/ui/runs/{run_id}/thumbnail.jpg",
    response_class=Response,
    responses={200: {"description": "The run's result drawn on its slide", "content": {"image/jpeg": {}}}},
)
async def run_thumbnail(request: Request, run_id: str) -> Response:
    """The picture `workers.render` kept beside a completed run, behind the same cookie or token as /ui."""
    state = get_state(request)
    expected = state.settings.admin_token
    if expected is None or not _cookie_matches(request.cookies.get(COOKIE_NAME), expected):
        require_admin_token(request, expected)  # off: 404; a bearer header still works; otherwise 401
    data = await anyio.to_thread.run_sync(state.store.get_blob, run_id, THUMBNAIL_BLOB)
    if data is None:
        raise ApiError(404, "not_found", "this run has no picture (it is not completed, or was not drawn)")
    return Response(data, media_type="image/jpeg", headers=_PICTURE_HEADERS)
