"""`FakeStrandServer`: the fake platform on a real socket (uvicorn in a daemon thread), with the
switches and counters tests use, and `serve_forever` for `sectra-bridge fake-strand`."""

from __future__ import annotations

import logging
import socket
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import uvicorn

from strand_client.testing.api import SseDropped, build_app
from strand_client.testing.counting import RequestCounting, RequestCounts
from strand_client.testing.faults import Faults
from strand_client.testing.result_store import ResultStores
from strand_client.testing.state import (
    DEFAULT_API_KEY,
    FakeOptions,
    FakeState,
    JobRecord,
    Outcome,
    Stats,
    UploadRecord,
)
from strand_client.testing.zarr_results import ResultsFixture


class _QuietDrops(logging.Filter):
    """Injected SSE drops are deliberate; keep uvicorn from logging them as application errors."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        while exc is not None:
            if isinstance(exc, SseDropped):
                return False
            if isinstance(exc, BaseExceptionGroup):
                return not any(isinstance(e, SseDropped) for e in exc.exceptions)
            exc = exc.__cause__ or exc.__context__
        return True


_QUIET_DROPS = _QuietDrops()


class FakeStrandServer:
    """The whole Strand REST API (plus the GCS upload endpoint) in-process, on `port` (0 = any free one).

    Keyword options are `FakeOptions` fields (job timing, credits, entitlements,
    result layout ...); `options` stays live, so a test may change it mid-run.
    Uploaded bytes live in `storage_dir` (a temporary directory by default).
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        api_key: str = DEFAULT_API_KEY,
        storage_dir: str | Path | None = None,
        **options: Any,
    ) -> None:
        self.host = host
        self._port = port
        self.api_key = api_key
        self.options = FakeOptions(**options)
        self._tempdir: tempfile.TemporaryDirectory[str] | None = None
        if storage_dir is None:
            self._tempdir = tempfile.TemporaryDirectory(prefix="fake-strand-")
            storage_dir = self._tempdir.name
        Path(storage_dir).mkdir(parents=True, exist_ok=True)
        self._state = FakeState(self.options, Path(storage_dir))
        self.faults = Faults()
        self.requests = RequestCounts()  # answers by (method, route template, status)
        self._results = ResultStores(self.options)
        self._closing = threading.Event()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None

    # ---------- lifecycle ----------

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        """The base URL a `Client` takes (`{url}/api/v1/...` is the API)."""
        return f"http://{self.host}:{self._port}"

    def start(self) -> FakeStrandServer:
        if self._server is not None:
            raise RuntimeError("FakeStrandServer is already running")
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((self.host, self._port))
        self._port = self._sock.getsockname()[1]
        self._closing.clear()
        self._server = uvicorn.Server(self._config())
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, name="fake-strand", daemon=True
        )
        self._thread.start()
        deadline = time.monotonic() + 10.0
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("FakeStrandServer did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._closing.set()  # ends open SSE streams, which would otherwise hold up the shutdown
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self._sock is not None:
            self._sock.close()
        self._server = self._thread = self._sock = None

    def close(self) -> None:
        """Stop and delete the stored upload bytes."""
        self.stop()
        if self._tempdir is not None:
            self._tempdir.cleanup()

    def serve_forever(self) -> None:
        """Run in the foreground until interrupted (the CLI's `fake-strand`)."""
        server = uvicorn.Server(self._config())
        server.run()

    def __enter__(self) -> FakeStrandServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _config(self) -> uvicorn.Config:
        logging.getLogger("uvicorn.error").addFilter(_QUIET_DROPS)  # adding the same filter twice is a no-op
        app = RequestCounting(
            build_app(self._state, self.faults, self._results, self.api_key, self._closing), self.requests
        )
        return uvicorn.Config(
            app,
            host=self.host,
            port=self._port,
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=2,
        )

    # ---------- what tests read ----------

    @property
    def stats(self) -> Stats:
        return self._state.stats

    @property
    def jobs(self) -> Mapping[str, JobRecord]:
        """Every job, brought up to date with the clock first."""
        with self._state.lock:
            return {job_id: job for job_id in list(self._state.jobs) if (job := self._state.job(job_id))}

    @property
    def uploads(self) -> Mapping[str, UploadRecord]:
        with self._state.lock:
            return {key: upload for key in list(self._state.uploads) if (upload := self._state.upload(key))}

    @property
    def balance(self) -> int:
        """Credits the organisation holds (completed jobs are charged; reservations are not deducted)."""
        return self._state.balance

    @balance.setter
    def balance(self, credits: int) -> None:
        with self._state.lock:
            self._state.balance = credits

    @property
    def pending(self) -> int:
        """Credits reserved by jobs still queued or running."""
        return self._state.pending()

    def upload_path(self, upload_id: str) -> Path:
        """The bytes Strand stored for an upload, on disk."""
        return self._state.uploads[upload_id].path

    def results_fixture(self, job_id: str) -> ResultsFixture:
        """The store a finished job serves, with its ground truth."""
        job = self._state.job(job_id)
        if job is None or not job.has_results:
            raise KeyError(f"job {job_id} has no results")
        return self._results.get(job, self._state.upload(job.upload_id))

    # ---------- job control ----------

    def advance(
        self, job_id: str, status: str, progress: float | None = None, error_message: str | None = None
    ) -> None:
        """Set a job's status by hand (its clock stops); terminal statuses settle its credits."""
        self._state.advance(job_id, status, progress, error_message)

    def fail_next_job(self, message: str = "Inference failed: out of GPU memory") -> None:
        self._state.queue_outcome(Outcome("failed", message))

    def partial_fail_next_job(self, missing_markers: Sequence[str], message: str | None = None) -> None:
        self._state.queue_outcome(Outcome("partial_failed", message, tuple(missing_markers)))

    # ---------- fault injection ----------

    def fail_next_puts(self, n: int, status: int = 503, retry_after: float | None = None) -> None:
        """The next `n` PUTs to any upload session (status queries too) answer `status`, storing nothing."""
        self.faults.fail_puts(n, status, retry_after)

    def keep_partial_next_puts(self, n: int, fraction: float = 0.5) -> None:
        """The next `n` data PUTs keep only `fraction` of their bytes (down to 256 KiB); the 308 says so."""
        self.faults.keep_partial(n, fraction)

    def periodic_put_faults(
        self,
        fail_every: int | None = None,
        keep_partial_every: int | None = None,
        status: int = 503,
        fraction: float = 0.5,
    ) -> None:
        """Fail every `fail_every`-th data PUT and keep part of every `keep_partial_every`-th one."""
        self.faults.periodic(fail_every, keep_partial_every, status, fraction)

    def drop_sse_after(self, k: int, connections: int = 1, abrupt: bool = True) -> None:
        """The next `connections` job streams end after `k` events (cut mid-stream if `abrupt`)."""
        self.faults.drop_sse(k, connections, abrupt)

    def reject_next_submits(
        self, n: int, status: int = 429, retry_after: float | None = 1, after_create: bool = False
    ) -> None:
        """The next `n` submits answer `status`; with `after_create` the job is created anyway."""
        self.faults.reject_submits(n, status, retry_after, after_create)

    def fail_next_requests(
        self, path_prefix: str, n: int, status: int = 503, retry_after: float | None = None
    ) -> None:
        """The next `n` requests under `path_prefix` (e.g. `/api/v1/jobs`) answer `status`."""
        self.faults.fail_requests(path_prefix, n, status, retry_after)

    @property
    def latency(self) -> float:
        return self.faults.latency

    @latency.setter
    def latency(self, seconds: float) -> None:
        """Delay added to every answer (the request itself is handled at once)."""
        self.faults.latency = seconds

    def forget_session(self, upload_url: str) -> None:
        """The session behind `upload_url` vanishes: its next PUT answers 404, as an expired GCS session."""
        token = upload_url.rstrip("/").rsplit("/", 1)[-1]
        with self._state.lock:
            self._state.sessions.pop(token, None)


def serve_forever(host: str = "127.0.0.1", port: int = 8765, **options: Any) -> None:
    """Run a fake Strand server in the foreground: `sectra-bridge fake-strand --port P`."""
    server = FakeStrandServer(host=host, port=port, **options)
    print(f"Fake Strand on {server.url} (STRAND_API_KEY={server.api_key})", flush=True)
    try:
        server.serve_forever()
    finally:
        server.close()
