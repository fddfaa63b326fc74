"""JSON logs and Prometheus metrics for both roles (web and worker).

Logs are one JSON object per line with `run_id`, `app`, `stage` and `event`
when known, so an operator can follow a run across processes with `grep`.
Secrets and PHI must never reach a log line: callers log identifiers and
counts, and the formatter additionally masks anything shaped like a bearer
token or a Strand key in case one slips into an exception message. Masking
works on each string of the structured entry before it is serialised: run on
JSON text, a pattern could eat the backslash of an escaped quote and leave a
line that no longer parses.
"""

from __future__ import annotations

import contextvars
import logging
import re
import sys
import time
from typing import Any

from prometheus_client import Counter, Gauge, Histogram
from pydantic_core import to_json

_run_context: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar(
    "bridge_run_context", default=None
)

_SECRET_PATTERNS = [
    re.compile(r"sk-strand-[A-Za-z0-9_\-]+"),
    re.compile(r"(?i)(bearer|basic)\s+[A-Za-z0-9._~+/=\-]+"),
    re.compile(r"(?i)(token|api[_-]?key|secret|password)(['\"]?\s*[:=]\s*['\"]?)[^\s'\",}]+"),
]
# All three at once, for the common case of a line with nothing to mask (each pattern's own flags
# scoped to it): a string it finds nothing in is one no pattern would change.
_ANY_SECRET = re.compile(
    "|".join(
        f"(?{'i' if p.pattern.startswith('(?i)') else ''}:{p.pattern.removeprefix('(?i)')})"
        for p in _SECRET_PATTERNS
    )
)


def may_hold_secret(text: str) -> bool:
    """Some pattern would mask something in `text`: a few substring checks first (the patterns' scan of
    every position costs more than the rest of a log line), the patterns only when one hits."""
    if text.isascii() and not _has_secret_word(text.lower()):
        return False
    return _ANY_SECRET.search(text) is not None


def _has_secret_word(lowered: str) -> bool:
    """A word every pattern needs (case aside) is in this lowercased ASCII text: one holding none of them
    matches none of them. Spelled out, not a generator over a tuple: that costs more than the searches."""
    return (
        "sk-strand-" in lowered
        or "bearer" in lowered
        or "basic" in lowered
        or "token" in lowered
        or "api" in lowered
        or "secret" in lowered
        or "password" in lowered
    )


_STANDARD_ATTRS = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


def redact(text: str) -> str:
    """Mask anything that looks like a credential in one plain string (never in serialised JSON)."""
    if not may_hold_secret(text):
        return text
    # A credential after its scheme word or its key's name first, the bare Strand key last: a key in a
    # bearer header is then masked as one credential ("Bearer ***"), not as what is left of it.
    text = _SECRET_PATTERNS[1].sub(lambda m: f"{m.group(1)} ***", text)
    text = _SECRET_PATTERNS[2].sub(lambda m: f"{m.group(1)}{m.group(2)}***", text)
    return _SECRET_PATTERNS[0].sub("sk-strand-***", text)


