"""Run records in Redis, shared by the webhook and the workers.

Redis is already the Celery broker, so keeping runs there adds no moving
part, and every write below is a single atomic step (a Lua script or a
WATCH/MULTI transaction): a worker SIGKILLed mid-write leaves either the old
record or the new one, never half of each.

Layout (all keys under `prefix`, all with the retention TTL, refreshed on write):
- `{p}:run:{run_id}`: hash, one JSON-encoded value per `RunRecord` field, so a
  checkpoint write touches only its own fields and cannot clobber another's;
- `{p}:run:{run_id}:events`: stream, the run's append-only audit trail;
- `{p}:result:{sectra_result_id}`: hash of app id -> run id, to route Sectra's `delete`;
- `{p}:run:{run_id}:lease:{name}`: short leases for once-only steps (see `claim_step`);
- `{p}:runs`, `{p}:runs:status:{status}`, `{p}:runs:app:{app_id}`: sorted sets
  of run ids scored by creation time, for newest-first listings.

The run id is derived from (app, slide, cancellationToken), so the record key
itself is the idempotency index: "create unless it exists" is one atomic
script, and there is no second key that could drift out of step with it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
import time
import types
import typing
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from json.encoder import c_make_encoder, encode_basestring_ascii  # type: ignore[attr-defined]
from typing import Any, Literal

import redis
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter
from typing_extensions import TypedDict, Unpack  # pydantic needs this TypedDict on Python < 3.12

from workers.ids import RUN_ID_RULE, is_run_id, random_token
from workers.observability import may_hold_secret, redact, redact_value
from workers.states import FINAL_STATES, IllegalTransition, RunStatus, check_transition

__all__ = [
    "IllegalTransition",
    "RunNotFound",
    "RunRecord",
    "RunSource",
    "RunStatus",
    "RunStore",
    "StagedFile",
    "StepClaim",
    "run_id_for",
]

# `case`: a sibling slide's run, started by a case-scope run (`workers.stages.case`).
RunSource = Literal["create", "newImageFiles", "operator", "case"]

# Progress events are throttled upstream; the cap only guards Redis memory against a runaway loop.
_EVENTS_MAX = 10_000
_EVENTS_PAGE = 500
# They define the run (its id derives from them) or its place in the indexes.
_IDENTITY_FIELDS = frozenset({"run_id", "app_id", "slide_id", "cancellation_token", "created_at"})
_BLOB_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")
BLOB_MAX_BYTES = 8 * 1024 * 1024  # a grid or a thumbnail is far smaller; this bounds a bug's damage
GRIDS_BLOB = "grids.bin"  # every marker's `workers.grid.DensityGrid`, written by the summary stage
THUMBNAIL_BLOB = "thumbnail.jpg"  # the result drawn on the slide, written at publish (`workers.render`)
_SECRET_KEY = re.compile(r"(?i)token|secret|password|authori[sz]ation|api[_-]?key|cookie")


@dataclass(frozen=True, slots=True)
class StepClaim:
    """What `claim_step` found: `claimed` (token set: release it), `done` (value set), `busy`, `gone`."""

    outcome: Literal["claimed", "done", "busy", "gone"]
    token: str | None = None
    value: Any = None


class RunNotFound(LookupError):
    def __init__(self, run_id: str) -> None:
        super().__init__(f"run {run_id} not found")
        self.run_id = run_id


class StagedFile(TypedDict):
    """A slide file on local disk, verified by size and digest before it is reused after a restart."""

    name: str
    size: int
    sha256: str


class RunRecord(BaseModel):
    """Everything a worker needs to resume a run after a crash, and an operator to understand it."""

    # Unknown fields are ignored so a rolling upgrade can add fields without breaking old readers.
    model_config = ConfigDict(extra="ignore")

    run_id: str
    app_id: str
    slide_id: str
    cancellation_token: str
    source: RunSource
    callback_url: str
    # Workers must call Sectra back later, so the token is stored; it is left out of repr() and of
    # every model_dump() (so of logs and the admin API); only the store writes it, field by field.
    # A str rather than SecretStr so callers hand it straight to the Sectra client.
    callback_token: str = Field(repr=False, exclude=True)
    status: RunStatus = RunStatus.received
    stage_progress: float | None = None
    message: str = ""  # plain words for the pathologist
    error: str | None = None
    attempts: int = 0
    created_at: float
    updated_at: float
    slide_width: int | None = None
    slide_height: int | None = None
    microns_per_pixel: float | None = None
    sectra_result_id: int | None = None
    sectra_version_id: str | None = None
    pending_result: dict[str, Any] | None = None
    staged_files: list[StagedFile] = Field(default_factory=list)  # as downloaded from Sectra
    source_sha256: str | None = None  # digest over the staged files' digests
    outgoing_files: list[StagedFile] = Field(default_factory=list)  # de-identified, what Strand gets
    slide_sha256: str | None = None  # the file actually uploaded
    upload_id: str | None = None
    # A resumable-upload session URL is itself a credential (whoever holds it may write the upload).
    upload_url: str | None = Field(default=None, repr=False, exclude=True)
    upload_offset: int = 0
    upload_total: int | None = None
    upload_complete: bool = False
    submit_intent_at: float | None = None
    # The estimate kept after Strand answered a submit 429 (`workers.stages.submit`): its figures,
    # when, and for which upload and request, so the next attempt submits without pricing again.
    estimate: dict[str, Any] | None = None
    job_id: str | None = None
    job_status: str | None = None
    progress_posted_at: float | None = None  # last progress pushed to Sectra, for throttling
    reserved_credits: int | None = None
    model: str | None = None
    summary: dict[str, Any] | None = None
    cancel_requested: bool = False
    cancel_note: str | None = None
    deidentify_report: dict[str, Any] | None = None
    # The pathologist's view (#16). `input_type` is the invocation's input (`wholeSlide`,
    # `taggedPolygon`, `multiArea`); `region_input` its `content` exactly as Sectra sent it
    # (normalised coordinates; `workers.regions` converts them once the slide's size is known).
    input_type: str = "wholeSlide"
    region_input: dict[str, Any] | None = None
    # `{"job_id", "completed_at"}` of the earlier job whose results this run read (no new job).
    reused_job: dict[str, Any] | None = None
    # The second Sectra result, the hotspot gallery (`patchCollection`), and the review's outcome.
    review_result_id: int | None = None
    review_version_id: str | None = None
    review: dict[str, Any] | None = None

    @property
    def is_final(self) -> bool:
        return self.status in FINAL_STATES

    def public_dict(self) -> dict[str, Any]:
        """The record as the admin API and CLI may show it: credentials are excluded from every dump."""
        return self.model_dump(mode="json")


_ADAPTERS: dict[str, TypeAdapter[Any]] = {
    name: TypeAdapter(Any if field.annotation is None else field.annotation)
    for name, field in RunRecord.model_fields.items()
}


def _plain_types(annotation: Any) -> frozenset[type]:
    """The value types a field takes exactly as they are (`str`, `int | None`, ...): validating one of
    these returns it unchanged, so it is JSON-encoded without pydantic. Empty for any other field."""
    members = typing.get_args(annotation) if isinstance(annotation, types.UnionType) else (annotation,)
    allowed = {str, int, float, bool, type(None)}
    return frozenset(members) if all(member in allowed for member in members) else frozenset()


_PLAIN_TYPES = {
    name: frozenset() if field.metadata else _plain_types(field.annotation)  # constraints: pydantic's job
    for name, field in RunRecord.model_fields.items()
}
# The fields typed `dict[str, Any] | None`: a `ModelJson` may be written to these.
_OBJECT_FIELDS = frozenset(
    name for name, field in RunRecord.model_fields.items() if field.annotation == dict[str, Any] | None
)
# The fields that take None (stored as JSON `null`, whatever else they take), and every field's name
# (`RunRecord.model_fields` is a property that builds its answer on each read).
_NULLABLE_FIELDS = frozenset(
    name
    for name, field in RunRecord.model_fields.items()
    if isinstance(field.annotation, types.UnionType) and type(None) in typing.get_args(field.annotation)
)
_FIELD_NAMES = frozenset(RunRecord.model_fields)
_RECEIVED_JSON = json.dumps(RunStatus.received.value)


def run_id_for(app_id: str, slide_id: str, cancellation_token: str) -> str:
    """The one run id an invocation maps to; a digest, so ids carry no slide identifiers."""
    digest = hashlib.sha256("\x1f".join((app_id, slide_id, cancellation_token)).encode()).hexdigest()
    return f"run-{digest[:24]}"


# `json.dumps(value, separators=(",", ":"))` and `json.dumps(value, default=str)`, without building an
# encoder for every value (`json.dumps` makes one per call when given options).
_COMPACT = json.JSONEncoder(separators=(",", ":"))
_LENIENT = json.JSONEncoder(default=str)
# `_COMPACT.encode` without its per-call set-up: the C encoder `JSONEncoder.iterencode` builds for every
# call, built once (the values are JSON-shaped dumps, so no check for reference cycles).
_COMPACT_C = (
    None
    if c_make_encoder is None
    else c_make_encoder(None, None, encode_basestring_ascii, None, ":", ",", False, False, True)
)


def _compact(value: Any) -> str:
    """`_COMPACT.encode(value)`, spelled the same."""
    if type(value) is str:
        return str(encode_basestring_ascii(value))
    if _COMPACT_C is None:  # an interpreter without the C accelerator  # pragma: no cover
        return _COMPACT.encode(value)
    return "".join(_COMPACT_C(value, 0))


class ModelJson(str):
    """A field's value as JSON text pydantic has validated as a model (the text it parsed, or the
    model's `model_dump_json()`), written as it is: the webhook's pending result, Sectra's answer as
    it came and already parsed once, is not validated, dumped and encoded again. Only for a dict-typed
    field, which any model's JSON fits."""


