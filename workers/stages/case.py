"""Case steps of a `scope: case` app: list the case and start a run per H&E slide; keep the summary current.

Both run as their own Celery tasks (`workers.tasks`), outside the webhook, and
under one lock per case, so a repeated fan-out or two refreshes at once cannot
race on the plan or on the summary's version in Sectra. Each is safe to
repeat: a sibling's run is created once (its id is its app and slide), its
pending result is stored by whoever claims it first (`RunStore.create_and_claim`,
as the webhook does), and the summary is recomputed from the runs each time.
"""

from __future__ import annotations

import logging

from sectra_adapter import (
    ResultPublisher,
    SectraAdapter,
    SectraError,
    api_version_at_least,
    check_stain,
    pending_result,
)
from workers.case import (
    CASE_LISTING_API,
    CASE_RUN_TOKEN,
    CaseIndex,
    CasePlan,
    CaseSlide,
    case_slide,
    summary_result,
)
from workers.context import PipelineContext
from workers.runstore import RunRecord, run_id_for

log = logging.getLogger(__name__)

PENDING_LEASE = "pending-result"  # the webhook's lease name: a create on a sibling meanwhile waits for ours
_PENDING_LEASE_SECONDS = 60.0


class SiblingBusy(RuntimeError):
    """Another holder is storing a sibling's pending result; the fan-out is repeated shortly."""


def fan_out(ctx: PipelineContext, cases: CaseIndex, root: RunRecord) -> list[str]:
    """List the root's case, start a run per H&E sibling, post the first summary; returns the runs to start.

    Below IA-API 1.9 the case cannot be listed: the plan is the invoked slide alone, and the
    summary says so.
    """
    app = ctx.app(root)
    started: list[str] = []
    with ctx.sectra(root) as sectra:
        api_version = sectra.version_info.apiVersion
        if api_version_at_least(api_version, CASE_LISTING_API):
            slides = _list_case(sectra, root, app.slide_gate.stain_patterns)
            fallback = None
        else:
            slides = [CaseSlide(slide_id=root.slide_id, block="", run_id=root.run_id)]
            fallback = (
                f"This Sectra (IA-API {api_version}) cannot list the slides of a case "
                "(IA-API 1.9 or later is needed); only this slide was analysed"
            )
        for slide in slides:
            sibling = slide.run_id is not None and slide.run_id != root.run_id
            if sibling and _start_sibling(ctx, root, sectra, slide.slide_id, str(slide.run_id)):
                started.append(str(slide.run_id))
        previous = cases.get(root.run_id)
        plan = CasePlan(
            root_run_id=root.run_id,
            app_id=root.app_id,
            slide_id=root.slide_id,
            slides=slides,
            fallback=fallback,
            result_id=previous.result_id if previous else None,
            version_id=previous.version_id if previous else None,
        )
        # Watched before the summary reads the runs: a run that ends from here on refreshes it.
        cases.watch(root.run_id, [s.run_id for s in plan.analysed if s.run_id])
        cases.save(plan)
        _publish(ctx, cases, sectra, plan)
    ctx.store.append_event(
        root.run_id, "case_listed", slides=len(slides), analysed=len(plan.analysed), started=len(started)
    )
    return started


def refresh(ctx: PipelineContext, cases: CaseIndex, root_run_id: str) -> bool:
    """Rewrite the case summary from its runs' records; False when the case (or its root) is gone."""
    plan = cases.get(root_run_id)
    root = ctx.store.get(root_run_id)
    if plan is None or root is None:
        return False
    with ctx.sectra(root) as sectra:
        _publish(ctx, cases, sectra, plan)
    return True


def _list_case(sectra: SectraAdapter, root: RunRecord, stain_patterns: list[str]) -> list[CaseSlide]:
    """The case's slides; the H&E ones (the slide gate's stain check) get a run id."""
    slides: list[CaseSlide] = []
    for info in sectra.get_case_image_infos(root.slide_id):
        refusal = check_stain(info.staining.displayName, stain_patterns)
        run_id = None if refusal else run_id_for(root.app_id, info.id, CASE_RUN_TOKEN)
        slides.append(case_slide(info, run_id, refusal))
    if not any(s.slide_id == root.slide_id for s in slides):
        # Sectra's list left the invoked slide out; it is analysed all the same (its run exists).
        slides.insert(0, CaseSlide(slide_id=root.slide_id, block="", run_id=root.run_id))
    return slides


def _start_sibling(
    ctx: PipelineContext, root: RunRecord, sectra: SectraAdapter, slide_id: str, run_id: str
) -> bool:
    """Create a sibling's run with its pending result in Sectra; False when the run already existed."""
    app = ctx.app(root)
    made_id, created, claim = ctx.store.create_and_claim(
        app_id=root.app_id,
        slide_id=slide_id,
        cancellation_token=CASE_RUN_TOKEN,
        callback_url=root.callback_url,
        callback_token=root.callback_token,
        source="case",
        step=PENDING_LEASE,
        ttl_seconds=_PENDING_LEASE_SECONDS,
        done_field="pending_result",
    )
    assert made_id == run_id
    if claim.outcome == "done":
        if created:  # cannot happen (a new run has no output); kept loud rather than silent
            raise RuntimeError("a new sibling run already had a pending result")
        ctx.store.append_event(run_id, "case_reused", root_run_id=root.run_id)
        return False
    if claim.outcome != "claimed":
        raise SiblingBusy(run_id)
    assert claim.token is not None
    try:
        stored = sectra.create_results(root.app_id, pending_result(slide_id, app.version))
    except BaseException as exc:
        ctx.store.delete(run_id)  # as the webhook does: never a run without its pending result
        ctx.store.release_lease(run_id, PENDING_LEASE, claim.token)
        if isinstance(exc, SectraError):
            log.warning("could not store a sibling's pending result", extra={"run_id": run_id})
        raise
    ctx.store.complete_step(
        run_id,
        PENDING_LEASE,
        claim.token,
        event="created",
        event_data={"source": "case", "root_run_id": root.run_id, "sectra_result_id": stored.id},
        pending_result=stored.model_dump(mode="json"),
        sectra_result_id=stored.id,
        sectra_version_id=stored.versionId,
        message=stored.displayResult,
    )
    return True


def _publish(ctx: PipelineContext, cases: CaseIndex, sectra: SectraAdapter, plan: CasePlan) -> None:
    """Create or update the summary result on the invoked slide, and remember its version."""
    app = ctx.apps[plan.app_id]
    records = {s.run_id: ctx.store.get(s.run_id) for s in plan.analysed if s.run_id}
    publisher = ResultPublisher(
        sectra,
        plan.app_id,
        plan.slide_id,
        app.version,
        result_id=plan.result_id,
        version_id=plan.version_id,
        min_interval=0.0,
    )
    publisher.publish(summary_result(plan, records, app))
    cases.save(plan.model_copy(update={"result_id": publisher.result_id, "version_id": publisher.version_id}))
