"""Turns for the writers of a run's one Sectra result, so no progress line replaces an outcome.

A run's result can have two writers at once: the step moving the slide posts
"Uploading 40 %" while a step woken by the pathologist's cancel posts
"Cancelled". Checking for a cancel before each progress update leaves a window
(the cancel lands between the check and the update), and Sectra's version
check orders the writes without knowing which one is the outcome. So every
write of the result holds one Redis lock per run, and a progress update, once
it holds it, goes out only if the run has neither ended nor been asked to stop.
The run's final status is stored before its final result is posted, so an
outcome posted under the lock is never followed by a progress line.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager, suppress

from redis.exceptions import LockError, RedisError

from workers.runstore import RunStore

log = logging.getLogger(__name__)

# Longer than one Sectra write with the client's own retries, so a live writer keeps its turn;
# a writer that died frees the lock when it expires.
_LOCK_SECONDS = 60.0


class RunResultGuard:
    """`sectra_adapter.PublishGuard` for one run, kept in the run store's Redis."""

    def __init__(self, store: RunStore, run_id: str, *, lock_seconds: float = _LOCK_SECONDS) -> None:
        self._store = store
        self._run_id = run_id
        self._lock_seconds = lock_seconds

    @contextmanager
    def hold(self) -> Iterator[object]:
        """Wait for the run's turn (at most `lock_seconds`); a writer that cannot get it writes anyway.

        Going ahead after the wait is the lesser harm: the outcome must reach the slide even if
        Redis is away or a stuck writer holds the lock, and the lock expires by then anyway.
        """
        lock = self._store.client.lock(
            f"{self._store.prefix}:run-result-lock:{self._run_id}",
            timeout=self._lock_seconds,
            blocking_timeout=self._lock_seconds,
            thread_local=False,
        )
        try:
            acquired = lock.acquire()
        except RedisError as exc:
            log.warning("no result lock; writing anyway", extra={"error_type": type(exc).__name__})
            acquired = False
        try:
            yield None
        finally:
            if acquired:
                # Expired meanwhile, or Redis went away: there is nothing left to free.
                with suppress(LockError, RedisError):
                    lock.release()

    def progress_allowed(self) -> bool:
        record = self._store.get(self._run_id)
        return record is not None and not record.is_final and not record.cancel_requested
