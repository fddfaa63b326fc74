"""Redis taken away mid-run: the workers reconnect, the run completes, Strand sees one job.

This module runs its own `redis-server` (AOF on, as the Helm chart runs it) in place of the shared
one, so it can stop and restart it under a live worker process.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.e2e.conftest import APP, FINAL, Bridge
from workers.runstore import RunStatus

# Private ports for this module's servers (the shared Redis is never restarted).
PORTS = range(6425, 6430)


class RedisServer:
    """`redis-server` in the foreground as a child, appendonly in its own directory."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            pytest.fail("this test needs redis-server on PATH")
        self.proc = subprocess.Popen(
            [
                exe,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
                "--save",
                "",
                "--dir",
                str(self.data_dir),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        client = redis.Redis(port=self.port, socket_connect_timeout=1)
        while True:
            try:
                if client.ping():
                    return
            except redis.RedisError:
                pass  # still starting or loading the AOF
            assert time.monotonic() < deadline, "redis-server did not start"
            assert self.proc.poll() is None, "redis-server exited at start"
            time.sleep(0.05)

    def stop(self) -> None:
        """SIGTERM: what a pod restart sends; Redis flushes its AOF and exits."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=20)


def _free_port() -> int:
    for port in PORTS:
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    pytest.fail(f"no free port for a private redis-server in {PORTS}")


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    data = tmp_path / "redis"
    data.mkdir()
    server = RedisServer(data)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_url(own_redis: RedisServer) -> str:
    """Overrides the session's Redis for this module: `bridge` then runs entirely on ours."""
    return own_redis.url


def test_a_run_survives_a_redis_restart_with_one_strand_job(bridge: Bridge, own_redis: RedisServer) -> None:
    bridge.add_slide("slide-outage")
    record = bridge.start_run("slide-outage")
    # Mid-run: the Strand job exists and the worker is following it.
    bridge.wait_for(record.run_id, lambda r: r.job_id is not None and r.status == RunStatus.waiting)
    job_id = bridge.store.require(record.run_id).job_id
    assert job_id is not None

    own_redis.stop()
    # Redis stays away until the job has ended on Strand, so the worker meets the outage for sure.
    deadline = time.monotonic() + 60
    while bridge.strand.jobs[job_id].status not in ("completed", "partial_failed", "failed"):
        assert time.monotonic() < deadline, "the Strand job did not finish"
        time.sleep(0.05)
    own_redis.start()

    worker = bridge.worker.proc
    assert worker is not None
    final = bridge.wait_for(record.run_id, lambda r: r.status in FINAL or worker.poll() is not None, 120)
    assert worker.poll() is None, f"the worker exited:\n{bridge.worker.logs()[-3000:]}"
    assert final.status == RunStatus.completed, final.error
    assert bridge.strand.stats.submits_accepted == 1, "exactly one Strand job"
    assert bridge.strand.stats.uploads_completed == 1
    assert len(bridge.results("slide-outage", APP)) == 1, "one result on the slide"


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:6379/0",
        "rediss://cache.example:6380/0",
        "rediss://cache.example:6380/0?ssl_cert_reqs=required",
    ],
)
def test_the_fixed_transport_keeps_what_the_url_scheme_says(url: str) -> None:
    """Naming our transport must not lose TLS: kombu's own reading of the URL is the oracle."""
    from kombu import Connection

    from workers.celery_app import make_celery

    ours = make_celery(url).connection_for_write()
    assert ours.transport_cls == "workers.broker:Transport"
    assert ours.ssl == Connection(url).ssl
    assert (ours.hostname, ours.port, ours.virtual_host) == (
        Connection(url).hostname,
        Connection(url).port,
        Connection(url).virtual_host,
    )
