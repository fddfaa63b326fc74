"""The Strand client's one retry layer (on tenacity): which failures, how often, how long to wait.

Every retried Strand call (API requests, upload chunks, the job stream, result
reads) goes through `RetryPolicy.retrying` / `call` / `acall`; the callers only
say *which* failures may be repeated, because that depends on the call (a
timeout on `GET /jobs/{id}` is simply repeated, a timeout on `POST /predict`
may have created a job that costs credits). Waits are exponential with full
jitter, and never shorter than a server's `Retry-After` (RFC 9110 section 10.2.3).
"""

from __future__ import annotations

import email.utils
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import httpx
import tenacity

log = logging.getLogger("strand_client")

T = TypeVar("T")

# 408/425 (not processed), 429 (rate limited) and gateway or server trouble.
RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


class RetryableAnswer(Exception):
    """The server answered with a status worth repeating the request for; carries that answer.

    Its body is read (the connection is back in the pool); when the retries are
    spent the caller maps `response` like any other answer.
    """

    def __init__(self, response: httpx.Response) -> None:
        super().__init__(f"HTTP {response.status_code}")
        self.response = response
        self.retry_after = parse_retry_after(response.headers.get("Retry-After"))


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How many times and how patiently to retry one call (`max_retries` repeats after the first try)."""

    max_retries: int = 5
    base_delay: float = 0.5
    max_delay: float = 30.0

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to sleep before retry number `attempt` (1-based).

        Full jitter keeps a fleet of workers that failed together from retrying
        together; a server's `Retry-After` is a floor, capped so a hostile value
        cannot park a worker for hours.
        """
        ceiling = min(self.max_delay, self.base_delay * (2 ** (attempt - 1)))
        jittered = random.uniform(0, ceiling)
        if retry_after is not None:
            return max(jittered, min(retry_after, self.max_delay * 4))
        return jittered

    def retrying(
        self,
        retry_if: Callable[[BaseException], bool],
        *,
        what: str,
        deadline: float | None = None,
        failures: Callable[[], int] | None = None,
    ) -> tenacity.Retrying:
        """A tenacity controller for one call; the last failure is re-raised when retries are spent.

        `deadline` (monotonic) caps every wait. `failures` counts the failures
        that matter when some attempts made progress (the job stream: a
        connection that delivered events starts a fresh count); default: every attempt.
        """
        stop, wait, before_sleep = self._rules(what, deadline, failures)
        return tenacity.Retrying(
            retry=tenacity.retry_if_exception(retry_if),
            stop=stop,
            wait=wait,
            before_sleep=before_sleep,
            reraise=True,
        )

    def call(self, fn: Callable[[], T], retry_if: Callable[[BaseException], bool], *, what: str) -> T:
        return self.retrying(retry_if, what=what)(fn)

    async def acall(
        self, fn: Callable[[], Awaitable[T]], retry_if: Callable[[BaseException], bool], *, what: str
    ) -> T:
        stop, wait, before_sleep = self._rules(what, None, None)
        retrying = tenacity.AsyncRetrying(
            retry=tenacity.retry_if_exception(retry_if),
            stop=stop,
            wait=wait,
            before_sleep=before_sleep,
            reraise=True,
        )
        return await retrying(fn)

    def _rules(
        self, what: str, deadline: float | None, failures: Callable[[], int] | None
    ) -> tuple[
        Callable[[tenacity.RetryCallState], bool],
        Callable[[tenacity.RetryCallState], float],
        Callable[[tenacity.RetryCallState], None],
    ]:
        """When to stop, how long to wait, what to log: the same for every call of this client."""

        def count(state: tenacity.RetryCallState) -> int:
            return failures() if failures is not None else state.attempt_number

        def wait(state: tenacity.RetryCallState) -> float:
            delay = self.delay(count(state), _retry_after(state))
            if deadline is not None:
                delay = min(delay, max(0.0, deadline - time.monotonic()))
            return delay

        def before_sleep(state: tenacity.RetryCallState) -> None:
            error = state.outcome.exception() if state.outcome is not None else None
            log.warning(
                "Strand call failed, retrying",
                extra={
                    "call": what,
                    "reason": type(error).__name__ if not isinstance(error, RetryableAnswer) else str(error),
                    "attempt": count(state),
                    "delay_s": round(state.upcoming_sleep, 3),
                },
            )

        def stop(state: tenacity.RetryCallState) -> bool:
            return count(state) > self.max_retries

        return stop, wait, before_sleep


def _retry_after(state: tenacity.RetryCallState) -> float | None:
    error = state.outcome.exception() if state.outcome is not None else None
    value = getattr(error, "retry_after", None)
    return value if isinstance(value, int | float) else None


def parse_retry_after(value: str | None) -> float | None:
    """`Retry-After` as seconds: either delta-seconds or an HTTP date; None when absent or garbled."""
    if value is None:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())
