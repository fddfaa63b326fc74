"""A run's first step onto the Celery queue in one Redis round trip, without Celery's publisher.

`run_step.apply_async` costs the webhook about a quarter of its CPU per create: routing, option
merging, kombu's producer, and kombu's Redis channel building a new client for every publish, all
after a separate round trip for the step's scheduler token. The webhook sends one message per
create, always the same task with no countdown, so this writes the very bytes kombu's Redis
transport would write and queues them in the same atomic write as the token (a MULTI,
`queue_first_step`, or the script that records the webhook's pending result, `FIRST_STEP_LUA`):
a worker can never see the message before its token is current.

The message is Celery's message protocol version 2 (Celery docs, "Message Protocol": headers
`lang`, `task`, `id`, `root_id`, ..., body `[args, kwargs, embed]`) inside kombu's virtual
transport envelope (`kombu.transport.virtual.Channel.basic_publish`: the body base64-encoded,
`properties.delivery_tag` a fresh UUID, `delivery_info` the exchange and routing key), pushed
with LPUSH on the list of the message's priority (`kombu.transport.redis.Channel._put`,
`workers.priority.queue_key`). Celery's default queue is published through the default exchange
(`""`), with the queue's name as routing key, so no exchange binding is looked up.
tests/workers/test_step_queue.py compares it field by field with what `apply_async` writes and
has a real worker consume it.
"""

from __future__ import annotations

import base64
import json
import os
import re
import socket
from dataclasses import dataclass, field
from json.encoder import encode_basestring_ascii
from typing import Any

import redis

from workers.ids import uuid4_pair
from workers.priority import NORMAL, queue_key
from workers.redis_lane import CommandBatch, RedisLane
from workers.scheduler import CURRENT_STEP_LUA, StepScheduler

_HOST = socket.gethostname()
_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
_BODY_TAIL = json.dumps([{}, _EMBED])[1:]  # what follows the arguments in the body's JSON


@dataclass(frozen=True, slots=True)
class StepMessage:
    """What every step message of one task on one queue shares (read once from the Celery task)."""

    queue: str
    task: str
    time_limit: float | None
    soft_time_limit: float | None
    ignore_result: bool
    # Celery's `task_default_priority`, as `apply_async` gives a step without a priority of its own.
    priority: int = NORMAL
    # The envelope's JSON cut at its per-message values (`_envelope_chunks`), made with the message.
    chunks: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "chunks", _envelope_chunks(self))

    def encode(self, args: tuple[str, ...]) -> bytes:
        """The kombu Redis envelope of one Celery protocol-2 task message with these arguments."""
        task_id, delivery_tag = uuid4_pair()
        # `json.dumps([list(args), {}, _EMBED])`, with the constant part spelled once (`_BODY_TAIL`).
        body = f"[[{', '.join(map(encode_basestring_ascii, args))}], {_BODY_TAIL}".encode()
        # Celery's `saferepr` of the args tuple; ours are short ASCII ids, for which it is `repr`.
        argsrepr = encode_basestring_ascii(repr(args))[1:-1]
        # The JSON between the values is made once per message kind; the values go in place in the
        # order `_SLOTS` fixes (one join, not a template scanned per message).
        c = self.chunks
        return "".join(
            (
                c[0], base64.b64encode(body).decode(),
                c[1], task_id,
                c[2], task_id,
                c[3], argsrepr,
                c[4], _origin[0],
                c[5], task_id,
                c[6], delivery_tag,
                c[7],
            )
        ).encode()  # fmt: skip


# Placeholders for the envelope's values that differ per message; none can occur in what surrounds
# them (ids, names, numbers). `_SLOTS` is the order they take in the envelope's JSON, which `encode`
# fills in (checked when a message kind is made).
_TASK_ID, _BODY, _ARGSREPR, _DELIVERY_TAG, _ORIGIN = (
    "@@task-id@@", "@@body@@", "@@argsrepr@@", "@@delivery-tag@@", "@@origin@@"
)  # fmt: skip
_SLOTS = (_BODY, _TASK_ID, _TASK_ID, _ARGSREPR, _ORIGIN, _TASK_ID, _DELIVERY_TAG)
_PLACEHOLDER = re.compile("|".join(map(re.escape, (_TASK_ID, _BODY, _ARGSREPR, _DELIVERY_TAG, _ORIGIN))))
# Celery's `anon_nodename()`, `gen<pid>@<host>`, read once per process (`os.getpid` is a system call).
_origin = [f"gen{os.getpid()}@{_HOST}"]
os.register_at_fork(after_in_child=lambda: _origin.__setitem__(0, f"gen{os.getpid()}@{_HOST}"))