def _encode(fields: Mapping[str, Any]) -> list[str]:
    """Validate each value against its RunRecord field and flatten to HSET arguments."""
    flat: list[str] = []
    for name, value in fields.items():
        plain = _PLAIN_TYPES.get(name)  # every field has an entry, if only an empty set
        if plain is None:
            raise ValueError(f"RunRecord has no field {name!r}")
        kind = type(value)
        if kind in plain:
            flat += (name, encode_basestring_ascii(value) if kind is str else _compact(value))
            continue
        if value is None and name in _NULLABLE_FIELDS:
            flat += (name, "null")
            continue
        if kind is ModelJson:
            if name not in _OBJECT_FIELDS:
                raise ValueError(f"RunRecord field {name!r} does not hold a JSON object")
            flat += (name, str(value))
            continue
        adapter = _ADAPTERS[name]
        flat += (name, _compact(adapter.dump_python(adapter.validate_python(value), mode="json")))
    return flat


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _decode(reply: Any) -> RunRecord:
    """HGETALL answers a dict through redis-py but a flat list from a script; accept both."""
    pairs = reply.items() if isinstance(reply, dict) else zip(reply[::2], reply[1::2], strict=True)
    return RunRecord.model_validate({_text(k): json.loads(_text(v)) for k, v in pairs})


