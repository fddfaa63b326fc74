"""Job handles: status, cancel, following (SSE with a polling fallback), and results."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, overload

from strand_client._errors import JobFailedError, JobTimeoutError, StrandError
from strand_client._http import HttpSession, Retry
from strand_client._models import JobEvent, JobStatus, ResultsLocation
from strand_client._results import JobResults
from strand_client._sse import follow_events

log = logging.getLogger("strand_client")

EventCallback = Callable[[JobEvent], None]


class Job:
    """A submitted prediction job. Cheap to construct from a stored id (`client.jobs.get`)."""

    def __init__(self, job_id: str, reserved_credits: int | None, http: HttpSession) -> None:
        self.id = job_id
        self.reserved_credits = reserved_credits
        self._http = http
        self.last_status: JobStatus | None = None

    def __repr__(self) -> str:
        status = self.last_status.status if self.last_status else "unknown"
        return f"Job(id={self.id!r}, status={status!r})"

    def refresh(self) -> JobStatus:
        """`GET /jobs/{id}`."""
        self.last_status = JobStatus.from_wire(self._http.get_json(f"/jobs/{self.id}"))
        return self.last_status

    def cancel(self) -> JobStatus:
        """Cancel a queued or running job; Strand refunds its reservation.

        Raises `BadRequestError` when the job already ended and `NotFoundError`
        when it is unknown (or the deployment predates cancel).
        """
        raw = self._http.post_json(f"/jobs/{self.id}/cancel", retry=Retry.UNSENT_ONLY)
        if "status" in raw:
            self.last_status = JobStatus.from_wire({"id": self.id, **raw})
            return self.last_status
        return self.refresh()

    def stream_events(self) -> Iterator[JobEvent]:
        """Iterate `JobEvent`s until a terminal one, reconnecting when the stream drops."""
        return follow_events(self._http, self.id)

    def wait(
        self,
        timeout: float | None = None,
        poll_interval: float = 2.0,
        on_event: EventCallback | None = None,
    ) -> JobStatus:
        """Block until the job ends; returns on `completed`, `partial_failed` and `cancelled`.

        Raises `JobFailedError` on `failed` and `JobTimeoutError` at `timeout`
        seconds (the job keeps running). Statuses this client does not know are
        waited out like `running`.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        status = self._follow(deadline, poll_interval, on_event)
        if status is None:
            raise JobTimeoutError(f"Strand job {self.id} did not finish within {timeout} s")
        if status.status == "failed":
            raise JobFailedError(self.id, status.error_message)
        return status

    def wait_slice(
        self, seconds: float, poll_interval: float = 2.0, on_event: EventCallback | None = None
    ) -> JobStatus:
        """Follow the job for at most `seconds`, then return the latest status, terminal or not.

        For a task queue worker that must give its slot back: it re-schedules
        itself instead of blocking for the whole job. Never raises for a failed job.
        """
        status = self._follow(time.monotonic() + seconds, poll_interval, on_event)
        return status if status is not None else self.refresh()

    def _follow(
        self, deadline: float | None, poll_interval: float, on_event: EventCallback | None
    ) -> JobStatus | None:
        """The terminal status, or None at the deadline. SSE first, polling when the stream fails."""
        try:
            for event in follow_events(self._http, self.id, deadline=deadline):
                if on_event is not None:
                    on_event(event)
        except JobTimeoutError:
            return None
        except StrandError as exc:
            log.info("Job stream unavailable, polling instead", extra={"reason": type(exc).__name__})
        last: tuple[str, float | None] | None = None
        while True:
            status = self.refresh()
            if status.is_terminal:
                return status
            if on_event is not None and (status.status, status.progress) != last:
                on_event(JobEvent(status=status.status, progress=status.progress, id=status.id))
            last = (status.status, status.progress)
            pause = poll_interval
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                pause = min(pause, remaining)
            time.sleep(pause)

    def result_location(self) -> ResultsLocation:
        """`GET /jobs/{id}/results`; `ConflictError` (409) until the job has results."""
        return ResultsLocation.from_wire(self._http.get_json(f"/jobs/{self.id}/results"))

    def results(self, concurrency: int = 8) -> JobResults:
        """A read-only view of the OME-Zarr result store over the authenticated file proxy."""
        self.result_location()
        return JobResults(
            api_root=self._http.api_root,
            api_key=self._http.api_key,
            job_id=self.id,
            timeout=self._http.timeout,
            max_retries=self._http.policy.max_retries,
            retry_policy=self._http.policy,
            concurrency=concurrency,
        )

    @overload
    def download_results(self, path: None = None) -> Any: ...

    @overload
    def download_results(self, path: str | os.PathLike[str]) -> Path: ...

    def download_results(self, path: str | os.PathLike[str] | None = None) -> Any:
        """With `path`: mirror the store there byte for byte and return it. Without: an AnnData.

        The job's markers are passed on, so a flat store (one node per marker at
        the root, no manifest) is copied whole too.
        """
        results = self.results()
        try:
            if path is not None:
                markers = (self.last_status or self.refresh()).markers
                return results.mirror_to(path, markers=markers)
            return results.to_anndata()
        finally:
            results.close()


class Jobs:
    """Namespace exposed as `Client.jobs`."""

    def __init__(self, http: HttpSession) -> None:
        self._http = http

    def get(self, job_id: str) -> Job:
        """A handle for a stored job id, with its current status in `last_status`."""
        job = Job(job_id, None, self._http)
        status = job.refresh()
        job.reserved_credits = status.reserved_credits
        return job

    def cancel(self, job_id: str) -> JobStatus:
        return Job(job_id, None, self._http).cancel()

    def for_upload(self, upload_id: str) -> list[JobStatus]:
        """The upload's jobs, newest first (`GET /samples/{upload_id}`).

        How to learn whether a submit that ended in `SubmissionUncertainError`
        went through: look for a job with the submitted markers.
        """
        raw = self._http.get_json(f"/samples/{upload_id}")
        jobs = raw.get("jobs")
        return [JobStatus.from_wire(j) for j in jobs if isinstance(j, dict)] if isinstance(jobs, list) else []
