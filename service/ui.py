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
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from html import escape
from typing import Any

import anyio
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import SecretStr

from service.auth import bearer_matches, require_admin_token
from service.errors import ApiError
from service.state import ServiceState, get_state
from workers.quotas import DailyCredits, DayUse
from workers.runstore import RunStatus, RunStore
from workers.states import WORKING_ORDER

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
"""
# The stylesheet is inline, so the content policy allows exactly this block by its digest and nothing else.
_STYLE_HASH = base64.b64encode(hashlib.sha256(_STYLE.encode()).digest()).decode()
_SECURITY_HEADERS = {
    "Content-Security-Policy": (
        f"default-src 'none'; style-src 'sha256-{_STYLE_HASH}'; "
        "frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    ),
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}

router = APIRouter()
_CHALLENGE = {"WWW-Authenticate": "Bearer"}


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


def collect(store: RunStore, now: datetime) -> StatusSnapshot:
    """Read the page's figures from the store (blocking: call it from a worker thread).

    `now` must be timezone-aware; "today" starts at its local midnight.
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
    credits = sum(
        r.reserved_credits or 0
        for r in today
        # A run that failed after submission still had its credits reserved by Strand.
        if r.status in _CHARGED or (r.status is RunStatus.failed and r.job_id is not None)
    )
    return StatusSnapshot(
        generated_at=now,
        in_flight=in_flight,
        in_flight_truncated=truncated,
        failures=failures,
        credits_today=credits,
        runs_today=len(today),
        today_truncated=len(runs) >= _TODAY_CAP and len(today) == len(runs),
    )


def _collect_with_limits(state: ServiceState, now: datetime) -> StatusSnapshot:
    snapshot = collect(state.store, now)
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
