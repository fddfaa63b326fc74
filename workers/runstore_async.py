"""The run store's three writes on the webhook's create path, awaited on the event loop.

A `create` creates and claims its run, then records the pending result Sectra stored.
Through the blocking `RunStore` each of those is a worker-thread hop, which under load
costs more than the Redis work itself. `AsyncRunStore` sends the very same scripts
with the same keys and arguments (`RunStore.*_call` builds them, so the two cannot
drift) over a `RedisLane` (`workers.redis_lane`); the pending result's record with the
run's first step goes as `WRITE_THEN_SCRIPT`, which runs `WRITE_SCRIPT`'s own function and
then the step's commands, in one EVALSHA. Everything else stays on `RunStore`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from typing_extensions import Unpack

from workers.redis_lane import CommandBatch, LaneScript, RedisLane
from workers.runstore import (
    CLAIM_SCRIPT,
    CREATE_AND_CLAIM_SCRIPT,
    WRITE_SCRIPT,
    WRITE_THEN_SCRIPT,
    CreateAndClaimRequest,
    RunStore,
    StepClaim,
)

_CREATE_AND_CLAIM = LaneScript(CREATE_AND_CLAIM_SCRIPT)
_CLAIM = LaneScript(CLAIM_SCRIPT)
_WRITE = LaneScript(WRITE_SCRIPT)
_WRITE_THEN = LaneScript(WRITE_THEN_SCRIPT)


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
        also: Callable[[CommandBatch], bool] | None = None,
        **fields: Any,
    ) -> tuple[bool, bool]:
        """`RunStore.complete_step`: (recorded, `also`'s commands ran). `also(batch)` may add writes
        that run in the same atomic step, only if the run still exists (the run's first step: one
        round trip, and a run is never recorded without it nor queued once deleted); it answers
        whether it added any."""
        call = self._store.complete_step_call(
            run_id, name, token, event=event, event_data=event_data, **fields
        )
        if call is None:
            return False, False
        keys, args = call
        batch = CommandBatch()
        if also is None or not also(batch):
            return await self.lane.evalsha(_WRITE, keys, args) is not None, False
        packed: list[Any] = [len(keys), len(args), *args]
        for command in batch.commands:
            packed += (len(command), *command)
        recorded = await self.lane.evalsha(_WRITE_THEN, [*keys, *batch.keys], packed) is not None
        return recorded, recorded

    async def close(self) -> None:
        await self.lane.close()
