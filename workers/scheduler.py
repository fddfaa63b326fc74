"""Scheduling the next step of a run so that exactly one chain of steps drives it, when it said it would.

Every scheduled step carries a fresh token stored in Redis with the time it is
due; a step whose token is no longer current (a redelivered message, a step
superseded by recovery or an operator retry) does nothing. Without the token,
recovery after a crash could leave two chains polling the same job forever;
without the due time, recovery could not tell a run waiting out a 256 s
backoff (or a `Retry-After`) from a run whose worker died.

A worker marks the step's token started when it takes the run's lease. A step
that is overdue but was never started is, as a rule, still waiting in the
queue behind others; recovery leaves it there while the queue holds messages
(re-driving it would only queue a duplicate, and on a busy day one per run per
sweep). A started step whose lease lapsed had its worker die.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import redis

from workers.ids import random_token
from workers.redis_lane import CommandBatch


@dataclass(frozen=True, slots=True)
class ScheduledStep:
    token: str
    due_at: float
    started: bool = False  # a worker took this very step (not an earlier one of the run)


# `queue_new_token`'s writes in a Lua script, from `new_token_values` and `ttl_seconds`: a format whose
# fields (key, current: the token, due_at, ttl) are the script's expressions for them.
CURRENT_STEP_LUA = """redis.call('HSET', {key}, 'token', {current}, 'due_at', {due_at})
redis.call('EXPIRE', {key}, {ttl})
"""


class StepScheduler:
    def __init__(self, client: redis.Redis, *, prefix: str = "bridge", ttl_seconds: int = 30 * 86400) -> None:
        self._redis = client
        self._prefix = prefix
        self._ttl = ttl_seconds

    def _key(self, run_id: str) -> str:
        return f"{self._prefix}:step:{run_id}"

    def new_token(self, run_id: str, delay: float = 0.0) -> str:
        """Make a new step the run's only current one, due `delay` seconds from now."""
        with self._redis.pipeline(transaction=True) as pipe:
            token = self.queue_new_token(pipe, run_id, delay)
            pipe.execute()
        return token

    def queue_new_token(
        self, pipe: redis.client.Pipeline | CommandBatch, run_id: str, delay: float = 0.0
    ) -> str:
        """`new_token`'s writes, queued on the caller's MULTI or batch, so a message queued after them
        in the same atomic write can never be seen by a worker before its token is current."""
        key, token, due_at = self.new_token_values(run_id, delay)
        pipe.hset(key, mapping={"token": token, "due_at": due_at})
        pipe.expire(key, self._ttl)
        return token

    def new_token_values(self, run_id: str, delay: float = 0.0) -> tuple[str, str, str]:
        """What `queue_new_token` writes (the run's step key, a fresh token, its due time), for a script
        that writes it with `CURRENT_STEP_LUA`."""
        return self._key(run_id), random_token(), repr(time.time() + max(0.0, delay))

    @property
    def ttl_seconds(self) -> int:
        return self._ttl

    def current(self, run_id: str) -> ScheduledStep | None:
        return _step(self._redis.hmget(self._key(run_id), ["token", "due_at", "started"]))

    def mark_started(self, run_id: str, token: str) -> None:
        """A worker holds the run's lease for step `token`: it left the queue."""
        self._redis.hset(self._key(run_id), "started", token)

    def is_current(self, run_id: str, token: str | None) -> bool:
        current = self._redis.hget(self._key(run_id), "token")
        if current is None:
            return True
        return token is not None and _text(current) == token

    def held_and_current(self, run_ids: Sequence[str]) -> list[tuple[bool, ScheduledStep | None]]:
        """For each run: whether a worker holds its lease, and its current step; one round trip."""
        with self._redis.pipeline(transaction=False) as pipe:
            for run_id in run_ids:
                pipe.exists(self.lease_key(run_id))
                pipe.hmget(self._key(run_id), ["token", "due_at", "started"])
            replies = pipe.execute()
        return [(bool(held), _step(fields)) for held, fields in zip(replies[::2], replies[1::2], strict=True)]

    def lease_key(self, run_id: str) -> str:
        return f"{self._prefix}:lease:{run_id}"


def _step(fields: Sequence[object]) -> ScheduledStep | None:
    """A step from its hash's (token, due_at, started), as `HMGET` answers them."""
    token, due_at, started = fields
    if token is None or due_at is None:
        return None
    return ScheduledStep(_text(token), float(_text(due_at)), started is not None and started == token)


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
