"""The run store's three writes on the webhook's create path, for an asyncio Redis client.

A `create` creates and claims its run, then records the pending result Sectra stored.
Through the blocking `RunStore` each of those is a worker-thread hop, which under load
costs more than the Redis work itself. `AsyncRunStore` sends the very same scripts
with the same keys and arguments (`RunStore.*_call` builds them, so the two cannot
drift) over `redis.asyncio` on the event loop. Everything else stays on `RunStore`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import redis
import redis.asyncio
from typing_extensions import Unpack

from workers.runstore import (
    CLAIM_SCRIPT,
    CREATE_AND_CLAIM_SCRIPT,
    WRITE_SCRIPT,
    CreateAndClaimRequest,
    RunStore,
    StepClaim,
)

# What a blocking client's connection settings carry over to its asyncio twin.
_CARRIED = (
    "host",
    "port",
    "path",
    "db",
    "username",
    "password",
    "socket_timeout",
    "socket_connect_timeout",
    "socket_keepalive",
    "health_check_interval",
    "client_name",
    "ssl_keyfile",
    "ssl_certfile",
    "ssl_cert_reqs",
    "ssl_ca_certs",
    "ssl_ca_data",
    "ssl_check_hostname",
)
_CONNECTION_CLASSES: dict[type[Any], type[Any]] = {
    redis.connection.Connection: redis.asyncio.connection.Connection,
    redis.connection.SSLConnection: redis.asyncio.connection.SSLConnection,
    redis.connection.UnixDomainSocketConnection: redis.asyncio.connection.UnixDomainSocketConnection,
}


def asyncio_twin(client: redis.Redis) -> redis.asyncio.Redis:
    """An asyncio client of the same server, database and credentials as `client`.

    Built from `client`'s connection settings, so the webhook's two clients can never point at
    different servers; raises `TypeError` for a connection kind it does not know.
    """
    pool = client.connection_pool
    kind = _CONNECTION_CLASSES.get(pool.connection_class)
    if kind is None:
        raise TypeError(f"no asyncio counterpart for {pool.connection_class.__name__}")
    settings = {name: pool.connection_kwargs[name] for name in _CARRIED if name in pool.connection_kwargs}
    return redis.asyncio.Redis(
        connection_pool=redis.asyncio.ConnectionPool(connection_class=kind, **settings)
    )


def same_database(a: redis.Redis, b: redis.Redis) -> bool:
    """Both clients reach the same Redis database (same kind of connection, address and db number)."""
    pa, pb = a.connection_pool, b.connection_pool
    where = ("host", "port", "path", "db")
    return pa.connection_class is pb.connection_class and all(
        pa.connection_kwargs.get(name) == pb.connection_kwargs.get(name) for name in where
    )


class AsyncRunStore:
    """`create_and_claim`, `claim_step` and `complete_step` of `store`, awaited on `client`."""

    def __init__(self, store: RunStore, client: redis.asyncio.Redis) -> None:
        self._store = store
        self.client = client
        self._create_and_claim = client.register_script(CREATE_AND_CLAIM_SCRIPT)
        self._claim = client.register_script(CLAIM_SCRIPT)
        self._write = client.register_script(WRITE_SCRIPT)

    async def create_and_claim(self, **request: Unpack[CreateAndClaimRequest]) -> tuple[str, bool, StepClaim]:
        call = self._store.create_and_claim_call(**request)
        return call.outcome(await self._create_and_claim(keys=call.keys, args=call.args))

    async def claim_step(self, run_id: str, name: str, *, ttl_seconds: float, done_field: str) -> StepClaim:
        call = self._store.claim_step_call(run_id, name, ttl_seconds=ttl_seconds, done_field=done_field)
        if call is None:
            return StepClaim("gone")
        return call.outcome(await self._claim(keys=call.keys, args=call.args))

    async def complete_step(
        self,
        run_id: str,
        name: str,
        token: str,
        *,
        event: str,
        event_data: Mapping[str, Any],
        also: Callable[[redis.asyncio.client.Pipeline], bool] | None = None,
        **fields: Any,
    ) -> tuple[bool, bool]:
        """`RunStore.complete_step`: (recorded, `also`'s answer). `also(pipe)` may queue more writes in
        the same MULTI (the run's first step: one round trip, and the run is never recorded without
        it); it answers whether it did."""
        call = self._store.complete_step_call(
            run_id, name, token, event=event, event_data=event_data, **fields
        )
        if call is None:
            return False, False
        keys, args = call
        if also is None:
            return await self._write(keys=keys, args=args) is not None, False
        async with self.client.pipeline(transaction=True) as pipe:
            # EVAL, not EVALSHA: inside MULTI a missing script cannot be loaded and retried.
            pipe.eval(WRITE_SCRIPT, len(keys), *keys, *args)
            queued = also(pipe)
            replies = await pipe.execute()
        return replies[0] is not None, queued

    async def close(self) -> None:
        await self.client.aclose()
