"""The hotspot gallery round trip: a `patchCollection` result per run, and the pathologist's review of it.

After the final result is posted, `publish_review` posts a second result, a
gallery with one patch per drawn hotspot and the tags Hotspot / Agree /
Artefact. When the pathologist retags patches and Sectra sends `modify`,
`apply_review` recomputes every marker's figures without the patches tagged
Artefact, from the density grids kept with the run (no map read, no Strand
job), and updates the primitive result, then the gallery, then the run record,
in that order. A failure in between leaves Sectra's next `modify` to finish the
same work: every step is recomputed from the run's original summary, so a
repeat converges on the same figures instead of subtracting twice.

Sectra may deliver a `modify` twice (a retry, a second click). A review is
identified by its verdicts (patch -> kept / rejected / untouched); an
identical one is answered with the stored gallery and counted nowhere again,
and the metric counts only verdicts that changed since the last review.

Every `modify` of the gallery is applied, whether or not the "Recompute without
artefacts" button was pressed (a retag alone also arrives as a `modify`): the
figures always follow the tags the gallery shows. Tags that would leave nothing
to measure (every patch Artefact, or boxes covering all of a marker's tissue)
are answered in plain words on the gallery, and the figures stay as they were.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, Literal

from sectra_client.schemas import AdaptedResult, PatchResultContent, Result, ResultResponse, Status

from sectra_adapter import (
    Hotspot,
    HotspotReview,
    ResultPublisher,
    RunSummary,
    SectraAdapter,
    SectraRequestFailed,
    SectraVersionConflict,
    build_final_result,
    hotspot_review_result,
    read_review,
    reviewed_result,
)
from workers import messages
from workers.apps import AppConfig
from workers.bands import overlays_for
from workers.grid import grids_from_bytes
from workers.locks import run_lease
from workers.observability import HOTSPOT_REVIEWS
from workers.review_math import EVERYTHING_EXCLUDED, NothingLeftError, figures_without, grid_without
from workers.runstore import GRIDS_BLOB, RunRecord, RunStore
from workers.summary_record import run_summary

if TYPE_CHECKING:  # the web role imports this module for `modify`; it needs no pipeline
    from workers.context import PipelineContext

log = logging.getLogger(__name__)

Verdict = Literal["kept", "rejected", "untouched"]
# `read_review`'s verdicts (the tag left on a patch) as the audit trail and the metric name them.
VERDICTS: Mapping[str, Verdict] = {"agree": "kept", "artefact": "rejected", "untouched": "untouched"}
# Written into the gallery's `data.context`, so a gallery whose create answer was lost is found again.
RUN_CONTEXT_KEY = "bridgeRunId"
REVIEW_LEASE_SECONDS = 60.0  # longer than the webhook's Sectra calls can take (timeout x retries)
ALL_ARTEFACT_MESSAGE = messages.review_all_artefact()
NOT_APPLIED: Mapping[str, str] = {"all_artefact": ALL_ARTEFACT_MESSAGE, "nothing_left": EVERYTHING_EXCLUDED}


class MalformedReview(ValueError):
    """The `modify` does not carry a gallery review this bridge can read; the message says what is wrong."""


class ReviewUnavailable(RuntimeError):
    """The run cannot recompute its figures (its grids or summary are gone); the message says why."""


class ReviewBusy(RuntimeError):
    """Another `modify` of this run's gallery is being applied right now; Sectra should retry shortly."""


# -- keys beside the run (the run store's own prefix, the run's retention) -----------------------


def _intent_key(store: RunStore, run_id: str) -> str:
    return f"{store.prefix}:review-intent:{run_id}"


def _gallery_index_key(store: RunStore, result_id: int) -> str:
    # Sectra numbers results per app, so one field per app (as the run store's result index does).
    return f"{store.prefix}:review-result:{int(result_id)}"


def _lease_key(store: RunStore, run_id: str) -> str:
    return f"{store.prefix}:review-lease:{run_id}"


