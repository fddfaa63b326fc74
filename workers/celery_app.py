"""The Celery application: Redis broker, late acks, one task at a time per worker slot.

Every pipeline step is short and idempotent and checkpoints in the run store,
so redelivery after a crash is safe; the settings below make sure a crash
*does* lead to redelivery instead of a silently lost run.
"""

from __future__ import annotations

from celery import Celery

from workers.broker import celery_settings as broker_settings
from workers.priority import NORMAL, PRIORITY_STEPS
from workers.settings import get_settings

QUEUE = "bridge"

# Longer than the longest single step (a multi-GiB slide download or upload on a slow
# hospital uplink). Kombu re-delivers an unacked message only after this long, so crash
# recovery does not rely on it: the recovery sweep (`workers.tasks.recover_runs`, offered by every
# worker at start-up and every few seconds, run by one at a time) re-drives a run once its lease
# lapsed and its step is overdue.
VISIBILITY_TIMEOUT_SECONDS = 6 * 3600


def make_celery(broker_url: str | None = None) -> Celery:
    """Build the app; tests and the demo pass their own broker URL."""
    settings = get_settings()
    url = broker_url or settings.redis_url
    app = Celery("sectra_bridge", broker=url, include=["workers.tasks"])
    transport_options = {"visibility_timeout": VISIBILITY_TIMEOUT_SECONDS}
    # Redis priorities (Celery docs, "Redis Message Priorities"): one list per step, lower first;
    # `workers.priority` maps Sectra's image priority onto them.
    priorities = {"priority_steps": PRIORITY_STEPS, "queue_order_strategy": "priority"}
    app.conf.update(
        # kombu's Redis transport, fixed to reconnect after a Redis restart (see workers.broker).
        **broker_settings(url),
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        task_default_queue=QUEUE,
        task_default_priority=NORMAL,
        task_serializer="json",
        accept_content=["json"],
        # Celery reads the visibility timeout in three places; they must agree.
        broker_transport_options={**transport_options, **priorities},
        result_backend_transport_options=transport_options,
        visibility_timeout=VISIBILITY_TIMEOUT_SECONDS,
        broker_connection_retry_on_startup=True,
        worker_cancel_long_running_tasks_on_connection_loss=True,
        worker_hijack_root_logger=False,
        task_time_limit=VISIBILITY_TIMEOUT_SECONDS - 600,
        worker_send_task_events=False,
        # Used by the prefork pool only: the thread pool's SIGTERM is a warm shutdown that waits for
        # running steps, and the chart's grace period (this + 30 s) bounds it. A step cut off by the
        # kubelet is safe: its lease lapses and the recovery sweep re-drives the run.
        worker_soft_shutdown_timeout=settings.worker_soft_shutdown_seconds,
        worker_enable_soft_shutdown_on_idle=True,
    )
    return app


celery_app = make_celery()
