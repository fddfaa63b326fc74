"""The Sectra adapter's one retry layer (on tenacity): how often, how long to wait, what to log.

`sectra_adapter` may not import `strand_client` (the two clients know nothing of
each other), so it has its own, small layer over the same library and the same
policy: exponential backoff with full jitter, a server's `Retry-After` as a floor
(RFC 9110 section 10.2.3). Callers say which failures may be repeated.
"""

from __future__ import annotations

import email.utils
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import tenacity

from sectra_adapter._errors import safe_excerpt

logger = logging.getLogger("sectra_adapter")

T = TypeVar("T")

# 408/425 (request not processed), 429 (rate limited) and gateway/server trouble.
RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


@dataclass(frozen=True, slots=True)
class Backoff:
    """The policy for one call: `max_retries` repeats after the first try."""

    max_retries: int = 5
    base_delay: float = 0.5
    max_delay: float = 30.0

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds before retry `attempt` (1-based).

        Full jitter keeps workers that failed together from retrying together;
        `Retry-After` is honoured (capped, so a hostile value cannot park a worker for hours).
        """
        ceiling = min(self.max_delay, self.base_delay * (2 ** (attempt - 1)))
        jittered = random.uniform(0, ceiling)
        if retry_after is not None:
            return max(jittered, min(retry_after, self.max_delay * 4))
        return jittered

    def call(
        self,
        fn: Callable[[], T],
        retry_if: Callable[[BaseException], bool],
        *,
        what: str,
        sleep: Callable[[float], None] = time.sleep,
        attempts: int | None = None,
        wait: bool = True,
        before_retry: Callable[[BaseException], None] | None = None,
    ) -> T:
        """Call `fn` until it returns or raises something `retry_if` refuses; the last failure is re-raised.

        `attempts` overrides the policy's `max_retries + 1`; `wait=False` repeats at once (a reread
        after an optimistic-concurrency conflict needs no backoff). `before_retry` sees each failure
        that will be retried (to release what it holds).
        """
        total = attempts if attempts is not None else self.max_retries + 1

        def pause(state: tenacity.RetryCallState) -> float:
            if not wait:
                return 0.0
            error = state.outcome.exception() if state.outcome is not None else None
            hint = getattr(error, "retry_after", None)
            return self.delay(state.attempt_number, hint if isinstance(hint, int | float) else None)

        def log_retry(state: tenacity.RetryCallState) -> None:
            error = state.outcome.exception() if state.outcome is not None else None
            if error is not None and before_retry is not None:
                before_retry(error)
            logger.warning(
                "Sectra call failed; retrying",
                extra={
                    "call": what,
                    "reason": describe(error) if error is not None else "",
                    "attempt": state.attempt_number,
                    "delay_s": round(state.upcoming_sleep, 2),
                },
            )

        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception(retry_if),
            stop=tenacity.stop_after_attempt(total),
            wait=pause,
            sleep=sleep,
            before_sleep=log_retry,
            reraise=True,
        )
        return retrying(fn)


def describe(exc: BaseException) -> str:
    """Exception class and a short message: enough to diagnose; callers' messages are already safe."""
    text = safe_excerpt(str(exc))
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def parse_retry_after(value: str | None) -> float | None:
    """`Retry-After` in seconds (delta-seconds or HTTP date); None when absent or garbled."""
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