def find_gallery_run(store: RunStore, app_id: str, result_id: int) -> str | None:
    """The run whose hotspot gallery is Sectra result `result_id` of `app_id`, if it is still kept."""
    raw = store.client.hget(_gallery_index_key(store, result_id), app_id)
    if raw is None:
        return None
    run_id = raw.decode() if isinstance(raw, bytes) else str(raw)
    record = store.get(run_id)
    if record is None or record.app_id != app_id or record.review_result_id != result_id:
        return None
    return run_id


# -- the gallery ---------------------------------------------------------------------------------


def has_gallery(summary: RunSummary) -> bool:
    """A gallery is posted when the app draws hotspots and at least one marker has one."""
    return summary.overlay != "bands" and any(marker.hotspots for marker in summary.markers)


def publish_review(
    ctx: PipelineContext, record: RunRecord, sectra: SectraAdapter, summary: RunSummary
) -> None:
    """Post the run's hotspot gallery once, after its final result; a retried publish posts no second one.

    `create_results` is not retried by the adapter (a retry could store a second
    result), so an intent is written first: a publish that finds it, but no
    gallery id in the record, looks for the gallery among the slide's results
    before creating one.
    """
    if record.review_result_id is not None or not has_gallery(summary):
        return
    store = ctx.store
    intent = _intent_key(store, record.run_id)
    stored = _find_gallery(sectra, record) if store.client.exists(intent) else None
    if stored is None:
        gallery = hotspot_review_result(
            summary, context={RUN_CONTEXT_KEY: record.run_id}, microns_per_pixel=record.microns_per_pixel
        )
        store.client.set(intent, "1", ex=store.retention_seconds)
        try:
            stored = sectra.create_results(record.app_id, gallery)
        except SectraRequestFailed as exc:
            if exc.status_code >= 500 or exc.status_code in (408, 409, 429):
                raise  # transient: the stage is retried, and the intent finds a gallery that did land
            # Refused for good (too large, not allowed): the run's result stands without a gallery.
            log.warning("Sectra refused the hotspot gallery", extra={"status": exc.status_code})
            store.append_event(record.run_id, "review_not_published", status=exc.status_code)
            return
    store.update(record.run_id, review_result_id=stored.id, review_version_id=stored.versionId)
    index = _gallery_index_key(store, stored.id)
    with store.client.pipeline(transaction=True) as pipe:
        pipe.hset(index, record.app_id, record.run_id)
        pipe.expire(index, store.retention_seconds)
        pipe.delete(intent)
        pipe.execute()
    store.append_event(record.run_id, "review_published", result_id=stored.id, patches=_patch_count(stored))


def _find_gallery(sectra: SectraAdapter, record: RunRecord) -> ResultResponse | None:
    for result in sectra.get_all_results(record.slide_id, record.app_id):
        if isinstance(result.data.result, PatchResultContent) and (
            result.data.context.get(RUN_CONTEXT_KEY) == record.run_id
        ):
            log.info("found the hotspot gallery a lost create had stored", extra={"result_id": result.id})
            return result
    return None


def _patch_count(result: Result) -> int:
    content = result.data.result
    return len(content.content.patches) if isinstance(content, PatchResultContent) else 0


# -- the review ----------------------------------------------------------------------------------


