"""The webhook's clients on the event loop: Redis for the create path, Sectra's result POST, the queue.

A `create` is two Redis round trips and one Sectra POST. Made from worker threads they
cost a thread hop each and httpx's machinery, several times the bare endpoint's own
CPU; made here, on the serving process's loop, they cost little more than the bytes
(`bench/webhook.py` measures both). The clients are made at startup (`LoopClients.prepare`,
from the app's lifespan), on the loop that uses them (each `serve --workers` process has its
own), and closed at shutdown.
Everything off the create path keeps the blocking clients in `ServiceState`.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
from prometheus_client import Counter

from sectra_adapter import AsyncResultPoster
from workers.dispatch import DirectEnqueue
from workers.observability import EXTERNAL_CALLS
from workers.redis_lane import RedisLane
from workers.runstore import RunStore
from workers.runstore_async import AsyncRunStore

# Per Sectra server, as for the blocking pool (`state.SECTRA_SERVER_LIMITS`): every connection kept
# open, since reconnecting under load costs more than an idle socket.
CONNECTIONS_PER_SERVER = 16
KEEPALIVE_SECONDS = 30.0


@functools.cache
def _sectra_calls(outcome: str) -> Counter:
    """The counter child of one outcome, looked up once (`labels()` takes a lock and builds a key on
    every call); outcomes are status codes and error names, a bounded set."""
    return EXTERNAL_CALLS.labels(service="sectra", outcome=outcome)


def _count_sectra_call(outcome: str) -> None:
    _sectra_calls(outcome).inc()


@dataclass
class LoopClients:
    """Made once per app (`create_app`); `enqueue` None: the app's blocking enqueue, in a thread."""

    store: RunStore
    sectra_timeout: float
    enqueue: DirectEnqueue | None = None
    _store: AsyncRunStore | None = field(default=None, init=False)
    _sectra: AsyncResultPoster | None = field(default=None, init=False)

    @property
    def runs(self) -> AsyncRunStore:
        if self._store is None:
            self._store = AsyncRunStore(self.store, RedisLane.like(self.store.client))
        return self._store

    @property
    def sectra(self) -> AsyncResultPoster:
        if self._sectra is None:
            self._sectra = AsyncResultPoster(
                # The trust of the blocking clients (httpx's defaults: certifi, SSL_CERT_FILE/DIR).
                ssl_context=httpx.create_ssl_context(),
                timeout=self.sectra_timeout,
                connections_per_server=CONNECTIONS_PER_SERVER,
                keepalive_seconds=KEEPALIVE_SECONDS,
                observe=_count_sectra_call,
            )
        return self._sectra

    @property
    def is_open(self) -> bool:
        """Some client was made and not closed yet."""
        return self._store is not None or self._sectra is not None

    def prepare(self) -> None:
        """Make the clients and read the queue's plan now, at startup, on the loop that will use them.

        Made on the first create instead, they held that create's event loop for ~25 ms (loading the
        CA bundle into the SSL context is ~20 ms of it), so every process's first create kept all its
        other requests waiting. Nothing here touches the network.
        """
        _ = self.runs, self.sectra
        if self.enqueue is not None:
            self.enqueue.prepare(self.store.client)

    async def record_and_enqueue(
        self, run_id: str, name: str, token: str, *, event: str, event_data: Mapping[str, Any], **fields: Any
    ) -> tuple[bool, bool]:
        """Complete the run's claimed step and, where the queue is in the store's database, queue its
        first step in the same atomic write. (recorded, queued): not recorded, the run was deleted
        meanwhile and nothing was queued; not queued (the app's own enqueue, or the queue is
        elsewhere), the caller enqueues it."""
        enqueue = self.enqueue
        return await self.runs.complete_step(
            run_id,
            name,
            token,
            event=event,
            event_data=event_data,
            then_queue=None if enqueue is None else enqueue.first_step(self.store.client, run_id),
            **fields,
        )

    async def close(self) -> None:
        if self._store is not None:
            await self._store.close()
            self._store = None
        if self._sectra is not None:
            await self._sectra.close()
            self._sectra = None
        if self.enqueue is not None:
            await self.enqueue.close()
