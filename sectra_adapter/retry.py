"""How long to wait between attempts of an idempotent Sectra call.

`sectra_adapter` may not import `strand_client` (the two clients know nothing of
each other), so it keeps its own copy of the team's policy: exponential backoff
with full jitter, and a server's `Retry-After` as a floor.
"""

from __future__ import annotations

import email.utils
import random
import time
from dataclasses import dataclass

# 408/425 (request not processed), 429 (rate limited) and gateway/server trouble.
RETRYABLE_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


@dataclass(frozen=True, slots=True)
class Backoff:
    """Delay policy for one call; `max_retries` is read by the caller's loop."""

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