def _refuse_identity(fields: Mapping[str, Any]) -> None:
    fixed = _IDENTITY_FIELDS.intersection(fields)
    if fixed:
        raise ValueError(f"these fields never change after creation: {', '.join(sorted(fixed))}")


_JSON_SCALARS = frozenset({str, int, float, bool, type(None)})


@functools.lru_cache(maxsize=512)
def _plain_key(key: str) -> bool:
    """Neither `_scrub` nor `redact` changes an entry under this key: what most keys are, checked once
    each (the keys are the few the code writes)."""
    return _SECRET_KEY.search(key) is None and redact(key) == key


def _event_payload(data: Mapping[str, Any]) -> str:
    # Redacted as a structure, then serialised: the JSON stays valid whatever the strings hold.
    flat, unchanged = True, True
    for key, value in data.items():
        kind = type(value)
        if type(key) is not str or kind not in _JSON_SCALARS:
            flat = unchanged = False
            break
        if unchanged and (not _plain_key(key) or (kind is str and may_hold_secret(value))):
            unchanged = False
    if unchanged:
        # Flat, JSON-typed, under plain keys, with no string a pattern would mask (most entries, the
        # create's among them): the redaction below would hand back the very same entry.
        return _compact(data)
    if flat:
        # Flat and already JSON-typed: the round trip below would hand back the very same values.
        return _compact(redact_value(_scrub(data)))
    plain = json.loads(_LENIENT.encode(_scrub(data)))
    return _compact(redact_value(plain))