def apply_review(
    store: RunStore, app: AppConfig, record: RunRecord, sectra: SectraAdapter, patch_result: ResultResponse
) -> ResultResponse:
    """Apply the pathologist's tags on the gallery `patch_result`; returns the gallery Sectra now stores.

    Raises `MalformedReview` (the body is not this run's gallery, or cannot be
    read), `ReviewUnavailable` (nothing left to recompute from), `ReviewBusy`,
    or the adapter's `SectraError`s. Nothing is half-applied: see the module.
    """
    if record.review_result_id is None or patch_result.id != record.review_result_id:
        raise MalformedReview(f"result {patch_result.id} is not this run's hotspot gallery")
    try:
        review = read_review(patch_result)
    except ValueError as exc:
        raise MalformedReview(f"the gallery cannot be read as a hotspot review: {exc}") from None
    verdicts = patch_verdicts(review)
    fingerprint = _fingerprint(verdicts)
    with run_lease(store.client, _lease_key(store, record.run_id), REVIEW_LEASE_SECONDS) as held:
        if not held:
            raise ReviewBusy("a review of this run's hotspots is being applied; retry shortly")
        current = store.require(record.run_id)  # fresh: a review applied meanwhile is seen here
        previous = current.review or {}
        if previous.get("fingerprint") == fingerprint:
            log.info("identical hotspot review repeated; answering with the stored gallery")
            return sectra.get_result(app.id, patch_result.id)
        counts = _counts(verdicts)
        boxes = _unique_boxes(review.artefact_boxes)
        outcome, summary = "all_artefact", None
        if counts["rejected"] < len(verdicts):
            try:
                outcome, summary = "applied", reviewed_summary(store, app, current, boxes)
            except NothingLeftError:  # the boxes cover all the tissue: nothing to measure
                outcome = "nothing_left"
        if summary is None:
            # Not applied: the primitive result keeps what it shows, and so does the record.
            gallery = _with_message(patch_result, NOT_APPLIED[outcome])
            excluded = list(previous.get("excluded_boxes") or [])
            figures = dict(previous.get("figures") or {})
        else:
            _update_primitive(store, app, current, sectra, build_final_result(summary))
            gallery = reviewed_result(patch_result, review)
            excluded = [dataclasses.asdict(box) for box in boxes]
            figures = {
                m.marker: {
                    "positive_fraction": m.positive_fraction,
                    "positive_area_mm2": m.positive_area_mm2,
                    "tissue_area_mm2": m.tissue_area_mm2,
                }
                for m in summary.markers
            }
        stored = _update_gallery(sectra, app.id, patch_result, gallery)
        store.update(
            current.run_id,
            review_version_id=stored.versionId,
            review={
                "fingerprint": fingerprint,
                "outcome": outcome,
                "verdicts": {str(index): verdict for index, verdict in verdicts.items()},
                **counts,
                # What the primitive result now leaves out, and the figures it shows.
                "excluded_boxes": excluded,
                "figures": figures,
                "recompute_requested": review.recompute_requested,
                "reviewed_at": time.time(),
            },
        )
        _count_changed(app.id, previous.get("verdicts") or {}, verdicts)
        store.append_event(current.run_id, "hotspot_review", outcome=outcome, **counts)
        log.info("hotspot review applied", extra={"outcome": outcome, **counts})
        return stored


def patch_verdicts(review: HotspotReview) -> dict[int, Verdict]:
    """Each patch's verdict, by its index in the gallery as built (stable if Sectra reorders patches)."""
    return {patch.index: VERDICTS[patch.verdict] for patch in review.patches}


def reviewed_summary(
    store: RunStore, app: AppConfig, record: RunRecord, boxes: Iterable[Hotspot]
) -> RunSummary:
    """The run's summary with the Artefact `boxes` taken out of every marker's figures.

    Always from the original summary in the record (never from a reviewed one),
    so applying a review twice, or a second review, is exact.
    """
    if record.summary is None or record.job_id is None:
        raise ReviewUnavailable("this run has no summary to recompute")
    excluded = list(boxes)
    if not excluded:
        return run_summary(record, app, store)
    summary = run_summary(record, app)  # bands are drawn below, from the reviewed grids
    blob = store.get_blob(record.run_id, GRIDS_BLOB)
    if blob is None:
        raise ReviewUnavailable(
            "the run's density grids are no longer kept; its figures cannot be recomputed"
        )
    try:
        grids = grids_from_bytes(blob)
    except ValueError as exc:
        raise ReviewUnavailable(
            f"the run's density grids cannot be read ({exc}); figures not recomputed"
        ) from None
    lacking = [marker.marker for marker in summary.markers if marker.marker not in grids]
    if lacking:
        raise ReviewUnavailable(f"no density grid is kept for {', '.join(lacking)}; figures not recomputed")
    markers = [figures_without(marker, grids[marker.marker], excluded) for marker in summary.markers]
    # The bands follow the reviewed figures: the tissue under an artefact is no longer shaded.
    overlays = (
        []
        if app.overlay == "hotspots"
        else overlays_for(
            {name: grid_without(grid, excluded) for name, grid in grids.items()},
            threshold=app.positivity_threshold,
        )
    )
    return dataclasses.replace(summary, markers=markers, excluded_hotspots=excluded, overlays=list(overlays))


