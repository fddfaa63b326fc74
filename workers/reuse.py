"""Which finished Strand jobs a later run may read again instead of paying for a new one.

A region run analyses no less than the whole slide at Strand (the maps cover the slide; the region
only narrows the summary), so the second region drawn on a slide needs no second job: it reads the
first job's results. Whole-slide runs do the same when their app sets `reuse_results: true`.

The index is kept in Redis beside the run store. Its key is (slide id, the job's markers, the model
asked for): a Sectra slide id names one immutable image (a rescan is a new slide id), so the three
together stand for "the same de-identified content, the same analysis". Each entry also records the
digests of what was downloaded and what was uploaded, so an audit can show the content was the same.
An entry expires `BRIDGE_RESULTS_REUSE_DAYS` after its job completed (0 turns reuse off), and it is
only relied on after Strand confirms the job still has its results (Strand may have deleted them).

Slide ids are digested in keys, as run ids are: keys carry no slide identifiers.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from urllib.parse import urlsplit

import redis

from strand_client import JobStatus, NotFoundError
from workers.apps import AppConfig
from workers.context import PipelineContext
from workers.runstore import RunRecord

log = logging.getLogger(__name__)

# Job statuses whose results can be read: all markers, or the ones Strand delivered.
READABLE = frozenset({"completed", "partial_failed"})
_DAY = 86400.0


@dataclass(frozen=True, slots=True)
class ReuseEntry:
    """One finished job of a slide whose results a later run may read."""

    job_id: str
    completed_at: float  # Unix time the job completed
    markers: tuple[str, ...]  # the markers its results hold (a partially failed job's delivered ones)
    model: str | None  # the model the run asked for; None = the platform's default
    source_sha256: str | None  # digest of the files downloaded from Sectra
    slide_sha256: str | None  # digest of the (de-identified) file Strand analysed

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "markers": list(self.markers)}, separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str | bytes) -> ReuseEntry:
        data = json.loads(raw)
        return cls(
            job_id=str(data["job_id"]),
            completed_at=float(data["completed_at"]),
            markers=tuple(str(m) for m in data["markers"]),
            model=data.get("model"),
            source_sha256=data.get("source_sha256"),
            slide_sha256=data.get("slide_sha256"),
        )

    def serves(self, markers: Sequence[str], model: str | None) -> bool:
        """Whether these results answer a run asking for `markers` with `model`."""
        return set(markers) <= set(self.markers) and self.model == model


def _digest(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:32]


class ResultsIndex:
    """The reuse index: per slide, a sorted set of (markers, model) keys scored by when they expire."""

    def __init__(self, client: redis.Redis, *, prefix: str, retention_days: float) -> None:
        self._redis = client
        self._prefix = prefix
        self._retention = retention_days * _DAY

    @property
    def enabled(self) -> bool:
        return self._retention > 0

    def _slide_key(self, slide_id: str) -> str:
        return f"{self._prefix}:reuse:{_digest(slide_id)}"

    def _entry_key(self, slide_id: str, combo: str) -> str:
        return f"{self._slide_key(slide_id)}:{combo}"

    @staticmethod
    def _combo(markers: Sequence[str], model: str | None) -> str:
        return _digest(json.dumps([sorted(markers), model]))

    def record(self, slide_id: str, entry: ReuseEntry, *, now: float | None = None) -> bool:
        """Remember a finished job; False when reuse is off or its retention has already run out."""
        if not self.enabled:
            return False
        expires_at = entry.completed_at + self._retention
        ttl_ms = int((expires_at - (time.time() if now is None else now)) * 1000)
        if ttl_ms <= 0:
            return False
        combo = self._combo(entry.markers, entry.model)
        slide_key = self._slide_key(slide_id)
        with self._redis.pipeline(transaction=True) as pipe:
            pipe.set(self._entry_key(slide_id, combo), entry.to_json(), px=ttl_ms)
            pipe.zadd(slide_key, {combo: expires_at})
            pipe.pexpire(slide_key, ttl_ms, nx=True)
            pipe.pexpire(slide_key, ttl_ms, gt=True)  # the set lives as long as its longest entry
            pipe.execute()
        return True

    def candidates(
        self, slide_id: str, markers: Sequence[str], model: str | None, *, now: float | None = None
    ) -> list[ReuseEntry]:
        """Unexpired entries whose results answer (markers, model), the most recently completed first."""
        if not self.enabled:
            return []
        slide_key = self._slide_key(slide_id)
        moment = time.time() if now is None else now
        self._redis.zremrangebyscore(slide_key, "-inf", moment)
        combos = [
            c.decode() if isinstance(c, bytes) else str(c) for c in self._redis.zrange(slide_key, 0, -1)
        ]
        if not combos:
            return []
        raws = self._redis.mget([self._entry_key(slide_id, combo) for combo in combos])
        found = []
        for raw in raws:
            if raw is None:
                continue
            try:
                entry = ReuseEntry.from_json(raw)
            except (ValueError, KeyError, TypeError):
                log.warning("unreadable results-reuse entry ignored")
                continue
            if entry.serves(markers, model) and entry.completed_at + self._retention > moment:
                found.append(entry)
        return sorted(found, key=lambda e: e.completed_at, reverse=True)

    def forget(self, slide_id: str, entry: ReuseEntry) -> None:
        """Drop an entry Strand can no longer serve."""
        combo = self._combo(entry.markers, entry.model)
        with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(self._entry_key(slide_id, combo))
            pipe.zrem(self._slide_key(slide_id), combo)
            pipe.execute()


def results_index(ctx: PipelineContext) -> ResultsIndex:
    return ResultsIndex(
        ctx.store.client, prefix=ctx.store.prefix, retention_days=ctx.settings.results_reuse_days
    )


def slide_of(record: RunRecord) -> str:
    """The slide as the index knows it: its id within the Sectra system that named it.

    Two PACS behind one bridge may both have a slide "1234"; the callback host tells them apart
    (scheme, host and port, lower-cased; a path or a token never enters the key).
    """
    parts = urlsplit(record.callback_url.strip())
    return f"{parts.scheme.lower()}://{(parts.netloc or '').lower()}\x1f{record.slide_id}"


def wants_reuse(app: AppConfig, record: RunRecord) -> bool:
    """Region runs always read earlier results when there are some; whole-slide runs when the app says."""
    return record.input_type != "wholeSlide" or app.reuse_results


def find_reusable(ctx: PipelineContext, record: RunRecord, app: AppConfig) -> ReuseEntry | None:
    """An earlier job of this slide whose results Strand still serves for the app's markers and model."""
    index = results_index(ctx)
    for entry in index.candidates(slide_of(record), app.markers, app.model):
        try:
            status = ctx.strand().jobs.get(entry.job_id).last_status
        except NotFoundError:
            status = None
        if status is not None and status.status in READABLE:
            return entry
        ctx.store.append_event(record.run_id, "reuse_entry_dropped", job_id=entry.job_id)
        index.forget(slide_of(record), entry)
    return None


def adopt(ctx: PipelineContext, record: RunRecord, entry: ReuseEntry) -> RunRecord:
    """Make the run read `entry`'s results: its job id, no credits, and the job it came from."""
    updated = ctx.store.update(
        record.run_id,
        job_id=entry.job_id,
        reserved_credits=0,
        model=entry.model,
        reused_job={"job_id": entry.job_id, "completed_at": entry.completed_at},
    )
    ctx.store.append_event(record.run_id, "results_reused", job_id=entry.job_id)
    return updated


def remember(
    ctx: PipelineContext, record: RunRecord, app: AppConfig, status: JobStatus, delivered: Sequence[str]
) -> bool:
    """After a run's own job was summarised: offer its results to later runs of the slide."""
    if record.reused_job is not None or record.job_id is None or not delivered:
        return False
    completed = status.completed_at.timestamp() if status.completed_at else time.time()
    entry = ReuseEntry(
        job_id=record.job_id,
        completed_at=completed,
        markers=tuple(delivered),
        model=app.model,
        source_sha256=record.source_sha256,
        slide_sha256=record.slide_sha256,
    )
    return results_index(ctx).record(slide_of(record), entry)
