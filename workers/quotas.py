"""Daily Strand credit limits, per app (`daily_credit_limit`) and for the whole bridge
(`BRIDGE_DAILY_CREDIT_LIMIT`), counted in Redis by UTC day.

The credits counted are the ones a run is estimated to cost when it is submitted: the submit stage
reserves them here before it asks Strand, and gives them back if Strand refuses the job. One Lua
script checks both limits and adds to both counters, so two runs submitted at once can never
both pass a limit that only one of them fits under (Redis runs a script atomically: Redis docs,
"Scripting with Lua"). A run reserves at most once per day (a retried submit step does not count
twice); the run's reservation names its day, so a release after midnight takes back from the
day it was counted on.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime

import redis
from prometheus_client import Counter, Gauge

from workers import messages

# Set from Redis at each reservation and each /ui view: every pod sees the shared counters, so the
# freshest pod's figure is the day's (take `max` across pods).
DAILY_CREDITS = Gauge(
    "bridge_daily_credits_used",
    "Strand credits reserved today (UTC) by an app",
    ["app"],
    multiprocess_mode="max",
)
DAILY_CREDITS_ALL = Gauge(
    "bridge_daily_credits_used_all",
    "Strand credits reserved today (UTC) by all apps",
    multiprocess_mode="max",
)
DAILY_LIMIT_REFUSALS = Counter(
    "bridge_daily_credit_limit_refusals_total",
    "Runs refused because they would exceed a daily credit limit",
    ["app", "limit"],
)

# Counters outlive their day by a day: /ui and the metric can still read yesterday's at midnight.
_TTL_SECONDS = 2 * 86400

# KEYS: bridge total, app total, the run's reservation. ARGV: credits, bridge limit, app limit
# (-1 = none), day, ttl. Returns {code, bridge total, app total}: 0 reserved (or already reserved
# by this run), 1 over the bridge's limit, 2 over the app's limit; totals before refusal or after.
_RESERVE = """
if redis.call('EXISTS', KEYS[3]) == 1 then
  return {0, tonumber(redis.call('GET', KEYS[1]) or '0'), tonumber(redis.call('GET', KEYS[2]) or '0')}
end
local credits = tonumber(ARGV[1])
local total = tonumber(redis.call('GET', KEYS[1]) or '0')
local app = tonumber(redis.call('GET', KEYS[2]) or '0')
local bridge_limit, app_limit = tonumber(ARGV[2]), tonumber(ARGV[3])
if bridge_limit >= 0 and total + credits > bridge_limit then return {1, total, app} end
if app_limit >= 0 and app + credits > app_limit then return {2, total, app} end
total = redis.call('INCRBY', KEYS[1], credits)
app = redis.call('INCRBY', KEYS[2], credits)
redis.call('EXPIRE', KEYS[1], ARGV[5])
redis.call('EXPIRE', KEYS[2], ARGV[5])
redis.call('SET', KEYS[3], ARGV[4] .. ' ' .. credits, 'EX', ARGV[5])
return {0, total, app}
"""

# KEYS: the run's reservation; ARGV: key prefix, app id. Takes the run's credits back off its day.
_RELEASE = """
local held = redis.call('GET', KEYS[1])
if not held then return 0 end
local day, credits = string.match(held, '^(%S+) (%d+)$')
redis.call('DECRBY', ARGV[1] .. ':credits:' .. day, credits)
redis.call('DECRBY', ARGV[1] .. ':credits:' .. day .. ':app:' .. ARGV[2], credits)
redis.call('DEL', KEYS[1])
return tonumber(credits)
"""


def utc_day(now: float | None = None) -> str:
    return datetime.fromtimestamp(time.time() if now is None else now, UTC).strftime("%Y-%m-%d")


class DailyLimitExceeded(Exception):
    """A run's estimated credits do not fit under today's limit; the message is for the pathologist."""


@dataclass(frozen=True, slots=True)
class DayUse:
    """One UTC day's reserved credits against the limits (None = no limit)."""

    day: str
    bridge_used: int
    bridge_limit: int | None
    apps: dict[str, tuple[int, int | None]]


class DailyCredits:
    def __init__(self, client: redis.Redis, *, prefix: str = "bridge") -> None:
        self._redis = client
        self._prefix = prefix
        self._reserve = client.register_script(_RESERVE)
        self._release = client.register_script(_RELEASE)

    def _total_key(self, day: str) -> str:
        return f"{self._prefix}:credits:{day}"

    def _app_key(self, day: str, app_id: str) -> str:
        return f"{self._total_key(day)}:app:{app_id}"

    def _run_key(self, run_id: str) -> str:
        return f"{self._prefix}:credits-reserved:{run_id}"

    def reserve(
        self,
        run_id: str,
        app_id: str,
        credits: int,
        *,
        app_limit: int | None,
        bridge_limit: int | None,
        now: float | None = None,
    ) -> None:
        """Count the run's credits on today's counters, or raise `DailyLimitExceeded` counting nothing."""
        day = utc_day(now)
        code, total, app = self._reserve(
            keys=[self._total_key(day), self._app_key(day, app_id), self._run_key(run_id)],
            args=[
                max(0, credits),
                -1 if bridge_limit is None else bridge_limit,
                -1 if app_limit is None else app_limit,
                day,
                _TTL_SECONDS,
            ],
        )
        DAILY_CREDITS.labels(app=app_id).set(int(app))
        DAILY_CREDITS_ALL.set(int(total))
        if code == 1:
            assert bridge_limit is not None
            DAILY_LIMIT_REFUSALS.labels(app=app_id, limit="bridge").inc()
            raise DailyLimitExceeded(
                messages.daily_limit_exceeded("the bridge", bridge_limit, int(total), credits)
            )
        if code == 2:
            assert app_limit is not None
            DAILY_LIMIT_REFUSALS.labels(app=app_id, limit="app").inc()
            raise DailyLimitExceeded(messages.daily_limit_exceeded("this app", app_limit, int(app), credits))

    def release(self, run_id: str, app_id: str) -> int:
        """Give back the run's reservation (Strand did not take the job); returns the credits released."""
        return int(self._release(keys=[self._run_key(run_id)], args=[self._prefix, app_id]))

    def use(
        self, app_limits: dict[str, int | None], bridge_limit: int | None, now: float | None = None
    ) -> DayUse:
        """Today's use, per app and in all, against the limits (for /ui)."""
        day = utc_day(now)
        ids = list(app_limits)
        values = self._redis.mget([self._total_key(day), *(self._app_key(day, a) for a in ids)])
        counts = [int(v) if v is not None else 0 for v in values]
        DAILY_CREDITS_ALL.set(counts[0])
        for index, app_id in enumerate(ids):
            DAILY_CREDITS.labels(app=app_id).set(counts[index + 1])
        return DayUse(
            day=day,
            bridge_used=counts[0],
            bridge_limit=bridge_limit,
            apps={a: (counts[i + 1], app_limits[a]) for i, a in enumerate(ids)},
        )
