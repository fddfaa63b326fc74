"""The Celery broker transport: kombu's Redis transport, made to survive a Redis restart.

When the broker connection drops, Celery 5.7's consumer first collects the
connection (which detaches the transport from its client) and then closes
it. Closing the channel asks kombu's Redis QoS to put the unacknowledged
messages back, through a client it can no longer build: an `AttributeError`
that is not one of the transport's connection errors, so Celery calls it
"Unrecoverable" and the worker exits (with status 0) instead of reconnecting.

Here that restore fails as what it is, a connection error, which Celery
ignores on the way to reconnecting with backoff. Nothing is lost: the
unacknowledged messages stay in Redis's `unacked` hash (Redis, not this
process, holds them) and return after the visibility timeout, and the
workers' recovery sweep re-drives each run whose step was lost well before that.
"""

from __future__ import annotations

import ssl
from typing import Any
from urllib.parse import parse_qs, urlsplit

import redis
from kombu.transport import redis as kombu_redis

# Celery setting `broker_transport`: a kombu transport class by its import path.
TRANSPORT = "workers.broker:Transport"


class QoS(kombu_redis.QoS):
    def restore_unacked(self, client: Any = None) -> Any:
        if client is None and self.channel.connection.client is None:
            raise redis.ConnectionError("the broker connection is gone; unacked messages stay in Redis")
        return super().restore_unacked(client)


class Channel(kombu_redis.Channel):
    QoS = QoS


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
