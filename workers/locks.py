"""A per-run lease in Redis, so two deliveries of the same step never work on one run at once.

The lease expires on its own if the worker dies (SIGKILL, OOM, node loss), and
a heartbeat thread extends it while a long step (a slide transfer) runs.
"""

from __future__ import annotations

import contextlib
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import redis

_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""
_EXTEND = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end
return 0
"""


@contextmanager
def run_lease(client: redis.Redis, key: str, ttl_seconds: float) -> Iterator[bool]:
    """Yield True while holding the lease, False when another worker holds it."""
    token = uuid.uuid4().hex
    ttl_ms = int(ttl_seconds * 1000)
    if not client.set(key, token, nx=True, px=ttl_ms):
        yield False
        return
    stop = threading.Event()

    def heartbeat() -> None:
        while not stop.wait(ttl_seconds / 3):
            try:
                client.eval(_EXTEND, 1, key, token, ttl_ms)
            except redis.RedisError:
                continue

    beat = threading.Thread(target=heartbeat, name=f"lease-{key}", daemon=True)
    beat.start()
    try:
        yield True
    finally:
        stop.set()
        beat.join(timeout=5)
        with contextlib.suppress(redis.RedisError):  # the lease expires on its own
            client.eval(_RELEASE, 1, key, token)
