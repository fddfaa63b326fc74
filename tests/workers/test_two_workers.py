"""Two `sectra-bridge worker` processes on one host, with the same metrics port, both take work.

A VM runs the worker command twice (or an operator starts a second process for more slots), and
both read the same `BRIDGE_WORKER_METRICS_PORT`. The second must not die on the busy port: it
warns and consumes the queue like the first. Real parts: two worker processes, a real Redis, and
the bridge's own recovery task as the unit of work (it needs only Redis).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import httpx
import pytest
import redis

from tests.e2e.conftest import WorkerProcess
from tests.service.live import free_port
from workers.celery_app import make_celery
from workers.tasks import RECOVER_TASK

DEADLINE_SECONDS = 60.0


def _log_lines(worker: WorkerProcess) -> list[dict[str, object]]:
    lines = []
    for line in worker.logs().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict):
            lines.append(entry)
    return lines


def _tasks_done(worker: WorkerProcess) -> int:
    """Celery's own trace line per finished task: "Task <name>[<id>] succeeded in ...s"."""
    return sum(
        1
        for entry in _log_lines(worker)
        if str(entry.get("event", "")).startswith(f"Task {RECOVER_TASK}[")
        and "succeeded" in str(entry.get("event", ""))
    )


@pytest.fixture
def worker_env(redis_url: str, tmp_path: Path) -> dict[str, str]:
    url = redis_url.rsplit("/", 1)[0] + "/11"  # this test's own database: it runs workers on its queue
    redis.Redis.from_url(url).flushdb()
    return {
        **os.environ,
        "REDIS_URL": url,
        "BRIDGE_WORK_DIR": str(tmp_path / "work"),
        "BRIDGE_WORKER_METRICS_PORT": str(free_port()),
        "BRIDGE_LOG_LEVEL": "INFO",
    }


def test_two_workers_on_one_metrics_port_both_take_work(worker_env: dict[str, str], tmp_path: Path) -> None:
    workers = [WorkerProcess(worker_env, tmp_path / f"worker-{i}.log") for i in (1, 2)]
    for worker in workers:
        worker.start()
    app = make_celery(worker_env["REDIS_URL"])
    try:
        deadline = time.monotonic() + DEADLINE_SECONDS
        # Keep work coming until each process has done some, or one has died, or time is up.
        while not all(_tasks_done(worker) for worker in workers):
            for worker in workers:
                assert worker.proc is not None
                assert worker.proc.poll() is None, f"a worker died:\n{worker.logs()[-3000:]}"
            assert time.monotonic() < deadline, "both workers did not take work:\n" + "\n---\n".join(
                w.logs()[-2000:] for w in workers
            )
            app.send_task(RECOVER_TASK)
            time.sleep(0.2)
        for worker in workers:
            assert worker.proc is not None and worker.proc.poll() is None
        port = worker_env["BRIDGE_WORKER_METRICS_PORT"]
        assert "bridge_runs_in_flight" in httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        warned = [
            entry
            for worker in workers
            for entry in _log_lines(worker)
            if entry.get("level") == "warning" and "metrics port" in str(entry.get("event"))
        ]
        assert len(warned) == 1, warned  # the one that found the port taken said so
    finally:
        for worker in workers:
            worker.stop()
        app.close()
