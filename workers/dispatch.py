"""How the web role (and operators) hand runs to the workers."""

from __future__ import annotations

import functools
from urllib.parse import urlsplit

import anyio
import redis

from workers import runtime
from workers.celery_app import QUEUE, celery_app
from workers.redis_lane import RedisLane
from workers.runstore import RunRecord, RunStatus
from workers.scheduler import StepScheduler
from workers.settings import get_settings
from workers.step_queue import FirstStep, StepMessage, first_step, put_first_step, put_first_step_async
from workers.tasks import run_step, schedule


def enqueue_run(run_id: str) -> None:
    """Start a freshly recorded run."""
    schedule(run_id)


def enqueue_run_direct(run_id: str) -> None:
    """Start a freshly recorded run like `enqueue_run`, in one Redis round trip (`workers.step_queue`).

    Only where Celery's broker is the run store's Redis through kombu's plain Redis transport;
    any other broker (Sentinel, a key prefix) takes `apply_async`.
    """
    message = _direct_message()
    if message is None:
        schedule(run_id)
        return
    put_first_step(runtime.redis_client(), runtime.scheduler(), message, run_id)


class DirectEnqueue:
    """`enqueue_run_direct` for the webhook's event loop: the same message and MULTI, awaited.

    Its lane (`workers.redis_lane`) is made on first use, on the loop that awaits it; `close()` at shutdown.
    """

    def __init__(self) -> None:
        self._lane: RedisLane | None = None
        # What `prepare` found for the store client it was given (at the app's startup, or else on the
        # first `first_step`): the step message and the scheduler, or None when the queue is not in
        # that client's database (Celery's configuration costs microseconds per read and does not
        # change under a running web process).
        self._planned_for: redis.Redis | None = None
        self._plan: tuple[StepMessage, StepScheduler] | None = None

    async def __call__(self, run_id: str) -> None:
        message = _direct_message()
        if message is None:
            await anyio.to_thread.run_sync(schedule, run_id)
            return
        if self._lane is None:
            self._lane = RedisLane.like(runtime.redis_client())
        await put_first_step_async(self._lane, runtime.scheduler(), message, run_id)

    def prepare(self, store_client: redis.Redis) -> None:
        """Read the plan for `store_client` now (Celery's configuration, the scheduler): the first
        `first_step` would otherwise read it on the event loop, in the middle of a create."""
        if self._planned_for is not store_client:
            message = _direct_message()
            shared = message is not None and same_database(store_client, runtime.redis_client())
            self._plan = (message, runtime.scheduler()) if message is not None and shared else None
            self._planned_for = store_client

    def first_step(self, store_client: redis.Redis, run_id: str) -> FirstStep | None:
        """The run's first step for the run store's write to queue (`AsyncRunStore.complete_step`), when
        the queue is in the store's own database; None otherwise: then await the enqueue itself."""
        self.prepare(store_client)
        if self._plan is None:
            return None
        message, scheduler = self._plan
        return first_step(scheduler, message, run_id)

    async def close(self) -> None:
        if self._lane is not None:
            await self._lane.close()
            self._lane = None


def same_database(a: redis.Redis, b: redis.Redis) -> bool:
    """Both clients reach the same Redis database (same kind of connection, address and db number)."""
    pa, pb = a.connection_pool, b.connection_pool
    where = ("host", "port", "path", "db")
    return pa.connection_class is pb.connection_class and all(
        pa.connection_kwargs.get(name) == pb.connection_kwargs.get(name) for name in where
    )


def _direct_message() -> StepMessage | None:
    """Checked per call, like `apply_async` reads its configuration (tests and the demo move the broker)."""
    return _message_for(str(celery_app.conf.broker_url), get_settings().redis_url)


@functools.lru_cache(maxsize=4)
def _message_for(broker_url: str, store_url: str) -> StepMessage | None:
    options = celery_app.conf.broker_transport_options or {}
    plain = urlsplit(broker_url).scheme in ("redis", "rediss") and "global_keyprefix" not in options
    if not plain or broker_url != store_url:
        return None
    return StepMessage(
        queue=QUEUE,
        task=run_step.name,
        time_limit=run_step.time_limit,
        soft_time_limit=run_step.soft_time_limit,
        ignore_result=bool(run_step.ignore_result),
    )


def resume_point(record: RunRecord) -> RunStatus:
    """The first stage a failed run still has to do, from its checkpoints (nothing is redone)."""
    if record.job_id and record.summary is not None:
        return RunStatus.publishing
    if record.job_id:
        return RunStatus.waiting
    if record.upload_id and record.upload_complete:
        return RunStatus.submitting
    if record.outgoing_files:
        return RunStatus.uploading
    if record.staged_files:
        return RunStatus.deidentifying
    return RunStatus.downloading


def retry_run(run_id: str) -> RunStatus:
    """Re-drive a failed run from its last good checkpoint; returns the stage it restarts at."""
    store = runtime.context().store
    record = store.require(run_id)
    target = resume_point(record)
    store.transition(run_id, target, retry=True, attempts=0, error=None)
    store.append_event(run_id, "operator_retry", stage=target.value)
    schedule(run_id)
    return target


def cancel_run(run_id: str, note: str = "cancelled by an operator") -> None:
    store = runtime.context().store
    store.request_cancel(run_id, note)
    schedule(run_id)


def cancel_strand_job(job_id: str) -> None:
    """Cancel a Strand job whose run is being deleted, so its reserved credits are refunded.

    Raises the client's errors; the caller decides whether a failure matters.
    """
    runtime.context().strand().jobs.cancel(job_id)