def redact_value(value: Any) -> Any:
    """`redact` applied to every string (keys included) of a JSON-shaped value; a last line of
    defence, not the first. Run it before `json.dumps`, so escaping stays the serialiser's job."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {redact(str(k)): redact_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact_value(v) for v in value]
    return value


class JsonFormatter(logging.Formatter):
    """One JSON object per line, carrying the current run's context."""

    # The line's whole-second time, made once per second: `strftime` costs more than the rest of a line.
    _second: tuple[int, str] = (-1, "")

    def format(self, record: logging.LogRecord) -> str:
        second = int(record.created)
        cached = self._second
        if cached[0] != second:
            cached = self._second = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
        entry: dict[str, Any] = {
            "ts": f"{cached[1]}.{int(record.msecs):03d}Z",
            "level": _LEVEL_NAMES.get(record.levelname) or record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        context = _run_context.get()
        if context:
            entry.update(context)
        # What the caller passed in `extra` (a set difference in C, then in a stable order).
        extra = record.__dict__.keys() - _STANDARD_ATTRS
        if extra:
            attributes = record.__dict__
            for key in sorted(extra) if len(extra) > 1 else extra:
                if key[:1] != "_":
                    value = attributes[key]
                    plain = type(value) in _SCALARS or isinstance(value, (int, float))
                    entry[key] = value if plain else str(value)
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        # pydantic-core's serializer: a few times faster than `json.dumps` for a line (non-ASCII text is
        # written as UTF-8 rather than escaped).
        line = to_json(entry, fallback=str).decode()
        # The line as it stands, unless it holds a word some secret pattern needs. Checked on the JSON
        # of the whole entry at once: JSON escapes no letter, so a word in any key or string is in the
        # line too. Only an ASCII line is judged so (case folding can turn a non-ASCII letter into one
        # of a word's); any other line takes the exact path, where the patterns run on each string.
        if line.isascii() and not _has_secret_word(line.lower()):
            return line
        probe = "\n".join([*entry, *[value for value in entry.values() if isinstance(value, str)]])
        return to_json(redact_value(entry), fallback=str).decode() if may_hold_secret(probe) else line


# The level names as a line spells them, and the extra values written as they are (any other is
# written as its `str`).
_LEVEL_NAMES = {name: name.lower() for name in logging.getLevelNamesMapping()}
_SCALARS = frozenset({int, float, bool, type(None)})


def configure_logging(level: str = "INFO") -> None:
    """Route every logger (ours, Celery's, uvicorn's) through the JSON formatter on stderr."""
    # What no line of ours shows, not gathered for each record (the logging HOWTO's "Optimization"):
    # the caller's file and line (a walk up the stack), the thread, the process and its name.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("httpx", "httpcore", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


class run_context:
    """Attach `run_id`, `app`, `stage` (any subset) to every log line inside the block.

    A class rather than a `@contextmanager` generator: entered on every create, where a generator's
    set-up and the context manager wrapped around it cost more than the context itself."""

    __slots__ = ("_fields", "_token")

    def __init__(self, **fields: str) -> None:
        self._fields = fields

    def __enter__(self) -> None:
        outer = _run_context.get()
        given = {k: v for k, v in self._fields.items() if v}
        self._token = _run_context.set({**outer, **given} if outer else given)

    def __exit__(self, *_: object) -> None:
        _run_context.reset(self._token)


RUNS_FINISHED = Counter("bridge_runs_finished_total", "Runs that reached a final status", ["app", "status"])
RUNS_STARTED = Counter("bridge_runs_started_total", "Runs accepted from Sectra", ["app"])
RUNS_IN_FLIGHT = Gauge("bridge_runs_in_flight", "Runs not yet in a final status", multiprocess_mode="livesum")
STAGE_SECONDS = Histogram(
    "bridge_stage_duration_seconds",
    "Wall time of one pipeline stage execution",
    ["stage"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800),
)
BYTES_DOWNLOADED = Counter("bridge_slide_bytes_downloaded_total", "Slide bytes streamed from Sectra")
BYTES_UPLOADED = Counter("bridge_slide_bytes_uploaded_total", "Slide bytes sent to Strand")
CREDITS_RESERVED = Counter(
    "bridge_strand_credits_reserved_total", "Credits reserved by submitted jobs", ["app"]
)
EXTERNAL_CALLS = Counter(
    "bridge_external_calls_total", "Outbound calls by service and outcome", ["service", "outcome"]
)
QUEUE_DEPTH = Gauge("bridge_queue_depth", "Tasks waiting in the Celery queue")
HOTSPOT_REVIEWS = Counter(
    "bridge_hotspot_reviews_total",
    "Hotspot patches the pathologist kept (Agree) or rejected (Artefact); a repeated verdict counts once",
    ["app", "verdict"],
)