def _update_primitive(
    store: RunStore, app: AppConfig, record: RunRecord, sectra: SectraAdapter, final: Result
) -> None:
    """Replace the run's primitive result; a version conflict rereads it and retries (`ResultPublisher`)."""
    if record.sectra_result_id is None:
        raise ReviewUnavailable("this run has no result in Sectra to update")
    publisher = ResultPublisher(
        sectra,
        app.id,
        record.slide_id,
        app.version,
        result_id=record.sectra_result_id,
        version_id=record.sectra_version_id,
    )
    publisher.publish(final)
    store.update(record.run_id, sectra_result_id=publisher.result_id, sectra_version_id=publisher.version_id)


def _update_gallery(
    sectra: SectraAdapter, app_id: str, sent: ResultResponse, gallery: Result
) -> ResultResponse:
    """Store `gallery` over the version Sectra sent; if it moved on meanwhile, reread and retry once."""
    try:
        return sectra.update_results(
            app_id, sent.id, AdaptedResult(**gallery.model_dump(), versionId=sent.versionId)
        )
    except SectraVersionConflict:
        current = sectra.get_result(app_id, sent.id)
        return sectra.update_results(
            app_id, sent.id, AdaptedResult(**gallery.model_dump(), versionId=current.versionId)
        )


def _with_message(patch_result: ResultResponse, message: str) -> Result:
    """The gallery as the pathologist left it, saying in plain words why nothing was recomputed."""
    content = patch_result.data.result
    assert isinstance(content, PatchResultContent)
    statuses = {**content.content.statuses, "allowVerify": Status(value=False, message=message)}
    patched = content.model_copy(
        update={"content": content.content.model_copy(update={"statuses": statuses})}
    )
    data = patch_result.data.model_copy(update={"result": patched})
    return Result(
        slideId=patch_result.slideId,
        displayResult=message,
        applicationVersion=patch_result.applicationVersion,
        attachments=patch_result.attachments,
        data=data,
        displayProperties=patch_result.displayProperties,
    )


def _unique_boxes(boxes: Iterable[Any]) -> list[Hotspot]:
    """The union of the Artefact boxes: the same box tagged on two markers' patches counts once."""
    seen: dict[tuple[int, int, int, int], Hotspot] = {}
    for box in boxes:
        key = (int(box.x), int(box.y), int(box.width), int(box.height))
        if key not in seen:
            seen[key] = box if isinstance(box, Hotspot) else Hotspot(*key, positive_fraction=0.0)
    return [seen[key] for key in sorted(seen)]


def _counts(verdicts: Mapping[int, Verdict]) -> dict[str, int]:
    values = list(verdicts.values())
    return {verdict: values.count(verdict) for verdict in ("kept", "rejected", "untouched")}


def _fingerprint(verdicts: Mapping[int, Verdict]) -> str:
    text = json.dumps(sorted(verdicts.items()), separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _count_changed(app_id: str, previous: Mapping[str, Any], verdicts: Mapping[int, Verdict]) -> None:
    """Count each patch's verdict once: only where it differs from the run's last review."""
    for index, verdict in verdicts.items():
        if verdict != "untouched" and previous.get(str(index)) != verdict:
            HOTSPOT_REVIEWS.labels(app=app_id, verdict=verdict).inc()
