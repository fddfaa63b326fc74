"""Following a job over `GET /jobs/{id}/stream` (Server-Sent Events).

A small decoder instead of httpx-sse: that library hides comment lines, and the
platform's only sign of life between snapshots is a `: heartbeat` comment every
15 s, which is exactly when a wait deadline has to be checked. It also yields
empty "phantom" events, which this decoder never does.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator

from strand_client._errors import (
    AuthError,
    JobTimeoutError,
    NotFoundError,
    PermissionDeniedError,
    StrandConnectionError,
    StrandError,
)
from strand_client._http import HttpSession
from strand_client._models import JobEvent
from strand_client._retry import RetryPolicy

log = logging.getLogger("strand_client")

# Three missed 15 s heartbeats: the connection is dead even if TCP has not noticed.
HEARTBEAT_READ_TIMEOUT = 45.0

# How far past its deadline a wait may run rather than reconnect: every line (a 15 s heartbeat too)
# restarts the read timer, so without reconnecting a wait could end one heartbeat late. A
# connection younger than this is kept, so a slow first answer never makes a reconnect loop.
_DEADLINE_SLACK = 2.0

# Outcomes that no reconnect will change.
_FINAL_ERRORS = (JobTimeoutError, AuthError, NotFoundError, PermissionDeniedError)


def iter_data(lines: Iterable[str], on_line: Callable[[], None]) -> Iterator[str]:
    """Yield the `data` of each non-empty `message` event; `on_line` runs for every line, heartbeats too."""
    event = ""
    data: list[str] = []
    for raw in lines:
        on_line()
        line = raw.rstrip("\r")
        if not line:
            if data and event in ("", "message"):
                payload = "\n".join(data)
                if payload.strip():
                    yield payload
            event, data = "", []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            event = value
        elif name == "data":
            data.append(value)


def follow_events(
    http: HttpSession,
    job_id: str,
    *,
    deadline: float | None = None,
    policy: RetryPolicy | None = None,
) -> Iterator[JobEvent]:
    """Yield each changed snapshot until a terminal one, reconnecting when the stream drops.

    Reconnecting is the client's retry layer: a connection that delivered an event
    starts a fresh count. Raises `JobTimeoutError` at `deadline`, and
    `StrandConnectionError` once reconnecting has failed `policy.max_retries`
    times in a row, so that a caller can fall back to polling.
    """
    policy = policy or http.policy
    drops = 0  # consecutive connections that ended without delivering anything
    last: tuple[str, float | None] | None = None

    def check_deadline() -> None:
        if deadline is not None and time.monotonic() >= deadline:
            raise JobTimeoutError(f"Strand job {job_id} is still running at the wait deadline")

    retrying = policy.retrying(
        lambda exc: isinstance(exc, _Dropped),
        what=f"job stream {job_id}",
        deadline=deadline,
        failures=lambda: drops,
    )
    try:
        for attempt in retrying:
            with attempt:
                while True:
                    check_deadline()
                    read_timeout = HEARTBEAT_READ_TIMEOUT
                    if deadline is not None:
                        read_timeout = max(0.05, min(read_timeout, deadline - time.monotonic()))
                    # A read may wait `read_timeout` after the last line, heartbeat or not; once that
                    # would end past the deadline, reconnect with a read timeout that ends at it.
                    reopen_at = None if deadline is None else deadline - read_timeout + _DEADLINE_SLACK

                    def on_line(reopen_at: float | None = reopen_at) -> None:
                        check_deadline()
                        if reopen_at is not None and time.monotonic() > reopen_at:
                            raise _Reopen

                    try:
                        with http.stream(f"/jobs/{job_id}/stream", read_timeout=read_timeout) as response:
                            content_type = response.headers.get("content-type", "").split(";")[0].strip()
                            if content_type != "text/event-stream":
                                raise StrandError(
                                    f"Job stream answered {content_type or 'no content type'}, not SSE"
                                )
                            for data in iter_data(response.iter_lines(), on_line):
                                event = _parse(data)
                                if event is None:
                                    continue
                                drops = 0
                                key = (event.status, event.progress)
                                if key == last:
                                    continue  # a reconnect replays the current snapshot
                                last = key
                                yield event
                                if event.is_terminal:
                                    return
                        reason = "stream ended before a terminal status"
                    except _Reopen:
                        continue
                    except _FINAL_ERRORS:
                        raise
                    except StrandError as exc:
                        # A read timeout at the deadline is the deadline, not a dropped stream.
                        check_deadline()
                        reason = f"{type(exc).__name__}: {exc.message}"
                    drops += 1
                    raise _Dropped(reason)
    except _Dropped as exc:
        raise StrandConnectionError(f"Job stream for {job_id} keeps dropping ({exc})") from exc


class _Dropped(Exception):
    """The stream ended or broke before a terminal snapshot: reconnect."""


class _Reopen(Exception):
    """The stream's read timeout now reaches past the deadline: reconnect with a shorter one, at once."""


def _parse(data: str) -> JobEvent | None:
    try:
        payload = json.loads(data)
    except json.JSONDecodeError:
        log.warning("Ignoring a job stream event that is not JSON")
        return None
    if not isinstance(payload, dict) or "status" not in payload:
        return None
    return JobEvent.from_wire(payload)
