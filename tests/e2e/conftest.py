"""End-to-end harness: real Redis, a real Celery worker process, MockSectraServer, the fake Strand server.

The webhook runs in this process (uvicorn on a real port); the worker is
`sectra-bridge worker` in a subprocess, so a test can SIGKILL it and start a
new one exactly as Kubernetes would.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import redis
import uvicorn
from sectra_client.mock_server import MockSectraServer
from sectra_client.schemas import DisplayedName, ImageMetadata, Size
from sectra_client.schemas.image import FocalPlane, OpticalPath, SlideFormat, TileFormat

from strand_client.testing import FakeStrandServer
from tests.fixtures.slides import make_svs
from workers.runstore import RunRecord, RunStatus, RunStore

APP = "strand-default"
PHI = {"patientName": "Doe^Jane^Q", "accessionNumber": "ACC20260042"}
LABEL_MARKER = b"LBL-MARKER-7Q2Z-LBL"
TIL_APP = "strand-til"
AUTO_APP = "strand-auto"
CASE_APP = "strand-case"
FINAL = {RunStatus.completed, RunStatus.failed, RunStatus.cancelled}
APPS_YAML = """
strand-default:
  display_name: "Strand marker panel: CD8, PanCK, Ki67"
  markers: [CD8, PanCK, Ki67]
strand-til:
  display_name: "Strand TIL panel: CD3, CD8"
  markers: [CD3, CD8]
  model: v0.7
strand-auto:
  display_name: "Strand marker panel on new images: CD8, PanCK, Ki67"
  markers: [CD8, PanCK, Ki67]
  start_on_new_images: true
strand-case:
  display_name: "Strand marker panel, whole case: CD8, PanCK, Ki67"
  markers: [CD8, PanCK, Ki67]
  scope: case
strand-region:
  display_name: "Strand marker panel in a drawn region: CD8, PanCK, Ki67"
  markers: [CD8, PanCK, Ki67]
  input: taggedPolygon
  tags: [Tumour, Stroma]
strand-areas:
  display_name: "Strand CD8 and Ki67 in drawn areas"
  markers: [Ki67, CD8]
  input: multiArea
  overlay: hotspots
strand-reuse:
  display_name: "Strand marker panel, reusing earlier results: CD8, PanCK, Ki67"
  markers: [CD8, PanCK, Ki67]
  reuse_results: true
"""


def slide_metadata(slide_id: str, width: int, height: int, *, stain: str = "H&E") -> ImageMetadata:
    return ImageMetadata(
        id=slide_id,
        isStreamable=True,
        imageSize=Size(width=width, height=height),
        tileSize=Size(width=256, height=256),
        micronsPerPixel=0.5,
        focalPlanes=[FocalPlane(id="0", offsetUm=0.0)],
        opticalPaths=[OpticalPath(id="0", description="Brightfield")],
        storedTileFormat=TileFormat(mimeType="image/jpeg", extension="jpg"),
        availableTileFormats=[TileFormat(mimeType="image/jpeg", extension="jpg")],
        fileFormat=SlideFormat(mimeType="image/tiff"),
        staining=DisplayedName(displayName=stain),
        block=DisplayedName(displayName="A1"),
        accessionNumber=PHI["accessionNumber"],
        lisSlideId=f"LIS-{PHI['accessionNumber']}-1",
    )


def _die_with_parent() -> None:
    """A worker orphaned by a killed test run would steal the next run's tasks; Linux ends it for us."""
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class WorkerProcess:
    """`sectra-bridge worker` as a child process, with its log captured for inspection."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env = env
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        exe = Path(sys.executable).parent / "sectra-bridge"
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [str(exe), "worker", "--concurrency", "4"],
            env=self.env,
            stdout=log,
            stderr=log,
            preexec_fn=_die_with_parent,
        )
        log.close()

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


# `data.context["kind"]` of a result that shows how a run ended (`sectra_adapter` result builders).
_OUTCOME_KINDS = frozenset({"final", "failed", "cancelled"})


@dataclass
class Bridge:
    sectra: MockSectraServer
    strand: FakeStrandServer
    webhook_url: str
    store: RunStore
    redis: redis.Redis
    worker: WorkerProcess
    work_dir: Path
    slides_dir: Path
    env: dict[str, str] = field(default_factory=dict)

    def add_slide(
        self,
        slide_id: str,
        *,
        width: int = 1024,
        height: int = 768,
        stain: str = "H&E",
        content: Callable[[int, int, int], np.ndarray] | None = None,
    ) -> Path:
        path = make_svs(
            self.slides_dir / f"{PHI['accessionNumber']}_{slide_id}.svs",
            width=width,
            height=height,
            phi=PHI,
            label_marker=LABEL_MARKER,
            content=content,
        )
        self.sectra.add_slide(slide_metadata(slide_id, width, height, stain=stain))
        self.sectra.add_slide_files(slide_id, path)
        return path

    def invocation(
        self, slide_id: str, token: str | None = None, *, action: str = "create", app: str = APP
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "action": action,
            "applicationId": app,
            "slideId": slide_id,
            "callbackInfo": {"url": self.sectra.url, "token": self.sectra.token},
            "cancellationToken": token or str(uuid.uuid4()),
        }
        if action == "create":
            body["input"] = {"type": "wholeSlide"}
        return body

    def post(self, body: dict[str, Any]) -> httpx.Response:
        return httpx.post(f"{self.webhook_url}/sectra/{body['applicationId']}", json=body, timeout=30)

    def start_run(self, slide_id: str, token: str | None = None, *, app: str = APP) -> RunRecord:
        body = self.invocation(slide_id, token, app=app)
        answer = self.post(body)
        assert answer.status_code == 200, answer.text
        run_id = self.store.find(app, slide_id, body["cancellationToken"])
        assert run_id is not None
        return self.store.require(run_id)

    def wait_for(self, run_id: str, predicate: Any, timeout: float = 60.0) -> RunRecord:
        deadline = time.monotonic() + timeout
        record = self.store.require(run_id)
        while time.monotonic() < deadline:
            record = self.store.require(run_id)
            if predicate(record):
                return record
            time.sleep(0.1)
        raise AssertionError(
            f"run {run_id} did not reach the expected state in {timeout}s; it is {record.status}: "
            f"{record.message or record.error}\n--- worker log tail ---\n{self.worker.logs()[-4000:]}"
        )

    def wait_final(self, run_id: str, timeout: float = 60.0) -> RunRecord:
        """The run once it has ended and Sectra shows its outcome.

        A run is marked final just before its outcome is posted (so no progress line can follow the
        outcome: `workers.result_guard`), so the store says "failed" a moment before Sectra does.
        """
        record = self.wait_for(run_id, lambda r: r.status in FINAL, timeout)
        if record.sectra_result_id is None:
            return record
        deadline = time.monotonic() + min(timeout, 30.0)
        while time.monotonic() < deadline:
            results = self.all_results(record.slide_id, record.app_id)
            shown = [r for r in results if r.id == record.sectra_result_id]
            if shown and shown[0].data.context.get("kind") in _OUTCOME_KINDS:
                break
            time.sleep(0.05)
        return self.store.require(run_id)

    def results(self, slide_id: str, app: str = APP) -> list[Any]:
        """The slide's primitive results: one per run (pending, then progress, then the outcome)."""
        return [r for r in self.all_results(slide_id, app) if r.data.result.type.value != "patchCollection"]

    def galleries(self, slide_id: str, app: str = APP) -> list[Any]:
        """The slide's hotspot galleries (`patchCollection`): at most one per completed run."""
        return [r for r in self.all_results(slide_id, app) if r.data.result.type.value == "patchCollection"]

    def all_results(self, slide_id: str, app: str = APP) -> list[Any]:
        return self.sectra.get_results(app, slide_id)

    def worker_metrics(self) -> str:
        port = self.env["BRIDGE_WORKER_METRICS_PORT"]
        return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text

    def restart_worker(self, *, without: tuple[str, ...] = (), **env: str) -> None:
        """Replace the worker with one whose environment differs (as a redeploy would).

        `without` drops variables, so the worker runs with the product's defaults for them.
        """
        self.worker.stop()
        kept = {k: v for k, v in self.worker.env.items() if k not in without}
        self.worker = WorkerProcess({**kept, **env}, self.worker.log_path)
        self.worker.start()


