"""Backoff policy shared by every retried Strand call (API requests, upload PUTs, result reads).

Retries are only ever applied to idempotent steps; callers decide that, this
module only decides *how long* to wait: exponential backoff with full jitter,
never shorter than a server's `Retry-After`.
"""

from __future__ import annotations

import email.utils
import random
import time
from dataclasses import dataclass

RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How many times and how patiently to retry one idempotent call."""

    max_retries: int = 5
    base_delay: float = 0.5
    max_delay: float = 30.0

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to sleep before retry number `attempt` (1-based).

        Full jitter keeps a fleet of workers that failed together from retrying
        together; a server's `Retry-After` is a floor, not a suggestion.
        """
        ceiling = min(self.max_delay, self.base_delay * (2 ** (attempt - 1)))
        jittered = random.uniform(0, ceiling)
        if retry_after is not None:
            return max(jittered, min(retry_after, self.max_delay * 4))
        return jittered


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
