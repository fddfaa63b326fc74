"""What every pipeline stage needs: settings, the app catalogue, the run store, and the two clients.

Built once per worker process (clients keep their connection pools), and
built by tests and the demo with their own servers' addresses.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx

from sectra_adapter import Backoff, SectraAdapter, SharedTransport, Urllib3Transport
from strand_client import Client as StrandClient
from workers.apps import AppConfig
from workers.errors import RunCancelled
from workers.metering import CountingTransport, InFlight
from workers.runstore import RunRecord, RunStore
from workers.settings import Settings
from workers.staging import Staging
from workers.upload_index import UploadIndex


@dataclass
class PipelineContext:
    settings: Settings
    apps: dict[str, AppConfig]
    store: RunStore
    strand_factory: Callable[[], StrandClient]
    uploads: UploadIndex
    in_flight: InFlight
    sectra_transport: httpx.BaseTransport | None = None
    # The Sectra client's retry policy (tests shorten its waits); None = the client's default.
    sectra_backoff: Backoff | None = None
    # 0 = one status query per wait step; > 0 = follow the SSE stream for that many seconds.
    wait_slice_seconds: float = 0.0
    # Attempts of a failing step before the run is failed in plain words. Each attempt of a step that
    # failed transiently comes after the client's own retries of the request (6 tries by default),
    # so one request is sent at most 6 x 5 times before the pathologist is told.
    max_attempts: int = 5
    progress_interval: float = 5.0
    _strand: StrandClient | None = field(default=None, init=False, repr=False)
    # The wire under every Sectra adapter of this process (urllib3's pool is thread-safe and keyed by
    # server): a progress update every few seconds per run reuses a connection, not a handshake.
    _sectra_wire: httpx.BaseTransport | None = field(default=None, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def strand(self) -> StrandClient:
        """One Strand client per process: its pool is shared by all runs on this worker."""
        with self._lock:
            if self._strand is None:
                self._strand = self.strand_factory()
            return self._strand

    def sectra(self, record: RunRecord) -> SectraAdapter:
        """A Sectra adapter for this run's callback (each invocation names its own Sectra and token).

        Each adapter is its own httpx client (no cookies or tokens shared between runs) over the
        process's one connection pool.
        """
        with self._lock:
            if self._sectra_wire is None:
                self._sectra_wire = self.sectra_transport or CountingTransport("sectra", Urllib3Transport())
            wire = SharedTransport(self._sectra_wire)
        secret = self.settings.sectra_client_secret
        return SectraAdapter(
            record.callback_url,
            record.callback_token,
            allow_http=self.settings.allow_http,
            client_id=self.settings.sectra_client_id,
            client_secret=secret.get_secret_value() if secret else None,
            application_id=record.app_id,
            transport=wire,
            backoff=self.sectra_backoff,
        )

    def app(self, record: RunRecord) -> AppConfig:
        return self.apps[record.app_id]

    @property
    def staging(self) -> Staging:
        return Staging(self.settings.work_dir)

    def check_cancelled(self, run_id: str) -> None:
        record = self.store.get(run_id)
        if record is None or record.cancel_requested:
            raise RunCancelled(run_id)

    def close(self) -> None:
        with self._lock:
            if self._strand is not None:
                self._strand.close()
                self._strand = None
            if self._sectra_wire is not None and self.sectra_transport is None:
                self._sectra_wire.close()  # a transport the caller passed is the caller's to close
            self._sectra_wire = None
