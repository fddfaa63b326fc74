"""`sectra-bridge serve --workers 2`: two processes on one port, each with the HTTP limits, and one
`/metrics` that reports both (prometheus_client's multiprocess mode).

Real parts: the command a deployment runs, Sectra's mock server, Redis. Which process answers a
request is the kernel's choice, so a process is told apart by what it wrote in the metrics
directory (prometheus_client's own files, read back with its own collector), never by timing.
"""

from __future__ import annotations

import os
import pickle
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil
import pytest
import redis
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector

from service.server import HttpLimits, LimitedProtocolFactory, server_config
from tests.service.conftest import SECTRA_TOKEN, RecordingSectra
from tests.service.live import assert_json_error, free_port, read_response

APP = "strand-default"
MAX_HEADER_BYTES = 4096


class Served:
    def __init__(
        self, proc: subprocess.Popen[bytes], url: str, port: int, metrics_dir: Path, log: Path
    ) -> None:
        self.proc, self.url, self.port, self.metrics_dir, self.log = proc, url, port, metrics_dir, log

    def worker_pids(self) -> list[int]:
        pids = []
        for child in psutil.Process(self.proc.pid).children():
            try:
                command = " ".join(child.cmdline())
            except psutil.Error:  # gone, or a zombie the supervisor has not reaped yet: not serving
                continue
            if "spawn_main" in command:
                pids.append(child.pid)
        return sorted(pids)


@pytest.fixture
def served(redis_url: str, sectra: RecordingSectra, tmp_path: Path) -> Iterator[Served]:
    url = redis_url.rsplit("/", 1)[0] + "/10"  # this test's own database: the queue is production's name
    client = redis.Redis.from_url(url)
    client.flushdb()
    port = free_port()
    metrics_dir = tmp_path / "metrics"
    log = tmp_path / "serve.log"
    env = {
        **os.environ,
        "REDIS_URL": url,
        "SECTRA_ALLOWED_CALLBACK_URLS": sectra.url,
        "SECTRA_ALLOW_HTTP": "true",
        "BRIDGE_LOG_LEVEL": "WARNING",
        "BRIDGE_HTTP_MAX_HEADER_BYTES": str(MAX_HEADER_BYTES),
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
    }
    exe = Path(sys.executable).parent / "sectra-bridge"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [str(exe), "serve", "--host", "127.0.0.1", "--port", str(port), "--workers", "2"],
            env=env,
            stdout=out,
            stderr=out,
        )
    server = Served(proc, f"http://127.0.0.1:{port}", port, metrics_dir, log)
    try:
        # Generous: on a loaded machine a spawned worker takes tens of seconds to import the app.
        deadline = time.monotonic() + 180
        while len(server.worker_pids()) < 2 or not _answers(server.url):
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, "serve --workers 2 did not come up"
            time.sleep(0.1)
        yield server
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        client.flushdb()
        client.close()
    assert '"level": "error"' not in log.read_text(), log.read_text()[-3000:]


def _answers(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def _runs_started(metrics_dir: Path, pid: int | None = None) -> float:
    """`bridge_runs_started_total` from the directory, or from one process's files alone."""
    path = metrics_dir
    if pid is not None:
        path = metrics_dir.parent / f"only-{pid}"
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir()
        for db in metrics_dir.glob(f"*_{pid}.db"):
            shutil.copy(db, path / db.name)
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(path))
    value = registry.get_sample_value("bridge_runs_started_total", {"app": APP})
    return value or 0.0


def _create(url: str, sectra_url: str) -> int:
    body = {
        "action": "create",
        "applicationId": APP,
        "slideId": "slide-42",
        "callbackInfo": {"url": sectra_url, "token": SECTRA_TOKEN},
        "cancellationToken": f"ct-{uuid.uuid4().hex[:12]}",
        "input": {"type": "wholeSlide"},
    }
    # A connection of its own each time, so the kernel hands each to whichever process accepts.
    return httpx.post(f"{url}/sectra/{APP}", json=body, timeout=30).status_code


def test_two_processes_serve_one_port_and_metrics_report_both(
    served: Served, sectra: RecordingSectra
) -> None:
    pids = served.worker_pids()
    assert len(pids) == 2
    sent = 0
    # Until both processes have served one (a process still importing the app accepts nothing yet).
    deadline = time.monotonic() + 180
    with ThreadPoolExecutor(max_workers=8) as pool:
        while not all(_runs_started(served.metrics_dir, pid) > 0 for pid in pids):
            assert time.monotonic() < deadline, "one process never served a create"
            assert served.worker_pids() == pids, "the supervisor replaced a worker (health ping missed)"
            codes = list(pool.map(lambda _: _create(served.url, sectra.url), range(8)))
            assert codes == [200] * 8
            sent += 8
    assert sectra.result_posts() == sent
    assert sum(_runs_started(served.metrics_dir, pid) for pid in pids) == sent
    # Whichever process answers `/metrics` reports the sum, and each process's own series.
    text = httpx.get(f"{served.url}/metrics", timeout=10).text
    assert f'bridge_runs_started_total{{app="{APP}"}} {float(sent)}' in text
    for pid in pids:
        assert f'bridge_queue_depth{{pid="{pid}"}}' in text


def test_every_process_refuses_an_oversized_head_with_our_json(served: Served) -> None:
    for _ in range(6):
        with socket.create_connection(("127.0.0.1", served.port), timeout=10) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: bridge\r\nX-Big: " + b"a" * (2 * MAX_HEADER_BYTES))
            response = read_response(sock)
        assert response is not None
        assert_json_error(response, 431, "headers_too_large")


def test_the_limits_reach_a_spawned_worker_intact() -> None:
    """uvicorn hands its configuration to each spawned worker by pickle; the protocol must survive it."""
    limits = HttpLimits(max_header_bytes=4096, header_timeout=3.0, body_timeout=4.0, max_connections=7)
    config = server_config("service.cli:served_app", host="127.0.0.1", port=0, limits=limits, workers=2)
    clone = pickle.loads(pickle.dumps(config))  # noqa: S301 (our own bytes)
    assert isinstance(clone.http, LimitedProtocolFactory)
    assert clone.http.limits == limits
    # A worker is taken for hung only after 30 s without answering its supervisor (uvicorn's 5 s
    # replaced busy workers on a loaded node, dropping their in-flight webhooks).
    assert clone.timeout_worker_healthcheck == 30
    clone.load()
    assert clone.http_protocol_class is clone.http
