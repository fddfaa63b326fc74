"""A broker channel whose connection Celery has collected (a Redis restart) fails as a connection
error, which Celery survives, not as the `AttributeError` that made the worker exit.

A real kombu connection on a real Redis, its transport detached from its client as Celery's
consumer leaves it; then the two things the old channel still does: put its unacked
messages back, and acknowledge a message a task has just finished. kombu's own transport is the
control: it must fail with `AttributeError` on the same steps, or this test proves nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import redis
from kombu import Connection
from kombu.transport import redis as kombu_redis

from workers.broker import Transport


@contextmanager
def _detached_channel(redis_url: str, transport: type) -> Iterator[kombu_redis.Channel]:
    connection = Connection(redis_url, transport=transport)
    channel = connection.default_channel
    channel.basic_publish(channel.prepare_message(b"step"), exchange="", routing_key="bridge-broker-test")
    message = channel.basic_get("bridge-broker-test", no_ack=False)
    assert message is not None
    # What Celery's consumer leaves when the broker connection drops: it collects the connection,
    # which detaches the transport from its client (kombu's `Transport._collect`), channel kept.
    channel.connection.client = None
    channel._pool = None  # a client is now built afresh, from the (gone) connection's settings
    channel.test_tag = message.delivery_tag  # type: ignore[attr-defined]
    try:
        yield channel
    finally:  # attached again, so kombu's exit-time restore of the unacked message works
        channel.connection.client = connection
        channel.qos.restore_unacked()
        channel.client.delete("bridge-broker-test")
        connection.release()


@pytest.mark.parametrize("step", ["restore_unacked", "ack"])
def test_a_detached_channel_fails_as_a_connection_error(redis_url: str, step: str) -> None:
    with (
        _detached_channel(redis_url, Transport) as channel,
        pytest.raises(redis.ConnectionError, match="broker connection is gone"),
    ):
        if step == "ack":
            channel.qos.ack(channel.test_tag)
        else:
            channel.qos.restore_unacked()


@pytest.mark.parametrize("step", ["restore_unacked", "ack"])
def test_kombus_own_transport_fails_there_with_attribute_error(redis_url: str, step: str) -> None:
    with (
        _detached_channel(redis_url, kombu_redis.Transport) as channel,
        pytest.raises(AttributeError, match="hostname"),
    ):
        if step == "ack":
            channel.qos.ack(channel.test_tag)
        else:
            channel.qos.restore_unacked()
