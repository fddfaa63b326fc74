"""Sectra's image `priority` as the Celery message priority of a run's steps (urgent cases first).

kombu's Redis transport emulates priorities with one list per priority step and BRPOPs the lists
in step order, so a LOWER number is taken FIRST (Celery docs, "Redis Message Priorities"; kombu
`redis.Channel._q_for_pri`). Sectra's IA-API gives `priority` as an integer on the image info
(`sectra_client.schemas.ImageMetadata.priority`, absent on older Sectra versions) without a
published scale; the bridge reads a larger number as more urgent and an absent one as routine
(README, "Priorities", has the table).

The first step of a run (reading the image info, then the download) is queued at `NORMAL`; the
image info read there decides the priority of every later step, including retries and recovery.
"""

from __future__ import annotations

import functools

import redis

# Celery setting `broker_transport_options["priority_steps"]`: one Redis list per step.
PRIORITY_STEPS = [0, 3, 6, 9]
URGENT, RAISED, NORMAL, LOW = PRIORITY_STEPS
# kombu's Redis transport names the list of step N `<queue>\x06\x16<N>` (step 0: the bare name).
_SEPARATOR = "\x06\x16"


def celery_priority(sectra_priority: int | None) -> int:
    """Sectra image priority -> Celery message priority (README "Priorities")."""
    if sectra_priority is None or sectra_priority == 0:
        return NORMAL
    if sectra_priority >= 2:
        return URGENT
    if sectra_priority == 1:
        return RAISED
    return LOW


@functools.lru_cache(maxsize=64)
def queue_key(queue: str, priority: int) -> str:
    """The Redis list kombu's Redis transport keeps messages of `priority` in (`_q_for_pri`); worked
    out once per queue and priority (the webhook asks on every create)."""
    step = max(s for s in PRIORITY_STEPS if s <= max(priority, 0))
    return f"{queue}{_SEPARATOR}{step}" if step else queue


def queue_keys(queue: str) -> list[str]:
    """Every list of the queue, in the order a worker takes from them."""
    return [queue_key(queue, step) for step in PRIORITY_STEPS]


class RunPriorities:
    """Each run's Celery priority, kept beside the run so every later step is queued at it."""

    def __init__(self, client: redis.Redis, *, prefix: str = "bridge", ttl_seconds: int = 30 * 86400) -> None:
        self._redis = client
        self._prefix = prefix
        self._ttl = ttl_seconds

    def _key(self, run_id: str) -> str:
        return f"{self._prefix}:priority:{run_id}"

    def remember(self, run_id: str, priority: int) -> None:
        self._redis.set(self._key(run_id), str(priority), ex=self._ttl)

    def of(self, run_id: str) -> int:
        """The run's priority; `NORMAL` until its image info has been read."""
        value = self._redis.get(self._key(run_id))
        return NORMAL if value is None else int(value)