def _start_webhook(app: Any) -> tuple[str, uvicorn.Server]:
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "webhook did not start"
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    return f"http://127.0.0.1:{port}", server


@pytest.fixture
def bridge(redis_url: str, tmp_path: Path) -> Iterator[Bridge]:
    from sectra_client import mock_server

    # Its own database: these tests flush it and run a worker on its queue.
    redis_url = redis_url.rsplit("/", 1)[0] + "/14"

    mock_server.print = lambda *a, **k: None  # type: ignore[attr-defined]
    client = redis.Redis.from_url(redis_url)
    client.flushdb()  # db 15 is the tests' own; a clean queue and store per end-to-end test
    sectra = MockSectraServer()
    sectra.run(port=0, host="127.0.0.1")
    strand = FakeStrandServer(job_duration=1.0, progress_step=0.25, heartbeat_interval=1.0)
    strand.start()
    work_dir = tmp_path / "work"
    slides_dir = tmp_path / "slides"
    slides_dir.mkdir()
    with socket.socket() as probe:  # a free port for the worker's Prometheus endpoint
        probe.bind(("127.0.0.1", 0))
        metrics_port = probe.getsockname()[1]
    apps_file = tmp_path / "apps.yaml"
    apps_file.write_text(APPS_YAML)
    env = {
        **os.environ,
        "BRIDGE_APPS_FILE": str(apps_file),
        "REDIS_URL": redis_url,
        "STRAND_API_KEY": strand.api_key,
        "STRAND_BASE_URL": strand.url,
        "SECTRA_ALLOWED_CALLBACK_URLS": sectra.url,
        "SECTRA_ALLOW_HTTP": "true",
        "BRIDGE_WORK_DIR": str(work_dir),
        "BRIDGE_LEASE_SECONDS": "4",
        "BRIDGE_JANITOR_INTERVAL_SECONDS": "1",
        "BRIDGE_PROGRESS_INTERVAL_SECONDS": "0.2",
        "BRIDGE_WORKER_METRICS_PORT": str(metrics_port),
        "BRIDGE_LOG_LEVEL": "INFO",
    }
    saved = dict(os.environ)
    os.environ.update(env)
    from service.app import create_app
    from workers import runtime
    from workers.celery_app import celery_app

    runtime.reset()
    celery_app.conf.broker_url = redis_url
    webhook_url, webhook = _start_webhook(create_app())
    worker = WorkerProcess(env, tmp_path / "worker.log")
    worker.start()
    bridge = Bridge(
        sectra, strand, webhook_url, runtime.context().store, client, worker, work_dir, slides_dir, env
    )
    try:
        yield bridge
    finally:
        # The test may have replaced the worker (`restart_worker`): stop the one running now, or it
        # outlives the test and takes the next test's steps with this test's dead servers in its env.
        bridge.worker.stop()
        webhook.should_exit = True
        strand.close()
        sectra.stop()
        runtime.reset()
        os.environ.clear()
        os.environ.update(saved)
