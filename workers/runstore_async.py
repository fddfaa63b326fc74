"""The run store's three writes on the webhook's create path, awaited on the event loop.

A `create` creates and claims its run, then records the pending result Sectra stored.
Through the blocking `RunStore` each of those is a worker-thread hop, which under load
costs more than the Redis work itself. `AsyncRunStore` sends the very same scripts
with the same keys and arguments (`RunStore.*_call` builds them, so the two cannot
drift) over a `RedisLane` (`workers.redis_lane`); the pending result's record with the
run's first step goes as one script that runs `WRITE_SCRIPT`'s own function and then
the step's writes (`workers.step_queue.FIRST_STEP_LUA`), in one EVALSHA. Everything
else stays on `RunStore`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from typing_extensions import Unpack

from workers.redis_lane import LaneScript, RedisLane
from workers.runstore import (
    CLAIM_SCRIPT,
    CREATE_AND_CLAIM_SCRIPT,
    WRITE_FUNCTION,
    WRITE_SCRIPT,
    CreateAndClaimRequest,
    RunStore,
    StepClaim,
)
from workers.step_queue import FIRST_STEP_LUA, FirstStep

_CREATE_AND_CLAIM = LaneScript(CREATE_AND_CLAIM_SCRIPT)
_CLAIM = LaneScript(CLAIM_SCRIPT)
_WRITE = LaneScript(WRITE_SCRIPT)
# The write, then, only if the run still exists, the run's first step in the same atomic step. The
# step's values come first, so the write's own arguments are the rest as they are; its keys are
# declared in KEYS too, as Redis asks of every key a script touches. Each argument costs its packing
# and Redis its parsing, so the step's writes are in the script's text, not sent as command words.
# Sent again after its reply was lost (the lane resends once when its connection breaks), the write
# knows it (`again`: its claim's token is already recorded) and answers as the first did; the step is
# then not queued a second time either.
# KEYS: the write's keys (3 or 4), then the step's key and the queue.
# ARGV: the write's key count, the step's token, due time, TTL and message, then the write's arguments.
_WRITE_THEN_QUEUE = LaneScript(
    WRITE_FUNCTION
    + """
local n = tonumber(ARGV[1])
local written, again = write({unpack(KEYS, 1, n)}, {unpack(ARGV, 6)})
if not written or again then
  return written
end
"""
    + FIRST_STEP_LUA.format(
        key="KEYS[n + 1]",
        queue="KEYS[n + 2]",
        current="ARGV[2]",
        due_at="ARGV[3]",
        ttl="ARGV[4]",
        message="ARGV[5]",
    )
    + "return written\n"
)


class AsyncRunStore:
    """`create_and_claim`, `claim_step` and `complete_step` of `store`, awaited on `lane`."""

    def __init__(self, store: RunStore, lane: RedisLane) -> None:
        self._store = store
        self.lane = lane

    async def create_and_claim(self, **request: Unpack[CreateAndClaimRequest]) -> tuple[str, bool, StepClaim]:
        call = self._store.create_and_claim_call(**request)
        return call.outcome(await self.lane.evalsha(_CREATE_AND_CLAIM, call.keys, call.args))

    async def claim_step(self, run_id: str, name: str, *, ttl_seconds: float, done_field: str) -> StepClaim:
        call = self._store.claim_step_call(run_id, name, ttl_seconds=ttl_seconds, done_field=done_field)
        if call is None:
            return StepClaim("gone")
        return call.outcome(await self.lane.evalsha(_CLAIM, call.keys, call.args))

    async def complete_step(
        self,
        run_id: str,
        name: str,
        token: str,
        *,
        event: str,
        event_data: Mapping[str, Any],
        then_queue: FirstStep | None = None,
        **fields: Any,
    ) -> tuple[bool, bool]:
        """`RunStore.complete_step`: (recorded, `then_queue` queued). `then_queue`, the run's first
        step, is queued in the same atomic step, only if the run still exists (one round trip, and a run
        is never recorded without it nor queued once deleted)."""
        call = self._store.complete_step_call(
            run_id, name, token, event=event, event_data=event_data, **fields
        )
        if call is None:
            return False, False
        keys, args = call
        if then_queue is None:
            return await self.lane.evalsha(_WRITE, keys, args) is not None, False
        recorded = (
            await self.lane.evalsha(
                _WRITE_THEN_QUEUE, [*keys, *then_queue.keys], [len(keys), *then_queue.args, *args]
            )
            is not None
        )
        return recorded, recorded

    async def close(self) -> None:
        await self.lane.close()
