"""What each IA-API action does: create (and newImageFiles) start a run; cancel, modify, delete touch one.

Idempotency is the heart of `create`: Sectra retries, sometimes ten at once.
The run id derives from (app, slide, cancellationToken), or (app, slide) for a
case-scope app (`workers.case.run_token`), so every copy finds the same record;
a short lease in Redis lets exactly one of them store the pending result in
Sectra and enqueue the run, and the others wait for that result and answer
with it. If the holder dies, its lease expires and a later copy takes over;
if Sectra refuses, the run is deleted so no copy is left holding a
half-created run.

A region app (`input: taggedPolygon` or `multiArea`) takes only that input: the
drawn region's content is kept in the run as Sectra sent it, and the pending
result frames it ("Queued") so the pathologist sees where the work will be.

Functions named `*_sync` block (Redis, Sectra) and run in a worker thread; the create path
runs on the event loop (`service.loop_clients`).
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import time
from collections.abc import Coroutine
from typing import Any

import anyio
from prometheus_client import Counter
from sectra_client.schemas import (
    CancelInvocation,
    CreateInvocation,
    DeleteInvocation,
    ModifyInvocation,
    NewImageFilesInvocation,
    Result,
    ResultResponse,
)

from sectra_adapter import (
    NotSent,
    SectraError,
    SectraRequestFailed,
    SectraUnavailable,
    StoredResult,
    normalise_base_url,
    pending_result,
    pending_result_json,
    results_path,
)
from service.errors import SECTRA_RETRY_AFTER_SECONDS, ApiError, unavailable
from service.sectra_link import adapter_for
from service.state import ServiceState
from workers.apps import AppConfig
from workers.case import run_token
from workers.dispatch import cancel_strand_job
from workers.ids import is_run_id
from workers.observability import RUNS_STARTED, run_context
from workers.runstore import ModelJson, RunNotFound, RunRecord, RunSource
from workers.sectra_progress import Frame, region_input_frame

log = logging.getLogger(__name__)

PENDING_LEASE = "pending-result"
# Longer than the webhook's Sectra call can take (timeout x retries), so a live holder never loses it.
PENDING_LEASE_SECONDS = 60.0
DUPLICATE_WAIT_SECONDS = 10.0
MODIFY_AUDIT_MAX_BYTES = 64 * 1024
# A stored result as the answer's JSON, spelled as Starlette's `JSONResponse` spells it.
_ANSWER = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))
# The input a record holds when it names none (`input_type`'s default).
_WHOLE_SLIDE = RunRecord.model_fields["input_type"].default


async def start_run(
    state: ServiceState,
    app: AppConfig,
    invocation: CreateInvocation | NewImageFilesInvocation,
    source: RunSource,
) -> str:
    """The pending result stored in Sectra for this invocation (JSON text), creating the run if it is new.

    On the event loop throughout (`service.loop_clients`); only a fallback or a failure takes a thread.
    """
    check_input(app, invocation)
    runs = state.loop.runs
    # The record and the pending-result lease in one Redis round trip (`RunStore.create_and_claim`).
    run_id, created, claim = await runs.create_and_claim(
        app_id=app.id,
        slide_id=invocation.slideId,
        cancellation_token=run_token(app, invocation.cancellationToken),
        callback_url=invocation.callbackInfo.url,
        callback_token=invocation.callbackInfo.token,
        source=source,
        step=PENDING_LEASE,
        ttl_seconds=PENDING_LEASE_SECONDS,
        done_field="pending_result",
    )
    with run_context(run_id=run_id, app=app.id):
        if not created:
            log.info("duplicate invocation; answering with the run's pending result")
        deadline = time.monotonic() + DUPLICATE_WAIT_SECONDS
        pause = 0.02
        while True:
            if claim.outcome == "done":
                return _ANSWER.encode(claim.value)
            if claim.outcome == "claimed":
                assert claim.token is not None
                return await _finished_even_if_cancelled(
                    _store_pending(state, app, invocation, run_id, source, claim.token)
                )
            if claim.outcome == "gone":
                raise unavailable(
                    "sectra_unavailable",
                    "an identical invocation could not store its pending result in Sectra; retry later",
                    SECTRA_RETRY_AFTER_SECONDS,
                )
            if time.monotonic() >= deadline:
                raise ApiError(
                    503,
                    "still_processing",
                    "an identical invocation is still being processed; retry shortly",
                    headers={"Retry-After": "2"},
                )
            await anyio.sleep(pause)
            pause = min(pause * 2, 0.25)
            claim = await runs.claim_step(
                run_id, PENDING_LEASE, ttl_seconds=PENDING_LEASE_SECONDS, done_field="pending_result"
            )


# The creates whose pending result is being stored, each in a task of its own (kept here: the loop
# holds its tasks only weakly).
_STORING: set[asyncio.Task[Any]] = set()


async def _finished_even_if_cancelled(work: Coroutine[Any, Any, str]) -> str:
    """`await work`, run to its end even if this request is cancelled meanwhile.

    Once the lease is ours, the result is stored and recorded (or the run discarded) whatever
    happens to the request, as a worker thread would: a create cut off between Sectra's POST and
    the record would leave a result in Sectra that no run updates. So the work is a task of its
    own behind `asyncio.shield`; a cancelled request stops waiting for it, and only that.
    (`anyio.CancelScope(shield=True)` would not do: it stops anyio's own cancellation but not a
    plain `Task.cancel()`, which is how asyncio servers and clients cancel a request.)
    """
    task = asyncio.get_running_loop().create_task(work)
    _STORING.add(task)
    task.add_done_callback(_STORING.discard)
    return await asyncio.shield(task)


def check_input(app: AppConfig, invocation: CreateInvocation | NewImageFilesInvocation) -> None:
    """Refuse (422, naming the field) an input the app does not take: a region app needs its region,
    and a whole-slide app must not quietly analyse the whole slide for a region that was drawn."""
    given = invocation.input.type.value
    if given != app.input:
        raise ApiError(
            422,
            "invalid_invocation",
            f"field 'input.type' must be {app.input!r} for app {app.id!r}; got {given!r}",
        )


def _input_fields(invocation: CreateInvocation | NewImageFilesInvocation) -> dict[str, Any]:
    """What the run keeps of the input: its type, and a region's content exactly as Sectra sent it;
    nothing for a whole slide, which is what a record without them says (`RunRecord`'s defaults)."""
    kind = invocation.input.type.value
    # Read from the model's fields (a whole-slide input has no `content`; getattr's miss costs pydantic
    # an exception).
    content = vars(invocation.input).get("content")
    if content is None and kind == _WHOLE_SLIDE:
        return {}
    region = content.model_dump(mode="json") if content is not None else None
    return {"input_type": kind, "region_input": region}


async def _store_pending(
    state: ServiceState,
    app: AppConfig,
    invocation: CreateInvocation | NewImageFilesInvocation,
    run_id: str,
    source: RunSource,
    lease: str,
) -> str:
    """Store the pending result in Sectra, save it in the run, and enqueue the run: in that order.

    The worker updates this very result later, so it must be saved before the run is enqueued.
    """
    inputs = _input_fields(invocation)
    # A region is framed where it was drawn; a whole slide's size is not known yet (no frame until then).
    frame = region_input_frame(inputs.get("region_input")) or None
    try:
        stored = await _create_in_sectra(state, app, invocation, frame)
    except BaseException as exc:
        # Never leave a run without a pending result: a retry starts afresh.
        await anyio.to_thread.run_sync(_discard_sync, state, run_id, lease)
        if not isinstance(exc, SectraError):
            raise
        log.warning("could not store the pending result in Sectra; run discarded", extra={"reason": str(exc)})
        raise _sectra_refusal(exc) from None
    # The stored result's JSON as Sectra answered it: the answer to this invocation and the run's copy.
    body, result = stored.json, stored.result
    # The run's result and (where the queue shares the store's database) its first step, in one write.
    recorded, queued = await state.loop.record_and_enqueue(
        run_id,
        PENDING_LEASE,
        lease,
        event="created",
        event_data={"source": source, "sectra_result_id": result.id},
        pending_result=ModelJson(body),
        sectra_result_id=result.id,
        sectra_version_id=result.versionId,
        message=result.displayResult,
        # In the write that makes the run visible to workers (the enqueue comes with or after it), so
        # no worker ever sees a region run without its region; `create_and_claim` takes no fields.
        **inputs,
    )
    if not recorded:
        # Deleted (an operator, a `delete` invocation) while its result was being stored: nothing is
        # queued for it, and the answer is still the result Sectra holds.
        log.warning("the run was deleted while its pending result was stored; not started")
        return body
    _runs_started(app.id).inc()
    if not queued:
        await _enqueue(state, run_id)
    log.info("run created", extra={"source": source, "sectra_result_id": result.id})
    return body


@functools.cache
def _runs_started(app_id: str) -> Counter:
    """The counter child of one app, looked up once (the apps are the configured few)."""
    return RUNS_STARTED.labels(app=app_id)


async def _enqueue(state: ServiceState, run_id: str) -> None:
    """The run's first step, when it did not go with the record: the default enqueue awaited, or the
    app's own (tests, the demo) in a thread; a failure leaves the run to the recovery sweep."""
    try:
        if state.loop.enqueue is not None:
            await state.loop.enqueue(run_id)
        else:
            await anyio.to_thread.run_sync(state.enqueue, run_id)
    except Exception as exc:
        # The run is recorded with its result; the workers' recovery sweep re-drives it.
        log.error(
            "could not enqueue the run; recovery will pick it up", extra={"error_type": type(exc).__name__}
        )
        event = functools.partial(state.store.append_event, run_id, "enqueue_failed")
        await anyio.to_thread.run_sync(functools.partial(event, error_type=type(exc).__name__))


async def _create_in_sectra(
    state: ServiceState,
    app: AppConfig,
    invocation: CreateInvocation | NewImageFilesInvocation,
    frame: Frame | None,
) -> StoredResult:
    """The pending result's POST on the loop; through `SectraAdapter` (retries, token renewal) when
    it certainly stored nothing: the adapter may still succeed, or names what went wrong."""
    callback = invocation.callbackInfo
    base_url = normalise_base_url(callback.url, state.settings.allow_http)
    body = pending_result_json(invocation.slideId, app.version, frame=frame)
    try:
        return await state.loop.sectra.create_results(
            base_url, callback.token, body, path=results_path(app.id)
        )
    except NotSent:
        pending = pending_result(invocation.slideId, app.version, frame=frame)
        stored = await anyio.to_thread.run_sync(_create_with_adapter, state, app, invocation, pending)
        return StoredResult(stored, stored.model_dump_json())


def _create_with_adapter(
    state: ServiceState,
    app: AppConfig,
    invocation: CreateInvocation | NewImageFilesInvocation,
    pending: Result,
) -> ResultResponse:
    with adapter_for(state, invocation.callbackInfo.url, invocation.callbackInfo.token, app.id) as sectra:
        return sectra.create_results(app.id, pending)


def _discard_sync(state: ServiceState, run_id: str, lease: str) -> None:
    state.store.delete(run_id)
    state.store.release_lease(run_id, PENDING_LEASE, lease)


def _sectra_refusal(exc: SectraError) -> ApiError:
    """503 with `Retry-After` when Sectra is down or overloaded (a retry may succeed), else 502."""
    message = f"could not store the pending result in Sectra: {exc}"
    status = exc.status_code if isinstance(exc, SectraRequestFailed) else None
    if isinstance(exc, SectraUnavailable) or (status is not None and (status >= 500 or status in (408, 429))):
        return unavailable("sectra_unavailable", message, SECTRA_RETRY_AFTER_SECONDS)
    return ApiError(502, "sectra_refused", message)


def cancel_sync(state: ServiceState, app: AppConfig, invocation: CancelInvocation) -> str:
    """Flag the run; the worker stops at its next checkpoint and writes the cancelled result."""
    run_id = state.store.find(app.id, invocation.slideId, run_token(app, invocation.cancellationToken))
    if run_id is None:
        log.info("cancel for an unknown run; acknowledged", extra={"app": app.id})
        return "no run matches this invocation; nothing to cancel"
    with run_context(run_id=run_id, app=app.id):
        try:
            record = state.store.request_cancel(run_id, "cancelled in Sectra")
        except RunNotFound:
            return "no run matches this invocation; nothing to cancel"
        if record.is_final:
            log.info("cancel for a finished run; acknowledged", extra={"status": record.status.value})
            return f"the run has already {record.status.value}"
        try:
            # A new step supersedes a run's scheduled one, so a run waiting on Strand notices at once.
            state.enqueue(run_id)
        except Exception as exc:
            # The flag is stored: the run's own next step (or the recovery sweep) still finds it.
            log.error("could not wake the run to cancel it", extra={"error_type": type(exc).__name__})
        log.info("cancellation requested")
        return "cancellation requested"


def modify_sync(state: ServiceState, app: AppConfig, invocation: ModifyInvocation) -> dict[str, Any]:
    """The answer to `modify`: the stored hotspot gallery after its review, else `{"note": ...}`.

    A modify of a run's gallery (`workers.review`) recomputes the figures without the
    patches tagged Artefact and answers with the gallery Sectra now stores; any other
    modify (the pathologist edited a result) only goes into the run's audit trail.
    """
    # Imported here so this function's edit stays self-contained; `workers.review` is web-safe.
    from workers import review as hotspot_review

    store = state.store
    # The result Sectra names decides for a gallery (its modify need not carry the create's token).
    run_id = hotspot_review.find_gallery_run(store, app.id, invocation.input.id) or store.find(
        app.id, invocation.slideId, run_token(app, invocation.cancellationToken)
    )
    if run_id is None:
        log.info("modify for an unknown run; acknowledged", extra={"app": app.id})
        return {"note": "no run matches this invocation; modification not recorded"}
    record = store.get(run_id)
    if (
        record is not None
        and record.review_result_id is not None
        and record.review_result_id == invocation.input.id
        and record.slide_id == invocation.slideId
    ):
        with run_context(run_id=run_id, app=app.id):
            try:
                with adapter_for(
                    state, invocation.callbackInfo.url, invocation.callbackInfo.token, app.id
                ) as sectra:
                    stored = hotspot_review.apply_review(store, app, record, sectra, invocation.input)
            except hotspot_review.MalformedReview as exc:
                raise ApiError(422, "malformed_review", str(exc)) from None
            except hotspot_review.ReviewUnavailable as exc:
                raise ApiError(409, "review_unavailable", str(exc)) from None
            except hotspot_review.ReviewBusy as exc:
                raise ApiError(503, "review_in_progress", str(exc), headers={"Retry-After": "2"}) from None
            except SectraError as exc:
                log.warning("could not apply the hotspot review in Sectra", extra={"reason": str(exc)})
                message = f"could not apply the hotspot review in Sectra: {exc}"
                status = exc.status_code if isinstance(exc, SectraRequestFailed) else None
                if isinstance(exc, SectraUnavailable) or (
                    status is not None and (status >= 500 or status in (408, 409, 429))
                ):
                    raise unavailable("sectra_unavailable", message, SECTRA_RETRY_AFTER_SECONDS) from None
                raise ApiError(502, "sectra_refused", message) from None
        return stored.model_dump(mode="json")
    return {"note": _record_modify(state, app, invocation, run_id)}


def _record_modify(state: ServiceState, app: AppConfig, invocation: ModifyInvocation, run_id: str) -> str:
    body = invocation.model_dump(mode="json", exclude={"callbackInfo": {"token"}, "cancellationToken": True})
    encoded = json.dumps(body, separators=(",", ":"))
    if len(encoded) > MODIFY_AUDIT_MAX_BYTES:
        body = {
            "resultId": invocation.input.id,
            "versionId": invocation.input.versionId,
            "displayResult": invocation.input.displayResult,
            "truncated": True,
            "bytes": len(encoded),
        }
    with run_context(run_id=run_id, app=app.id):
        if state.store.append_event(run_id, "modified_in_sectra", body=body) is None:
            return "no run matches this invocation; modification not recorded"
        log.info("modification recorded in the audit trail")
    return "modification recorded"


def delete_sync(state: ServiceState, app: AppConfig, invocation: DeleteInvocation) -> str:
    """Remove the run's record and audit trail; the workers remove its slide files."""
    store = state.store
    run_id = None
    if invocation.cancellationToken:
        run_id = store.find(app.id, invocation.slideId, run_token(app, invocation.cancellationToken))
    if run_id is None:
        run_id = store.find_by_result(app.id, invocation.input.id)
    if run_id is None or not is_run_id(run_id):
        log.info("delete for an unknown run; acknowledged", extra={"app": app.id})
        return "no run matches this result; nothing to delete"
    with run_context(run_id=run_id, app=app.id):
        record = store.get(run_id)
        if record is not None and record.job_id and record.reused_job is None and not record.is_final:
            # Nobody will read this job's result: cancel it first so its reservation is refunded. (A run
            # that reads an earlier job's results has no job of its own: that job is never cancelled.)
            try:
                cancel_strand_job(record.job_id)
                log.info("Strand job cancelled before deleting the run")
            except Exception as exc:
                log.warning(
                    "could not cancel the Strand job of a deleted run",
                    extra={"error_type": type(exc).__name__},
                )
        # A worker still on this run finds the record gone at its next checkpoint and stops. The web
        # role never touches slide files (they are on the workers' volumes): each worker's janitor, or
        # the run's next step, removes them (`workers.janitor`).
        store.delete(run_id)
        log.info("run deleted")
    return "run deleted"