def _envelope_chunks(message: StepMessage) -> tuple[str, ...]:
    """The envelope's JSON as the text around its placeholders, which occur in `_SLOTS`' order."""
    text = _envelope_json(message)
    found = tuple(_PLACEHOLDER.findall(text))
    if found != _SLOTS:
        raise AssertionError(f"the envelope's values are in the order {found}, not {_SLOTS}")
    return tuple(_PLACEHOLDER.split(text))


def _envelope_json(message: StepMessage) -> str:
    headers: dict[str, Any] = {
        "lang": "py",
        "task": message.task,
        "id": _TASK_ID,
        "shadow": None,
        "eta": None,
        "expires": None,
        "group": None,
        "group_index": None,
        "retries": 0,
        "timelimit": [message.time_limit, message.soft_time_limit],
        "root_id": _TASK_ID,
        "parent_id": None,
        "argsrepr": _ARGSREPR,
        "kwargsrepr": "{}",
        "origin": _ORIGIN,
        "ignore_result": message.ignore_result,
        "replaced_task_nesting": 0,
        "stamped_headers": None,
        "stamps": {},
    }
    envelope = {
        "body": _BODY,
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": headers,
        "properties": {
            "correlation_id": _TASK_ID,
            # Where a result would be sent; this task's results are ignored, as for `apply_async`.
            "reply_to": "",
            "delivery_mode": 2,  # persistent
            "delivery_info": {"exchange": "", "routing_key": message.queue},
            "priority": message.priority,
            "body_encoding": "base64",
            "delivery_tag": _DELIVERY_TAG,
        },
    }
    return json.dumps(envelope)


@dataclass(frozen=True, slots=True)
class FirstStep:
    """A run's first step as a script writes it after its own work (`FIRST_STEP_LUA`): the step's key
    and the queue (`keys`), the token, its due time, the token's TTL and the message (`args`)."""

    token: str
    keys: tuple[str, str]
    args: tuple[str, str, int, bytes]


# `queue_first_step`'s writes in a Lua script (the token first): a format whose fields are the
# script's expressions for `FirstStep.keys` (key, queue) and `FirstStep.args` (current, due_at, ttl,
# message).
FIRST_STEP_LUA = CURRENT_STEP_LUA + "redis.call('LPUSH', {queue}, {message})\n"


def first_step(scheduler: StepScheduler, message: StepMessage, run_id: str) -> FirstStep:
    """A fresh step token and its message, for a script to queue (`FIRST_STEP_LUA`)."""
    key, token, due_at = scheduler.new_token_values(run_id)
    return FirstStep(
        token,
        (key, queue_key(message.queue, message.priority)),
        (token, due_at, scheduler.ttl_seconds, message.encode((run_id, token))),
    )


def queue_first_step(
    pipe: redis.client.Pipeline | CommandBatch,
    scheduler: StepScheduler,
    message: StepMessage,
    run_id: str,
) -> str:
    """A fresh step token and its message, queued on the caller's MULTI or batch (the token first);
    returns it."""
    token = scheduler.queue_new_token(pipe, run_id)
    pipe.lpush(queue_key(message.queue, message.priority), message.encode((run_id, token)))
    return token


def put_first_step(client: redis.Redis, scheduler: StepScheduler, message: StepMessage, run_id: str) -> str:
    """Make a fresh step token current and queue its message, atomically; returns the token."""
    with client.pipeline(transaction=True) as pipe:
        token = queue_first_step(pipe, scheduler, message, run_id)
        pipe.execute()
    return token


async def put_first_step_async(
    lane: RedisLane, scheduler: StepScheduler, message: StepMessage, run_id: str
) -> str:
    """`put_first_step` on the webhook's event loop (`workers.redis_lane`): the same MULTI, awaited."""
    batch = CommandBatch()
    token = queue_first_step(batch, scheduler, message, run_id)
    await lane.transaction(batch)
    return token
