"""The worker role's process: Celery on the bridge queue, metrics, and a recovery sweep.

The thread pool suits this workload (network and disk bound; numpy and zstd
release the GIL) and keeps Prometheus metrics in one process. Crash recovery
does not depend on the pool: a sweep re-drives any run whose lease lapsed.
"""

from __future__ import annotations

import logging
import socket
import threading

from prometheus_client import start_http_server

from workers import runtime
from workers.celery_app import QUEUE, celery_app
from workers.observability import QUEUE_DEPTH, configure_logging
from workers.settings import get_settings
from workers.tasks import recover_runs

log = logging.getLogger(__name__)


def _sweep_forever(stop: threading.Event, interval: float, stale_after: float) -> None:
    while not stop.wait(interval):
        try:
            recover_runs(stale_after=stale_after)
            QUEUE_DEPTH.set(runtime.redis_client().llen(QUEUE))
        except Exception as exc:  # the sweep must outlive a Redis blip
            log.warning("recovery sweep failed", extra={"error_type": type(exc).__name__})


def start_recovery(stop: threading.Event, *, interval: float | None = None) -> threading.Thread:
    lease = get_settings().lease_seconds
    every = interval if interval is not None else max(5.0, lease / 2)
    thread = threading.Thread(
        target=_sweep_forever, args=(stop, every, lease * 2), name="bridge-recovery", daemon=True
    )
    thread.start()
    return thread


def run_worker(concurrency: int = 4, *, metrics_port: int | None = None) -> None:
    settings = get_settings()
    configure_logging(settings.log_level)
    port = settings.worker_metrics_port if metrics_port is None else metrics_port
    if port:
        start_http_server(port)
    stop = threading.Event()
    start_recovery(stop)
    try:
        celery_app.worker_main(
            [
                "worker",
                "--queues",
                QUEUE,
                "--pool",
                "threads",
                "--concurrency",
                str(concurrency),
                "--hostname",
                f"bridge@{socket.gethostname()}",
                "--loglevel",
                settings.log_level,
                "--without-gossip",
                "--without-mingle",
            ]
        )
    finally:
        stop.set()