def _scrub(data: Any) -> Any:
    """Drop anything keyed like a credential; audit entries outlive tokens' validity but not their risk."""
    if isinstance(data, Mapping):
        return {k: "[redacted]" if _SECRET_KEY.search(str(k)) else _scrub(v) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [_scrub(v) for v in data]
    return data


def _event_data(raw: str) -> Any:
    """An entry's data; one written unparseable (by a release that redacted JSON text) is reported
    as such instead of making the whole trail unreadable."""
    try:
        return json.loads(raw)
    except ValueError:
        return {"unreadable": True}


# KEYS: record, all-index, status-index, app-index. ARGV: ttl, score, prune-before, run_id, field/value...
_CREATE = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  return {0, redis.call('HGETALL', KEYS[1])}
end
redis.call('HSET', KEYS[1], unpack(ARGV, 5))
redis.call('EXPIRE', KEYS[1], ARGV[1])
for i = 2, 4 do
  redis.call('ZADD', KEYS[i], ARGV[2], ARGV[4])
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', '(' .. ARGV[3])
  redis.call('EXPIRE', KEYS[i], ARGV[1])
end
return {1}
"""

# One script for every field write, so a checkpoint, its audit entry and the release of the step's
# lease land together or not at all. A function of its keys (K) and arguments (A), so a script that does
# more after it (`workers.runstore_async`: the run's first step) runs the very same write.
# A step's completion carries its claim's token, fresh for every claim, and the record keeps the last one
# (`completed_by`, JSON like every field): a completion sent again after its reply was lost (the lane
# resends once when its connection breaks, redis-py retries) answers as the first did, without a second
# audit entry, and says so in a second value (`again`) for a script that does more after it.
# K: record, events, lease[, result index].
# A: ttl, run_id, return record (1/0), lease token ('' = none), event ('' = none), ts, data, maxlen,
#    field/value...
WRITE_FUNCTION = """
local function write(K, A)
  if redis.call('EXISTS', K[1]) == 0 then
    return false
  end
  if A[4] ~= '' then
    local completion = '"' .. A[4] .. '"'
    if redis.call('HGET', K[1], 'completed_by') == completion then
      if A[3] == '1' then
        return redis.call('HGETALL', K[1]), true
      end
      return 1, true
    end
    redis.call('HSET', K[1], 'completed_by', completion)
  end
  redis.call('HSET', K[1], unpack(A, 9))
  redis.call('EXPIRE', K[1], A[1])
  if A[5] ~= '' then
    redis.call('XADD', K[2], 'MAXLEN', '~', A[8], '*', 'ts', A[6], 'event', A[5], 'data', A[7])
  end
  redis.call('EXPIRE', K[2], A[1])
  if K[4] then
    redis.call('HSET', K[4], redis.call('HGET', K[1], 'app_id'), A[2])
    redis.call('EXPIRE', K[4], A[1])
  end
  if A[4] ~= '' and redis.call('GET', K[3]) == A[4] then
    redis.call('DEL', K[3])
  end
  if A[3] == '1' then
    return redis.call('HGETALL', K[1])
  end
  return 1
end
"""
WRITE_SCRIPT = WRITE_FUNCTION + "local written = write(KEYS, ARGV)\nreturn written\n"

# KEYS: record, events. ARGV: ttl, maxlen, ts, event, data.
_APPEND = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  return false
end
local id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', 'ts', ARGV[3], 'event', ARGV[4],
                      'data', ARGV[5])
redis.call('EXPIRE', KEYS[2], ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[1])
return id
"""

# A lease already held with this very token counts as claimed: a claim sent again after its reply was
# lost (`workers.redis_lane` resends once when the connection breaks) answers as the first did.
# KEYS: record, lease. ARGV: done field, token, ttl ms.
CLAIM_SCRIPT = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {'gone'}
end
local done = redis.call('HGET', KEYS[1], ARGV[1])
if done and done ~= 'null' then
  return {'done', done}
end
if redis.call('SET', KEYS[2], ARGV[2], 'NX', 'PX', ARGV[3]) or redis.call('GET', KEYS[2]) == ARGV[2] then
  return {'claimed'}
end
return {'busy'}
"""

# What `create_or_get` stores for a new run besides its id, times and status, in the order
# `CREATE_AND_CLAIM_SCRIPT` takes their JSON from its arguments.
_NEW_RUN_FIELDS = ("app_id", "slide_id", "cancellation_token", "source", "callback_url", "callback_token")
_NEW_RUN_FIRST_ARG = 8

# `_CREATE` then `CLAIM_SCRIPT` in one round trip: the webhook's create path, where each round trip is a
# thread hop and a GIL hand-off under load. A run created here has no output yet, so it is claimed
# unless a holder of a deleted predecessor's lease is still on it. The record's field names and its
# constant values are in the script's text, so each create sends only the values (every argument costs
# the sender its packing and Redis its parsing): the id's JSON is the id quoted (a run id is
# `run-` and hex digits), both times are the creation time as Python's `repr` spells it.
# KEYS: record, all-index, status-index, app-index, lease.
# ARGV: ttl, now, prune-before, run_id, done field, lease token, lease ttl ms, then the JSON of each of
#       `_NEW_RUN_FIELDS`.
CREATE_AND_CLAIM_SCRIPT = (
    """
local created = 0
if redis.call('EXISTS', KEYS[1]) == 1 then
  local done = redis.call('HGET', KEYS[1], ARGV[5])
  if done and done ~= 'null' then
    return {0, 'done', done}
  end
else
  redis.call('HSET', KEYS[1], 'run_id', '"' .. ARGV[4] .. '"', 'created_at', ARGV[2], 'updated_at', ARGV[2],
             'status', '"""
    + _RECEIVED_JSON
    + "'"
    + "".join(
        f",\n             '{name}', ARGV[{_NEW_RUN_FIRST_ARG + i}]" for i, name in enumerate(_NEW_RUN_FIELDS)
    )
    + """)
  redis.call('EXPIRE', KEYS[1], ARGV[1])
  for i = 2, 4 do
    redis.call('ZADD', KEYS[i], ARGV[2], ARGV[4])
    redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', '(' .. ARGV[3])
    redis.call('EXPIRE', KEYS[i], ARGV[1])
  end
  created = 1
end
if redis.call('SET', KEYS[5], ARGV[6], 'NX', 'PX', ARGV[7]) or redis.call('GET', KEYS[5]) == ARGV[6] then
  return {created, 'claimed'}
end
return {created, 'busy'}
"""
)

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class CreateAndClaimRequest(TypedDict):
    """A new run's invocation fields and the step to claim on it (`RunStore.create_and_claim`)."""

    app_id: str
    slide_id: str
    cancellation_token: str
    callback_url: str
    callback_token: str
    source: RunSource
    step: str
    ttl_seconds: float
    done_field: str


@dataclass(frozen=True, slots=True)
class ClaimCall:
    """`CLAIM_SCRIPT`'s keys and arguments, and how to read its reply."""

    token: str
    keys: list[str]
    args: list[Any]

    def outcome(self, reply: Any) -> StepClaim:
        outcome = _text(reply[0])
        if outcome == "done":
            return StepClaim("done", value=json.loads(_text(reply[1])))
        if outcome == "claimed":
            return StepClaim("claimed", token=self.token)
        return StepClaim("gone" if outcome == "gone" else "busy")


@dataclass(frozen=True, slots=True)
class CreateAndClaimCall:
    """`CREATE_AND_CLAIM_SCRIPT`'s keys and arguments, and how to read its reply."""

    run_id: str
    token: str
    keys: list[str]
    args: list[Any]

    def outcome(self, reply: Any) -> tuple[str, bool, StepClaim]:
        created = int(reply[0]) == 1
        outcome = _text(reply[1])
        if outcome == "done":
            return self.run_id, created, StepClaim("done", value=json.loads(_text(reply[2])))
        if outcome == "claimed":
            return self.run_id, created, StepClaim("claimed", token=self.token)
        return self.run_id, created, StepClaim("busy")


def _events_key_under(record_key: str) -> str:
    """A run's audit trail, from its record's key."""
    return f"{record_key}:events"


def _lease_key_under(record_key: str, name: str) -> str:
    """A run's lease on step `name`, from its record's key."""
    return f"{record_key}:lease:{name}"


class RunStore:
    """Typed, atomic access to run records; safe to share between threads (redis-py pools connections)."""

    def __init__(
        self, redis: redis.Redis, *, prefix: str = "bridge", retention_seconds: int = 30 * 86400
    ) -> None:
        if retention_seconds <= 0:
            raise ValueError("retention_seconds must be positive")
        self._redis = redis
        self._prefix = prefix
        self._ttl = retention_seconds
        # Each status's index key, spelled once (an enum's `.value` is a property lookup per read).
        self._status_index_keys = {status: f"{prefix}:runs:status:{status.value}" for status in RunStatus}
        self._create_script = redis.register_script(_CREATE)
        self._write_script = redis.register_script(WRITE_SCRIPT)
        self._append_script = redis.register_script(_APPEND)
        self._release_script = redis.register_script(_RELEASE)
        self._claim_script = redis.register_script(CLAIM_SCRIPT)
        self._create_and_claim_script = redis.register_script(CREATE_AND_CLAIM_SCRIPT)

    @property
    def client(self) -> redis.Redis:
        """The Redis the runs live in, for indexes kept beside them (`workers.case`)."""
        return self._redis

    @property
    def prefix(self) -> str:
        return self._prefix

    @property
    def retention_seconds(self) -> int:
        return self._ttl

    # -- keys ---------------------------------------------------------------------------------

    def _record_key(self, run_id: str) -> str:
        # Every per-run key starts here; an id off its grammar (`run-x:events`) would name another key.
        # Public methods answer "no such run" for one; this is the last line, for any that forgets.
        if not is_run_id(run_id):
            raise ValueError(f"not a run id: must be {RUN_ID_RULE}")
        return f"{self._prefix}:run:{run_id}"

    def _checked_record_key(self, run_id: str) -> str:
        """`_record_key` of an id the caller has just checked (`is_run_id`) or made (`run_id_for`): the
        create path builds every key of a run from it, without checking the id again for each."""
        return f"{self._prefix}:run:{run_id}"

    def _events_key(self, run_id: str) -> str:
        return _events_key_under(self._record_key(run_id))

    def _result_key(self, result_id: int) -> str:
        # Sectra numbers results per app, so the key holds one field per app (the JSON-encoded
        # app id, exactly as the record stores it, so a script can copy it without decoding).
        return f"{self._prefix}:result:{result_id}"

    def _index_all(self) -> str:
        return f"{self._prefix}:runs"

    def _index_status(self, status: RunStatus) -> str:
        return self._status_index_keys[status]

    def _index_app(self, app_id: str) -> str:
        return f"{self._prefix}:runs:app:{app_id}"

    def _prune_before(self, now: float) -> float:
        # A run lives at most a retention period past its last write; index entries twice that old
        # can only point at expired records.
        return now - 2 * self._ttl

    # -- records ------------------------------------------------------------------------------

    def create_or_get(
        self,
        *,
        app_id: str,
        slide_id: str,
        cancellation_token: str,
        callback_url: str,
        callback_token: str,
        source: RunSource,
    ) -> tuple[RunRecord, bool]:
        """The run for this invocation, and whether this call created it (exactly one caller does)."""
        now = time.time()
        record = RunRecord(
            run_id=run_id_for(app_id, slide_id, cancellation_token),
            app_id=app_id,
            slide_id=slide_id,
            cancellation_token=cancellation_token,
            source=source,
            callback_url=callback_url,
            callback_token=callback_token,
            created_at=now,
            updated_at=now,
        )
        # Defaults are not stored: readers fill them in, and the write stays small and cheap.
        fields = {name: getattr(record, name) for name in (*record.model_fields_set, "status")}
        reply = self._create_script(
            keys=[
                self._record_key(record.run_id),
                self._index_all(),
                self._index_status(RunStatus.received),
                self._index_app(app_id),
            ],
            args=[self._ttl, now, self._prune_before(now), record.run_id, *_encode(fields)],
        )
        if int(reply[0]) == 1:
            return record, True
        return _decode(reply[1]), False

    def get(self, run_id: str) -> RunRecord | None:
        if not is_run_id(run_id):
            return None  # no run has that id, and it must not become a key
        reply = self._redis.hgetall(self._record_key(run_id))
        return _decode(reply) if reply else None

    def require(self, run_id: str) -> RunRecord:
        record = self.get(run_id)
        if record is None:
            raise RunNotFound(run_id)
        return record

    def find(self, app_id: str, slide_id: str, cancellation_token: str) -> str | None:
        run_id = run_id_for(app_id, slide_id, cancellation_token)
        return run_id if self._redis.exists(self._record_key(run_id)) else None

    def find_by_result(self, app_id: str, result_id: int) -> str | None:
        """The run that owns a Sectra result; Sectra's `delete` names the result, not always the token."""
        raw = self._redis.hget(self._result_key(result_id), json.dumps(app_id))
        if raw is None:
            return None
        run_id = _text(raw)
        record = self.get(run_id)
        if record is None or record.app_id != app_id or record.sectra_result_id != result_id:
            return None
        return run_id

    def update(self, run_id: str, **fields: Any) -> RunRecord:
        """Write checkpoint fields atomically; status changes go through `transition` only."""
        if "status" in fields:
            raise ValueError("use transition() to change a run's status")
        reply = self._write(run_id, fields, want_record=True)
        if reply is None:
            raise RunNotFound(run_id)
        return _decode(reply)

    def complete_step(
        self, run_id: str, name: str, token: str, *, event: str, event_data: Mapping[str, Any], **fields: Any
    ) -> bool:
        """Record a claimed step's output with its audit event and release its lease, atomically.

        The counterpart of `claim_step`; False when the run was deleted meanwhile.
        """
        call = self.complete_step_call(run_id, name, token, event=event, event_data=event_data, **fields)
        return call is not None and self._write_script(keys=call[0], args=call[1]) is not None

    def complete_step_call(
        self, run_id: str, name: str, token: str, *, event: str, event_data: Mapping[str, Any], **fields: Any
    ) -> tuple[list[str], list[Any]] | None:
        """The keys and arguments of `complete_step`'s script (`WRITE_SCRIPT`); None: no such run."""
        if "status" in fields:
            raise ValueError("use transition() to change a run's status")
        lease, done = (name, token), (event, event_data)
        return self._write_call(run_id, fields, want_record=False, lease=lease, event=done)

    def _write(
        self,
        run_id: str,
        fields: dict[str, Any],
        *,
        want_record: bool,
        lease: tuple[str, str] | None = None,
        event: tuple[str, Mapping[str, Any]] | None = None,
    ) -> Any:
        call = self._write_call(run_id, fields, want_record=want_record, lease=lease, event=event)
        return None if call is None else self._write_script(keys=call[0], args=call[1])

    def _write_call(
        self,
        run_id: str,
        fields: dict[str, Any],
        *,
        want_record: bool,
        lease: tuple[str, str] | None = None,
        event: tuple[str, Mapping[str, Any]] | None = None,
    ) -> tuple[list[str], list[Any]] | None:
        """`WRITE_SCRIPT`'s keys and arguments; `lease` is the step's name and the holder's token."""
        _refuse_identity(fields)
        if not is_run_id(run_id):
            return None  # as for a deleted run
        now = time.time()
        fields["updated_at"] = now
        record = self._checked_record_key(run_id)
        keys = [record, _events_key_under(record), _lease_key_under(record, lease[0] if lease else "-")]
        result_id = fields.get("sectra_result_id")
        if result_id is not None:
            keys.append(self._result_key(int(result_id)))
        name, data = event if event else ("", {})
        args = [
            self._ttl,
            run_id,
            "1" if want_record else "0",
            lease[1] if lease else "",
            name,
            f"{now:.6f}",
            _event_payload(data),
            _EVENTS_MAX,
            *_encode(fields),
        ]
        return keys, args

    def transition(self, run_id: str, to: RunStatus, *, retry: bool = False, **fields: Any) -> RunRecord:
        """Move a run to `to` (with checkpoint fields) if the state machine allows it, atomically.

        The check and the write happen under WATCH, so two workers racing on one run cannot both
        advance it: the loser re-reads and gets `IllegalTransition` (or a no-op same-state re-entry).
        """
        target = RunStatus(to)
        if "status" in fields:
            raise ValueError("pass the new status as `to`")
        _refuse_identity(fields)
        if not is_run_id(run_id):
            raise RunNotFound(run_id)
        key = self._record_key(run_id)
        with self._redis.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key)
                    raw_status, raw_app, raw_created = pipe.hmget(key, ["status", "app_id", "created_at"])
                    if raw_status is None:
                        raise RunNotFound(run_id)
                    current = RunStatus(json.loads(_text(raw_status)))
                    check_transition(run_id, current, target, retry=retry)
                    created_at = float(json.loads(_text(raw_created)))
                    now = time.time()
                    flat = _encode({**fields, "status": target, "updated_at": now})
                    pipe.multi()
                    pipe.hset(key, mapping=dict(zip(flat[::2], flat[1::2], strict=True)))
                    for k in (key, self._events_key(run_id)):
                        pipe.expire(k, self._ttl)
                    if current is not target:
                        new_index = self._index_status(target)
                        pipe.zrem(self._index_status(current), run_id)
                        pipe.zadd(new_index, {run_id: created_at})
                        pipe.zremrangebyscore(new_index, "-inf", f"({self._prune_before(now)}")
                        pipe.expire(new_index, self._ttl)
                    if fields.get("sectra_result_id") is not None:
                        result_key = self._result_key(int(fields["sectra_result_id"]))
                        pipe.hset(result_key, _text(raw_app), run_id)
                        pipe.expire(result_key, self._ttl)
                    pipe.hgetall(key)
                    replies = pipe.execute()
                    return _decode(replies[-1])
                except redis.WatchError:
                    continue

    def request_cancel(self, run_id: str, note: str) -> RunRecord:
        """Flag the run; the worker stops at its next checkpoint and writes the cancelled result itself."""
        record = self.update(run_id, cancel_requested=True, cancel_note=note)
        self.append_event(run_id, "cancel_requested", note=note, status=record.status.value)
        return record

    def delete(self, run_id: str) -> bool:
        """Remove the record, its audit trail, its blobs and its index entries; False if there was none."""
        record = self.get(run_id)
        if record is None:
            return False
        blob_names = [_text(name) for name in self._redis.smembers(self._blobs_key(run_id)) or ()]
        with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(self._record_key(run_id), self._events_key(run_id), self._blobs_key(run_id))
            for name in blob_names:
                if _BLOB_NAME.fullmatch(name):
                    pipe.delete(self._blob_key(run_id, name))
            # The hotspot gallery's keys (`workers.review`): its id -> run index and its create intent.
            pipe.delete(f"{self._prefix}:review-intent:{run_id}")
            if record.review_result_id is not None:
                pipe.hdel(f"{self._prefix}:review-result:{int(record.review_result_id)}", record.app_id)
            if record.sectra_result_id is not None:
                pipe.hdel(self._result_key(record.sectra_result_id), json.dumps(record.app_id))
            for index in (
                self._index_all(),
                self._index_status(record.status),
                self._index_app(record.app_id),
            ):
                pipe.zrem(index, run_id)
            pipe.execute()
        return True

    def list_runs(
        self, *, status: RunStatus | None = None, app_id: str | None = None, limit: int = 100
    ) -> list[RunRecord]:
        """Newest first; entries whose record has expired are dropped from the index on the way."""
        if limit <= 0:
            return []
        if status is not None:
            index = self._index_status(RunStatus(status))
        elif app_id is not None:
            index = self._index_app(app_id)
        else:
            index = self._index_all()
        found: list[RunRecord] = []
        for page in self._live_pages(index, max(limit, 50), lambda pipe, key: pipe.hgetall(key)):
            for _, reply in page:
                record = _decode(reply)
                if app_id is None or record.app_id == app_id:
                    found.append(record)
            if len(found) >= limit:
                break
        return found[:limit]

    def last_changes(self, status: RunStatus, *, page: int = 500) -> Iterator[list[tuple[str, float]]]:
        """The runs in `status` as (run id, `updated_at`), a page at a time, newest first.

        What the recovery sweep needs of every unfinished run, on every worker, every few seconds:
        one field per run and one round trip per page, not whole records (`list_runs`). Entries
        whose record has expired are dropped from the index on the way.
        """
        for found in self._live_pages(
            self._index_status(RunStatus(status)), page, lambda pipe, key: pipe.hget(key, "updated_at")
        ):
            yield [(run_id, float(json.loads(_text(value)))) for run_id, value in found]

    def _live_pages(
        self, index: str, page: int, read: Callable[[Any, str], object]
    ) -> Iterator[list[tuple[str, Any]]]:
        """An index's runs newest first, a page per round trip, each with what `read` queues on a
        pipeline for its record key (`hgetall`, or `hget` of one field). Entries whose record has
        expired are dropped from the index on the way; a page left empty by them is skipped."""
        start = 0
        while True:
            ids = [_text(i) for i in self._redis.zrevrange(index, start, start + page - 1)]
            if not ids:
                return
            with self._redis.pipeline(transaction=False) as pipe:
                for run_id in ids:
                    read(pipe, self._record_key(run_id))
                replies = pipe.execute()
            pairs = list(zip(ids, replies, strict=True))
            stale = [run_id for run_id, reply in pairs if not reply]
            if stale:
                self._redis.zrem(index, *stale)
            start += len(ids) - len(stale)
            live = [(run_id, reply) for run_id, reply in pairs if reply]
            if live:
                yield live

    # -- leases -------------------------------------------------------------------------------

    def _lease_key(self, run_id: str, name: str) -> str:
        return _lease_key_under(self._record_key(run_id), name)

    def claim_step(self, run_id: str, name: str, *, ttl_seconds: float, done_field: str) -> StepClaim:
        """Claim a once-only step of a run unless its output (`done_field`) is already recorded.

        One atomic check answers all four cases a retried request can meet: the run is gone,
        the step is done (with its recorded output), another holder is on it, or it is ours.
        """
        call = self.claim_step_call(run_id, name, ttl_seconds=ttl_seconds, done_field=done_field)
        if call is None:
            return StepClaim("gone")
        return call.outcome(self._claim_script(keys=call.keys, args=call.args))

    def claim_step_call(
        self, run_id: str, name: str, *, ttl_seconds: float, done_field: str
    ) -> ClaimCall | None:
        """What `claim_step` sends (None: no such run can exist), for a caller with its own client."""
        if done_field not in _FIELD_NAMES:
            raise ValueError(f"RunRecord has no field {done_field!r}")
        if not is_run_id(run_id):
            return None
        token = random_token()
        return ClaimCall(
            token,
            [self._record_key(run_id), self._lease_key(run_id, name)],
            [done_field, token, int(ttl_seconds * 1000)],
        )

    def create_and_claim(self, **request: Unpack[CreateAndClaimRequest]) -> tuple[str, bool, StepClaim]:
        """`create_or_get` and `claim_step` in one atomic round trip: (run id, created, claim).

        Exactly one of any number of concurrent callers creates the run, and at most one holds the
        step's lease; the others see it `busy`, or `done` with the step's recorded output.
        """
        call = self.create_and_claim_call(**request)
        return call.outcome(self._create_and_claim_script(keys=call.keys, args=call.args))

    def create_and_claim_call(self, **request: Unpack[CreateAndClaimRequest]) -> CreateAndClaimCall:
        """What `create_and_claim` sends, for a caller with its own (asynchronous) Redis client."""
        app_id, slide_id, cancellation_token = (
            request["app_id"],
            request["slide_id"],
            request["cancellation_token"],
        )
        step, ttl_seconds, done_field = request["step"], request["ttl_seconds"], request["done_field"]
        if done_field not in _FIELD_NAMES:
            raise ValueError(f"RunRecord has no field {done_field!r}")
        now = time.time()
        run_id = run_id_for(app_id, slide_id, cancellation_token)
        token = random_token()
        record = self._checked_record_key(run_id)
        keys = [
            record,
            self._index_all(),
            self._index_status(RunStatus.received),
            self._index_app(app_id),
            _lease_key_under(record, step),
        ]
        # The values are the strings of an invocation already validated where it entered
        # (`service.parsing`), so they are JSON-encoded as they are (as `_compact` spells a string),
        # not validated a second time; in `_NEW_RUN_FIELDS`' order.
        text = encode_basestring_ascii
        args = [
            self._ttl, now, self._prune_before(now), run_id, done_field, token, int(ttl_seconds * 1000),
            text(app_id), text(slide_id), text(cancellation_token), text(request["source"]),
            text(request["callback_url"]), text(request["callback_token"]),
        ]  # fmt: skip
        return CreateAndClaimCall(run_id, token, keys, args)

    def release_lease(self, run_id: str, name: str, token: str) -> None:
        """Release a lease if (and only if) this token still holds it."""
        if not is_run_id(run_id):
            return
        self._release_script(keys=[self._lease_key(run_id, name)], args=[token])

    # -- blobs --------------------------------------------------------------------------------

    def _blobs_key(self, run_id: str) -> str:
        return f"{self._record_key(run_id)}:blobs"

    def _blob_key(self, run_id: str, name: str) -> str:
        if not _BLOB_NAME.fullmatch(name):
            raise ValueError(f"not a blob name: must match {_BLOB_NAME.pattern}")
        return f"{self._record_key(run_id)}:blob:{name}"

    def put_blob(self, run_id: str, name: str, data: bytes, *, ttl_seconds: int | None = None) -> None:
        """Keep `data` beside the run (a density grid, a thumbnail), at most as long as the run is kept.

        Blobs are bytes the record should not carry (every record read would pay for them);
        `delete` removes them with the run, and they expire with it, or sooner (`ttl_seconds`).
        """
        if len(data) > BLOB_MAX_BYTES:
            raise ValueError(f"blob {name!r} is {len(data)} bytes; at most {BLOB_MAX_BYTES} are kept")
        key = self._blob_key(run_id, name)
        ttl = self._ttl if ttl_seconds is None else max(1, min(ttl_seconds, self._ttl))
        with self._redis.pipeline(transaction=True) as pipe:
            pipe.set(key, data, ex=ttl)
            pipe.sadd(self._blobs_key(run_id), name)
            pipe.expire(self._blobs_key(run_id), self._ttl)
            pipe.execute()

    def has_blob(self, run_id: str, name: str) -> bool:
        """Whether the run has that blob, without reading it."""
        return is_run_id(run_id) and bool(self._redis.exists(self._blob_key(run_id, name)))

    def get_blob(self, run_id: str, name: str) -> bytes | None:
        """The blob, or None when the run has none of that name (or is not a run id)."""
        if not is_run_id(run_id):
            return None
        value = self._redis.get(self._blob_key(run_id, name))
        if value is None:
            return None
        return value.encode("latin-1") if isinstance(value, str) else bytes(value)

    # -- audit trail --------------------------------------------------------------------------

    def append_event(self, run_id: str, event: str, **data: Any) -> str | None:
        """Append to the run's audit trail; returns the entry id, or None when the run is gone.

        Values keyed like credentials are replaced, and the entry passes the log redactor too:
        callers should pass identifiers and counts only, never slide metadata (PHI).
        """
        if not is_run_id(run_id):
            return None
        reply = self._append_script(
            keys=[self._record_key(run_id), self._events_key(run_id)],
            args=[self._ttl, _EVENTS_MAX, f"{time.time():.6f}", event, _event_payload(data)],
        )
        return None if reply is None else _text(reply)

    def events(self, run_id: str, limit: int | None = None) -> list[dict[str, Any]]:
        """The run's audit trail, oldest first; at most its first `limit` entries when given."""
        if not is_run_id(run_id) or (limit is not None and limit <= 0):
            return []
        key = self._events_key(run_id)
        out: list[dict[str, Any]] = []
        start = "-"
        while True:
            # Paged: one 10 000-entry reply is parsed in C, holding the GIL (so every thread of the
            # web process, its event loop included) for ~100 ms; a page takes a few.
            page = _EVENTS_PAGE if limit is None else min(_EVENTS_PAGE, limit - len(out))
            entries = self._redis.xrange(key, min=start, count=page) or []
            for entry_id, raw in entries:
                values = {_text(k): _text(v) for k, v in (raw or {}).items()}
                out.append(
                    {
                        "id": _text(entry_id),
                        "ts": float(values["ts"]),
                        "event": values["event"],
                        "data": _event_data(values.get("data", "{}")),
                    }
                )
            if len(entries) < page or (limit is not None and len(out) >= limit):
                return out
            millis, _, seq = _text(entries[-1][0]).partition("-")
            start = f"{millis}-{int(seq) + 1}"  # just after the last entry (XRANGE is inclusive)

    def ping(self) -> bool:
        try:
            return bool(self._redis.ping())
        except redis.RedisError:
            return False
