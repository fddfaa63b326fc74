"""The worker role's process: Celery on the bridge queue, metrics, and a recovery sweep.

The thread pool suits this workload (network and disk bound; numpy and zstd
release the GIL) and keeps Prometheus metrics in one process. Crash recovery
does not depend on the pool: a sweep (one worker's turn at a time) re-drives any run whose lease
lapsed and whose step is overdue, and a janitor removes this pod's slide files of runs that ended
(see `workers.janitor`).
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import threading

from prometheus_client import start_http_server

from workers import runtime
from workers.celery_app import QUEUE, celery_app
from workers.janitor import start_janitor
from workers.observability import QUEUE_DEPTH, configure_logging
from workers.priority import queue_keys
from workers.settings import get_settings
from workers.tasks import recover_runs, take_recovery_turn

log = logging.getLogger(__name__)


# A turn lasts this share of the interval, so the worker that swept last can take the next turn on
# its own schedule, and a dead worker's turn has lapsed before the others next offer.
_TURN_SHARE = 0.9


def _sweep_forever(stop: threading.Event, interval: float) -> None:
    holder = f"{socket.gethostname()}:{os.getpid()}"
    # At once on start-up, unless another worker has the turn: then that sweep re-drives a dead
    # predecessor's runs. A sweep longer than its turn may overlap the next: harmless, since
    # re-driving supersedes the step's token.
    while True:
        try:
            client, prefix = runtime.redis_client(), runtime.context().store.prefix
            if take_recovery_turn(client, prefix, interval * _TURN_SHARE, holder):
                recover_runs()
            QUEUE_DEPTH.set(sum(client.llen(key) for key in queue_keys(QUEUE)))
        except Exception as exc:  # the sweep must outlive a Redis blip
            log.warning("recovery sweep failed", extra={"error_type": type(exc).__name__})
        if stop.wait(interval):
            return


def start_recovery(stop: threading.Event, *, interval: float | None = None) -> threading.Thread:
    # A dead worker's run moves again at most a lease plus one interval after it died.
    lease = get_settings().lease_seconds
    every = interval if interval is not None else max(1.0, min(5.0, lease / 3))
    thread = threading.Thread(target=_sweep_forever, args=(stop, every), name="bridge-recovery", daemon=True)
    thread.start()
    return thread


def start_metrics(port: int) -> None:
    """Serve Prometheus metrics on `port`; a port another process holds is a warning, not a crash.

    Two workers on one machine (a VM, or a second process started for more slots) read the same
    `BRIDGE_WORKER_METRICS_PORT`: the first serves it, the others take work without an endpoint
    of their own (give each its own port to scrape them all). Any other bind error (a privileged
    port, a bad address) is a configuration mistake and stops the worker.
    """
    try:
        start_http_server(port)
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            raise
        log.warning(
            "metrics port already in use on this host; this worker runs without a metrics endpoint",
            extra={"port": port},
        )


def run_worker(concurrency: int = 4, *, metrics_port: int | None = None) -> None:
    settings = get_settings()
    configure_logging(settings.log_level)
    port = settings.worker_metrics_port if metrics_port is None else metrics_port
    if port:
        start_metrics(port)
    stop = threading.Event()
    start_recovery(stop)
    ctx = runtime.context()
    start_janitor(
        stop,
        ctx.store,
        ctx.staging,
        retention_seconds=settings.staged_retention_hours * 3600,
        interval=settings.janitor_interval_seconds,
    )
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
                # Unique per process, so two workers on one host are two Celery nodes, not one name.
                f"bridge-{os.getpid()}@{socket.gethostname()}",
                "--loglevel",
                settings.log_level,
                "--without-gossip",
                "--without-mingle",
            ]
        )
    finally:
        stop.set()
