"""Plain-words messages a pathologist reads in Sectra when a run cannot go on.

Kept in one place so the wording is consistent and reviewable by someone who
is not a programmer; each names what happened and, where it helps, what to do.
"""

from __future__ import annotations

from collections.abc import Iterable

from workers.states import RunStatus

# What the run record (and `runs list`, and the demo) says while a stage is under way.
STAGE_MESSAGES: dict[RunStatus, str] = {
    RunStatus.downloading: "Fetching the slide from Sectra",
    RunStatus.deidentifying: "Removing patient data from the copy to be sent",
    RunStatus.uploading: "Uploading to Strand",
    RunStatus.submitting: "Submitting the analysis to Strand",
    RunStatus.waiting: "Waiting for Strand",
    RunStatus.summarising: "Summarising Strand's marker maps",
    RunStatus.publishing: "Posting the result to Sectra",
    RunStatus.completed: "Result posted to Sectra",
}

# Labels of the byte-transfer progress shown in Sectra ("Fetching the slide 42 %").
FETCH_PROGRESS = "Fetching the slide"
UPLOAD_PROGRESS = "Uploading to Strand"


def _join(names: Iterable[str]) -> str:
    items = list(names)
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def insufficient_credits(required: int | None, available: int | None) -> str:
    if required is not None and available is not None:
        return f"Not enough Strand credits: {required} required, {available} available"
    if required is not None:
        return f"Not enough Strand credits: {required} required"
    return "Not enough Strand credits for this slide"


def over_ceiling(estimated: int, ceiling: int) -> str:
    return (
        f"This slide would cost {estimated} Strand credits, above this app's limit of {ceiling} "
        "per slide; it was not sent for analysis"
    )


def qc_rejected() -> str:
    return "Sectra's quality control rejected this slide; it was not sent for analysis"


def daily_limit_exceeded(scope: str, limit: int, used: int, estimated: int) -> str:
    """`scope` is "this app" or "the bridge" (`workers.quotas`)."""
    return (
        f"Today's Strand credit limit for {scope} ({limit}) would be exceeded: {used} used, this slide "
        f"needs {estimated}; it was not sent for analysis"
    )


def unknown_markers(markers: Iterable[str]) -> str:
    names = list(markers)
    verb = "is" if len(names) == 1 else "are"
    return f"{_join(names)} {verb} not known to Strand; ask your administrator to correct the app's markers"


def markers_not_available(markers: Iterable[str]) -> str:
    names = list(markers)
    verb = "is" if len(names) == 1 else "are"
    return f"{_join(names)} {verb} not enabled for this Strand organisation"


def job_failed(error_message: str | None) -> str:
    reason = (error_message or "no reason given").strip().rstrip(".")
    return f"Strand could not analyse this slide: {reason}"


def job_cancelled_by_strand() -> str:
    return "The analysis was cancelled on the Strand side; no result was produced"


def cancelled(refunded: int | None, refund_known: bool) -> str:
    if refunded:
        return f"Cancelled; {refunded} reserved credits refunded"
    if not refund_known:
        return "Cancelled; the reserved Strand credits could not be confirmed as refunded"
    return "Cancelled"


def service_unreachable(service: str, attempts: int) -> str:
    """`service` is "Sectra", "Strand" or "the bridge's own storage" (see `workers.errors.Service`)."""
    name = service[0].upper() + service[1:]
    return (
        f"{name} could not be reached after {attempts} attempts; the analysis was stopped. "
        "Your administrator can retry it"
    )


def strand_refused(detail: str) -> str:
    return f"Strand refused the request: {detail}"


def strand_key_refused() -> str:
    return "Strand refused the bridge's API key; ask your administrator to check STRAND_API_KEY"


def sectra_refused(detail: str) -> str:
    return f"Sectra refused the bridge's request: {detail}"


def not_prepared() -> str:
    return "The slide was not prepared for upload; it was not sent to Strand"


def strand_job_progress(words: str, progress: float | None) -> str:
    pct = f" {progress * 100:.0f} %" if progress is not None else ""
    return f"Strand: {words}{pct}"


def sectra_download_failed(detail: str) -> str:
    return f"The slide could not be fetched from Sectra: {detail}"


def missing_markers(missing: dict[str, str]) -> str:
    return "; ".join(f"{marker}: {reason}" for marker, reason in missing.items())


def internal_error(run_id: str) -> str:
    return (
        f"The analysis stopped because of an internal error (run {run_id}); your administrator can retry it"
    )


def partially_delivered(markers: Iterable[str]) -> str:
    return f"Strand did not deliver {_join(list(markers))}"


def unconfirmed_submission() -> str:
    return (
        "Could not confirm whether the Strand analysis was submitted; it was not submitted again to avoid "
        "paying twice. Your administrator can check and retry"
    )


def region_missing() -> str:
    return "No region was drawn; draw the area to analyse and start the analysis again"


def region_unreadable() -> str:
    return "The drawn region could not be read from Sectra's request"


def region_too_many(limit: int) -> str:
    return f"At most {limit} regions can be analysed at once; draw fewer regions"


def region_too_many_points(limit: int) -> str:
    return f"The drawn regions have more than {limit} points in all; draw them with fewer points"


def region_not_a_number() -> str:
    return "The drawn region has a point without a valid position"


def region_too_few_points() -> str:
    return "The drawn region needs at least three points"


def region_no_area() -> str:
    return "The drawn region encloses no area"


def region_outside_slide() -> str:
    return "The drawn region lies outside the slide"


def region_no_tissue() -> str:
    return "The drawn region holds no tissue"


def review_all_artefact() -> str:
    return (
        "Every hotspot was tagged Artefact, so the figures were not recomputed (nothing would be left to "
        "measure them against). Tag only the patches that are artefacts, then recompute."
    )


def review_nothing_left() -> str:
    return (
        "Every hotspot was tagged as artefact and together they cover all of the analysed tissue, "
        "so there is nothing left to recompute the figures from. The figures before the review stand."
    )
