"""The Celery broker transport: kombu's Redis transport, made to survive a Redis restart.

When the broker connection drops, Celery 5.7's consumer first collects the
connection (which detaches the transport from its client) and then closes
it. Whatever the old channel still does then needs a Redis client it can no
longer build: closing it asks kombu's Redis QoS to put the unacknowledged
messages back, and a task finishing meanwhile acknowledges its message
(`ack_log_error` from the event loop). kombu reads the detached client's
host and fails with an `AttributeError`, not one of the transport's connection
errors, so Celery calls it "Unrecoverable" and the worker exits (with status 0)
instead of reconnecting. The loaded soak met both: the restore (stop 10) and
the acknowledgement (stop 12, `test_a_run_survives_a_redis_restart_with_one_strand_job`).

Here building a client for a detached channel fails as what it is, a connection
error, which Celery logs and ignores on the way to reconnecting with backoff.
Nothing is lost: the unacknowledged messages stay in Redis's `unacked` hash
(Redis, not this process, holds them) and return after the visibility timeout,
where a step's token makes a redelivered one do nothing; and the workers'
recovery sweep re-drives each run whose step was lost well before that.
"""

from __future__ import annotations

import ssl
from typing import Any
from urllib.parse import parse_qs, urlsplit

import redis
from kombu.transport import redis as kombu_redis

# Celery setting `broker_transport`: a kombu transport class by its import path.
TRANSPORT = "workers.broker:Transport"


class Channel(kombu_redis.Channel):
    def _get_pool(self, asynchronous: bool = False) -> Any:
        # The one place a channel reads its connection's settings to build a client.
        if self.connection.client is None:
            raise redis.ConnectionError("the broker connection is gone; unacked messages stay in Redis")
        return super()._get_pool(asynchronous)


class Transport(kombu_redis.Transport):
    Channel = Channel


def celery_settings(broker_url: str) -> dict[str, Any]:
    """The Celery settings that put this transport under a `redis://` or `rediss://` broker URL.

    Naming the transport makes kombu ignore the URL's scheme, so what the `rediss` scheme alone
    would do is kept: TLS, with kombu's own default when the URL names no `ssl_*` option
    (`ssl_cert_reqs=none`; put `?ssl_cert_reqs=required` in the URL to verify the certificate).
    Other schemes (`sentinel://`) keep kombu's transport.
    """
    parts = urlsplit(broker_url)
    if parts.scheme not in ("redis", "rediss"):
        return {}
    settings: dict[str, Any] = {"broker_transport": TRANSPORT}
    if parts.scheme == "rediss" and not any(key.startswith("ssl_") for key in parse_qs(parts.query)):
        settings["broker_use_ssl"] = {"ssl_cert_reqs": ssl.CERT_NONE}
    return settings
