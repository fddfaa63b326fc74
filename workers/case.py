"""Case-level runs (`scope: case` apps): which runs make up a case, and the summary the pathologist reads.

A create on one slide of a case-scope app analyses every H&E slide of its case:
one ordinary run per slide, each with its own result on its own slide, plus a
case summary (a second result, on the invoked slide) that says per slide what
was found and is rewritten as each slide's run ends.

The run of a case-scope app is keyed by (app, slide) alone: its id derives from
`CASE_RUN_TOKEN` instead of the invocation's cancellation token, so a second
create anywhere in the case, or a case listing that names a slide analysed
before, finds the run that already exists instead of paying for a second job.
Deleting a slide's result in Sectra deletes its run, so the next create
analyses it afresh.

Stored in Redis next to the runs (same prefix, the retention TTL):
- `{p}:case:{root}`: the case plan (JSON), keyed by the run of the invoked slide (the "root");
- `{p}:case-of:{run_id}`: set of the roots whose summary lists this run, read when the run ends.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import redis
from pydantic import BaseModel
from sectra_client.schemas import CaseImageInfo, Result

from sectra_adapter import build_final_result, case_summary_result
from workers.apps import AppConfig
from workers.celery_app import celery_app
from workers.ids import is_run_id
from workers.runstore import RunRecord, RunStatus, RunStore
from workers.summary_record import run_summary

# In the run id's digest instead of Sectra's cancellation token, for every run of a case-scope app.
CASE_RUN_TOKEN = "\x00case-scope"  # noqa: S105 (an id part, not a secret; no Sectra token is blank-led)
# IA-API 1.9 (Sectra 4.1) added `GET /slides/{id}/request/images/info`.
CASE_LISTING_API = (1, 9)

FAN_OUT_TASK = "bridge.case.fan_out"
REFRESH_TASK = "bridge.case.refresh"


def run_token(app: AppConfig, cancellation_token: str) -> str:
    """What the run id of an invocation of `app` derives from, besides app and slide."""
    return CASE_RUN_TOKEN if app.scope == "case" else cancellation_token


class CaseSlide(BaseModel):
    """One slide of the case as Sectra's image list names it, and the run analysing it (if any)."""

    slide_id: str
    block: str
    specimen: str | None = None
    run_id: str | None = None  # None: not analysed (`refusal` says why)
    refusal: str | None = None

    @property
    def label(self) -> str:
        name = f"Block {self.block}" if self.block else "Unnamed block"
        return f"{name} ({self.specimen})" if self.specimen else name


class CasePlan(BaseModel):
    """The case of one root run: its slides in Sectra's order, and its summary result in Sectra."""

    root_run_id: str
    app_id: str
    slide_id: str  # the invoked slide, which carries the summary
    slides: list[CaseSlide]
    # Why only the invoked slide was analysed (Sectra too old to list the case), in plain words.
    fallback: str | None = None
    result_id: int | None = None
    version_id: str | None = None

    @property
    def analysed(self) -> list[CaseSlide]:
        return [s for s in self.slides if s.run_id is not None]


def case_slide(info: CaseImageInfo, run_id: str | None, refusal: str | None) -> CaseSlide:
    specimen = info.specimen.anatomy or info.specimen.description if info.specimen else None
    return CaseSlide(
        slide_id=info.id,
        block=info.block.displayName.strip(),
        specimen=(specimen or "").strip() or None,
        run_id=run_id,
        refusal=refusal,
    )


