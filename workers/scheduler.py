"""Scheduling the next step of a run so that exactly one chain of steps drives it.

Every scheduled step carries a fresh token stored in Redis; a step whose token
is no longer current (a redelivered message, a step superseded by recovery or
an operator retry) does nothing. Without this, recovery after a crash could
leave two chains polling the same job forever.
"""

from __future__ import annotations

import uuid

import redis


class StepScheduler:
    def __init__(self, client: redis.Redis, *, prefix: str = "bridge", ttl_seconds: int = 30 * 86400) -> None:
        self._redis = client
        self._prefix = prefix
        self._ttl = ttl_seconds

    def _key(self, run_id: str) -> str:
        return f"{self._prefix}:next-step:{run_id}"

    def new_token(self, run_id: str) -> str:
        token = uuid.uuid4().hex
        self._redis.set(self._key(run_id), token, ex=self._ttl)
        return token

    def is_current(self, run_id: str, token: str | None) -> bool:
        current = self._redis.get(self._key(run_id))
        if current is None:
            return True
        current_text = current.decode() if isinstance(current, bytes) else str(current)
        return token is not None and current_text == token

    def lease_key(self, run_id: str) -> str:
        return f"{self._prefix}:lease:{run_id}"

    def forget(self, run_id: str) -> None:
        self._redis.delete(self._key(run_id))
