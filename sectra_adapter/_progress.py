"""One Sectra result per run: created once, then updated in place with progress and the outcome.

Sectra versions results (optimistic concurrency): an update must carry the
current `versionId`. Another writer (a second worker after a crash, a retried
PUT whose first attempt landed, the pathologist) may have moved it on; the
publisher then rereads the result and applies its update on top, since the
latest state of the run is what the slide should show.

Several writers of one result may run at once: the step uploading a slide
posts its progress while another step, woken by a cancel, posts "Cancelled".
Sectra's version check orders their writes but cannot tell an outcome from a
progress line, and a reread-and-retry would put the stale progress on top. An
optional `PublishGuard` (the run store's, in `workers.result_guard`) makes
every write of the run's result take turns, and lets a progress update through
only while the run is still working, so no progress ever replaces an outcome.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Protocol

from sectra_client.schemas import AdaptedResult, Result, ResultResponse

from sectra_adapter._client import SectraAdapter
from sectra_adapter._errors import SectraError, SectraVersionConflict
from sectra_adapter._results import progress_result
from sectra_adapter._retry import Backoff

logger = logging.getLogger(__name__)

MAX_CONFLICT_RETRIES = 3
_REREAD = Backoff()


class PublishGuard(Protocol):
    """Who may write a run's result, and when (see the module docstring)."""

    def hold(self) -> AbstractContextManager[object]:
        """Held around every write of the run's result, by every writer of that run."""
        ...

    def progress_allowed(self) -> bool:
        """Whether a progress line may still be shown: the run has not ended or been cancelled."""
        ...


class ResultPublisher:
    """Keeps a run's single result on the slide current; `result_id`/`version_id` are for the run store."""

    def __init__(
        self,
        adapter: SectraAdapter,
        app_id: str,
        slide_id: str,
        app_version: str,
        *,
        result_id: int | None,
        version_id: str | None,
        min_interval: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        guard: PublishGuard | None = None,
    ) -> None:
        self._adapter = adapter
        self._app_id = app_id
        self._slide_id = slide_id
        self._app_version = app_version
        self._result_id = result_id
        self._version_id = version_id
        self._min_interval = min_interval
        self._clock = clock
        self._lock = threading.RLock()
        self._last_message: str | None = None
        self._last_sent: float | None = None
        self._guard = guard

    @property
    def result_id(self) -> int | None:
        return self._result_id

    @property
    def version_id(self) -> str | None:
        return self._version_id

    def ensure_created(self, result: Result) -> ResultResponse:
        """Create the run's result unless it exists; an existing one is reread for its current version."""
        with self._lock:
            if self._result_id is not None:
                return self._remember(self._adapter.get_result(self._app_id, self._result_id))
            return self._remember(self._adapter.create_results(self._app_id, result))

    def publish(self, result: Result) -> ResultResponse:
        """Replace the run's result with `result` (creating it if the run has none yet)."""
        with self._lock, self._hold():
            return self._publish(result)

    def _hold(self) -> AbstractContextManager[object]:
        return nullcontext() if self._guard is None else self._guard.hold()

    def _publish(self, result: Result) -> ResultResponse:
        with self._lock:
            if self._result_id is None:
                return self.ensure_created(result)
            result_id = self._result_id

            def attempt() -> ResultResponse:
                if self._version_id is None:
                    self._remember(self._adapter.get_result(self._app_id, result_id))
                assert self._version_id is not None
                update = AdaptedResult(**result.model_dump(), versionId=self._version_id)
                try:
                    return self._remember(self._adapter.update_results(self._app_id, result_id, update))
                except SectraVersionConflict:
                    logger.info("Sectra result changed meanwhile; rereading", extra={"result_id": result_id})
                    self._version_id = None
                    raise

            try:
                # A conflict is answered by rereading, at once: no backoff, a few attempts.
                return _REREAD.call(
                    attempt,
                    lambda exc: isinstance(exc, SectraVersionConflict),
                    what=f"update result {result_id}",
                    attempts=MAX_CONFLICT_RETRIES,
                    wait=False,
                )
            except SectraVersionConflict:
                raise SectraVersionConflict(
                    409,
                    f"/applications/{self._app_id}/results/{result_id}",
                    f"the result kept changing; gave up after {MAX_CONFLICT_RETRIES} attempts",
                ) from None

    def progress(self, message: str, force: bool = False) -> ResultResponse | None:
        """Show `message` as the run's status, unless it is unchanged or the last one was too recent.

        Best effort: progress is a courtesy to the pathologist, so a Sectra error
        is logged and swallowed (returns None) rather than failing the run.
        """
        with self._lock:
            now = self._clock()
            if not force and (
                message == self._last_message
                or (self._last_sent is not None and now - self._last_sent < self._min_interval)
            ):
                return None
            self._last_message, self._last_sent = message, now
            try:
                with self._hold():
                    if self._guard is not None and not self._guard.progress_allowed():
                        logger.info("the run has ended or is being cancelled; progress not posted")
                        return None
                    return self._publish(progress_result(self._slide_id, self._app_version, message))
            except SectraError as exc:
                logger.warning("could not post progress to Sectra: %s", exc)
                return None

    def _remember(self, response: ResultResponse) -> ResultResponse:
        self._result_id, self._version_id = response.id, response.versionId
        return response
