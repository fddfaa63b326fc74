"""Plain-words messages a pathologist reads in Sectra when a run cannot go on.

Kept in one place so the wording is consistent and reviewable by someone who
is not a programmer; each names what happened and, where it helps, what to do.
"""

from __future__ import annotations

from collections.abc import Iterable


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


def strand_unreachable(attempts: int) -> str:
    return f"Strand could not be reached after {attempts} attempts; the analysis was stopped"


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
