"""`client.predict`: price a prediction, and submit it exactly once."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from strand_client._errors import SubmissionUncertainError
from strand_client._http import HttpSession, Retry
from strand_client._jobs import Job
from strand_client._models import Estimate


def _body(upload_id: str, markers: Sequence[str], model: str | None) -> dict[str, Any]:
    names = [m.strip() for m in markers if m.strip()]
    if not names:
        raise ValueError("markers must name at least one marker")
    body: dict[str, Any] = {"uploadId": upload_id, "markers": names}
    if model is not None:
        body["model"] = model
    return body


class Predict:
    """Namespace exposed as `Client.predict`."""

    def __init__(self, http: HttpSession) -> None:
        self._http = http

    def estimate(self, upload_id: str, markers: Sequence[str], model: str | None = None) -> Estimate:
        """`POST /predict/estimate`: cost and balance, nothing reserved (so retried freely)."""
        return Estimate.from_wire(self._http.post_json("/predict/estimate", _body(upload_id, markers, model)))

    def dry_run(self, upload_id: str, markers: Sequence[str], model: str | None = None) -> Estimate:
        """`POST /predict` with `dryRun: true`: the platform validates markers and model, reserves nothing."""
        body = {**_body(upload_id, markers, model), "dryRun": True}
        return Estimate.from_wire(self._http.post_json("/predict", body))

    def submit(self, upload_id: str, markers: Sequence[str], model: str | None = None) -> Job:
        """`POST /predict`: reserve credits and enqueue. Sent once, never repeated blindly.

        Raises `SubmissionUncertainError` when the job may exist anyway (timeout
        after sending, reset, 5xx): check `client.jobs.for_upload` before another
        submit. Every other error proves nothing was reserved; `RateLimitError`
        (concurrent-job cap) carries `retry_after` for the caller to re-schedule.
        """
        raw = self._http.post_json(
            "/predict",
            _body(upload_id, markers, model),
            retry=Retry.UNSENT_ONLY,
            uncertain=SubmissionUncertainError,
        )
        reserved = raw.get("reservedCredits")
        return Job(str(raw["jobId"]), int(reserved) if isinstance(reserved, int) else None, self._http)