class CaseIndex:
    """The case plans and the run -> cases index, in the run store's Redis."""

    def __init__(self, client: redis.Redis, *, prefix: str = "bridge", ttl_seconds: int) -> None:
        self._redis = client
        self._prefix = prefix
        self._ttl = ttl_seconds

    def _plan_key(self, root: str) -> str:
        if not is_run_id(root):
            raise ValueError("a case is keyed by its root run id")
        return f"{self._prefix}:case:{root}"

    def _cases_key(self, run_id: str) -> str:
        if not is_run_id(run_id):
            raise ValueError("not a run id")
        return f"{self._prefix}:case-of:{run_id}"

    def lock_key(self, root: str) -> str:
        """One fan-out or refresh of a case at a time (`workers.locks.run_lease`)."""
        return f"{self._plan_key(root)}:lock"

    def get(self, root: str) -> CasePlan | None:
        raw = self._redis.get(self._plan_key(root))
        return CasePlan.model_validate_json(raw) if raw else None

    def save(self, plan: CasePlan) -> None:
        self._redis.set(self._plan_key(plan.root_run_id), plan.model_dump_json(), ex=self._ttl)

    def watch(self, root: str, run_ids: Sequence[str]) -> None:
        """Register `root`'s summary with each run, so the run's end refreshes it."""
        with self._redis.pipeline(transaction=True) as pipe:
            for run_id in run_ids:
                key = self._cases_key(run_id)
                pipe.sadd(key, root)
                pipe.expire(key, self._ttl)
            pipe.execute()

    def cases_of(self, run_id: str) -> list[str]:
        if not is_run_id(run_id):
            return []
        members = self._redis.smembers(self._cases_key(run_id))
        return sorted(m.decode() if isinstance(m, bytes) else str(m) for m in members)


def case_index(store: RunStore) -> CaseIndex:
    return CaseIndex(store.client, prefix=store.prefix, ttl_seconds=store.retention_seconds)


def is_case_root(app: AppConfig, record: RunRecord) -> bool:
    """A case-scope run Sectra started (not one a case listing started): its case is to be listed."""
    return app.scope == "case" and record.source != "case"


def run_ended(app: AppConfig, store: RunStore, record: RunRecord) -> None:
    """Queue a refresh of every case summary that lists this run, now that it has ended."""
    if app.scope != "case":
        return
    for root in case_index(store).cases_of(record.run_id):
        request_refresh(root)


def request_fan_out(root: str) -> None:
    """Queue the listing of the root's case (`workers.tasks`), by name: the pipeline imports no tasks."""
    celery_app.send_task(FAN_OUT_TASK, (root,))


def request_refresh(root: str, countdown: float = 0.0) -> None:
    celery_app.send_task(REFRESH_TASK, (root,), countdown=countdown)


def _findings(record: RunRecord | None, app: AppConfig) -> tuple[str, bool]:
    """What one slide's run found so far, in the words of its own result; and whether it has ended."""
    if record is None:
        return "no longer analysed (its run was deleted)", True
    if record.status == RunStatus.completed and record.summary is not None and record.job_id:
        return build_final_result(run_summary(record, app)).displayResult, True
    if record.status in (RunStatus.failed, RunStatus.cancelled):
        return f"not analysed: {record.message or record.status.value}", True
    return f"under way: {record.message or 'queued'}", False


def summary_result(plan: CasePlan, records: Mapping[str, RunRecord | None], app: AppConfig) -> Result:
    """The case summary: a headline counting the analysed slides, and one row per slide of the case."""
    analysed = plan.analysed
    total = len(analysed)
    rows: dict[str, str] = {}
    done = ended = 0
    for index, slide in enumerate(analysed, start=1):
        assert slide.run_id is not None
        record = records.get(slide.run_id)
        words, finished = _findings(record, app)
        ended += finished
        done += record is not None and record.status == RunStatus.completed
        here = ", this slide" if slide.slide_id == plan.slide_id else ""
        rows[f"{slide.label}, {index} of {total}{here}"] = words
    for slide in plan.slides:
        if slide.run_id is None:
            rows[f"{slide.label}, not analysed"] = slide.refusal or "not an H&E slide"
    headline = f"Case: {done} of {total} H&E slide{'s' if total != 1 else ''} analysed"
    if ended > done:
        headline += f", {ended - done} could not be"
    if ended < total:
        headline += f", {total - ended} under way"
    if plan.fallback:
        rows["Case listing"] = plan.fallback
        headline += "; only this slide (Sectra cannot list the case)"
    return case_summary_result(
        plan.slide_id,
        app.version,
        headline,
        rows,
        complete=ended == total,
        context={"rootRunId": plan.root_run_id, "slides": total, "analysed": done},
    )
