"""What the throughput benches share: a private Redis, the two fake remotes, the real webhook, and
`sectra-bridge worker` processes, started the way tests/e2e/conftest.py starts them.

Real parts throughout: a `redis-server` of the bench's own (so `INFO` counts only this bench),
MockSectraServer and FakeStrandServer on real sockets, the webhook (`service.app.create_app`) under
uvicorn in this process, and each worker a separate `sectra-bridge worker` process that can be
SIGKILLed and replaced as Kubernetes would. The fakes live in this process so their counters can
be read directly; the workers, which do the measured work, do not share its interpreter.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import redis
from sectra_client import mock_server
from sectra_client.mock_server import MockSectraServer

from strand_client.testing import FakeStrandServer
from strand_client.testing.counting import RequestCounting, RequestCounts

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script from anywhere (tests.fixtures is not installed)

APP_ID = "strand-default"
APPS_YAML = """
strand-default:
  display_name: "Strand marker panel: CD8, PanCK, Ki67"
  markers: [CD8, PanCK, Ki67]
"""
PHI = {"patientName": "Doe^Jane^Q", "accessionNumber": "ACC20260042"}
LABEL_MARKER = b"LBL-MARKER-7Q2Z-LBL"
FINAL = frozenset({"completed", "failed", "cancelled"})
# The stage boundaries in a run's audit trail: each stage ends with its `stage_done` event, except
# waiting, which ends with `job_finished` (workers/pipeline.py).
STAGES = ("downloading", "deidentifying", "uploading", "submitting", "waiting", "summarising", "publishing")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _die_with_parent() -> None:
    """A child orphaned by a killed bench would keep serving or stealing tasks; Linux ends it."""
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def wait_until(predicate: Any, timeout: float, what: str, every: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} within {timeout:g} s")
        time.sleep(every)


def dir_bytes(path: Path) -> int:
    """Bytes of the regular files under `path` (a work volume), 0 when it does not exist."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(FileNotFoundError):  # a step may delete it meanwhile
                total += os.lstat(os.path.join(root, name)).st_size
    return total


# ---- Redis ---------------------------------------------------------------------------------------


class RedisServer:
    """A `redis-server` child of this bench, without persistence, so `INFO` is the bench's alone."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.url = f"redis://127.0.0.1:{port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> RedisServer:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", self.port)) == 0:
                raise RuntimeError(f"port {self.port} is taken; pass another --redis-port")
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,
        )
        client = redis.Redis.from_url(self.url)

        def up() -> bool:
            try:
                return bool(client.ping())
            except redis.ConnectionError:
                return False

        wait_until(up, 10, "redis-server did not answer")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)


@dataclass(frozen=True)
class RedisCounters:
    """Commands Redis processed, in total and by command (`INFO stats`, `INFO commandstats`)."""

    at: float
    total: int
    by_command: dict[str, int]
    used_memory: int

    @classmethod
    def read(cls, client: redis.Redis) -> RedisCounters:
        """Three INFO calls, which count themselves (`minus` leaves them out of the deltas)."""
        stats = client.info("stats")
        commands = client.info("commandstats")
        memory = client.info("memory")
        by_command = {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in commands.items()}
        return cls(
            time.monotonic(), int(stats["total_commands_processed"]), by_command, memory["used_memory"]
        )

    def minus(self, earlier: RedisCounters) -> dict[str, int]:
        delta = {k: n - earlier.by_command.get(k, 0) for k, n in self.by_command.items()}
        delta["info"] = delta.get("info", 0) - 3
        return {k: n for k, n in delta.items() if n}

    def commands_since(self, earlier: RedisCounters, bench_commands: int) -> int:
        """Commands the product sent between the two reads: without the reads' own INFO calls
        and without `bench_commands` (the bench's polling)."""
        return self.total - earlier.total - 3 - bench_commands


_KEY_PARTS = (
    (re.compile(r"run-[0-9a-f]{24}"), "{run}"),
    (re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"), "{uuid}"),
    (re.compile(r"[0-9a-f]{16,}"), "{digest}"),
    (re.compile(r"(?<=[:.])\d+(?=$|[:.])"), "{n}"),
)


@dataclass(frozen=True)
class KeyClass:
    """Keys of one shape in a census: how many, their bytes (`MEMORY USAGE ... SAMPLES 0`), their TTL."""

    shape: str
    keys: int
    total_bytes: int
    ttl_s: float | None  # the median remaining TTL; None: the keys never expire


def redis_census(client: redis.Redis) -> list[KeyClass]:
    """Every key in the bench's Redis, grouped by shape (run ids, UUIDs, digests and counters
    replaced), largest first: what a run leaves behind, measured by Redis itself rather than by
    the product's idea of which keys a run has."""
    sizes: dict[str, list[int]] = {}
    ttls: dict[str, list[float]] = {}
    for raw in client.scan_iter(count=1000):
        key = raw.decode() if isinstance(raw, bytes) else str(raw)
        shape = key
        for pattern, placeholder in _KEY_PARTS:
            shape = pattern.sub(placeholder, shape)
        used = client.memory_usage(raw, samples=0)
        ttl = client.pttl(raw)
        if used is None or ttl == -2:  # gone between the scan and the reads
            continue
        sizes.setdefault(shape, []).append(int(used))
        if ttl >= 0:
            ttls.setdefault(shape, []).append(ttl / 1000)
    classes = [
        KeyClass(shape, len(found), sum(found), statistics.median(ttls[shape]) if shape in ttls else None)
        for shape, found in sizes.items()
    ]
    return sorted(classes, key=lambda c: -c.total_bytes)


# ---- workers -------------------------------------------------------------------------------------


class Worker:
    """One `sectra-bridge worker` process, with its log and its OS-level figures."""

    def __init__(self, env: dict[str, str], log_path: Path, concurrency: int) -> None:
        self.env = env
        self.log_path = log_path
        exe = Path(sys.executable).parent / "sectra-bridge"
        with log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [str(exe), "worker", "--concurrency", str(concurrency)],
                env=env,
                stdout=log,
                stderr=log,
                preexec_fn=_die_with_parent,
            )
        self.ps = psutil.Process(self.proc.pid)

    def wait_ready(self, timeout: float = 60) -> None:
        """Ready once Celery says so in the log (it consumes the queue from then on)."""

        def ready() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited early:\n{self.logs()[-3000:]}")
            return " ready." in self.logs()

        wait_until(ready, timeout, "the worker did not become ready", every=0.2)

    def rss(self) -> int:
        return int(self.ps.memory_info().rss)

    def cpu_seconds(self) -> float:
        times = self.ps.cpu_times()
        return float(times.user + times.system)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    @property
    def work_dir(self) -> Path:
        return Path(self.env["BRIDGE_WORK_DIR"])


class CpuClock:
    """CPU seconds used since it was made: by the workers (a killed one up to its death, a
    replacement from its start), by this process (the fakes, the webhook, the bench's own
    polling) and by redis-server: where a small machine's cores went."""

    def __init__(self, the_lab: Lab) -> None:
        self.lab = the_lab
        self._me = psutil.Process()
        self._redis = psutil.Process(int(the_lab.redis.info("server")["process_id"]))
        self._gone: dict[int, float] = {}
        self._base = {w.proc.pid: w.cpu_seconds() for w in the_lab.workers}
        self._base_me, self._base_redis = _cpu(self._me), _cpu(self._redis)

    def before_kill(self, worker: Worker) -> None:
        self._gone[worker.proc.pid] = worker.cpu_seconds()

    def read(self) -> dict[str, float]:
        alive = {w.proc.pid: w.cpu_seconds() for w in self.lab.workers if w.proc.poll() is None}
        used = {**self._gone, **alive}
        return {
            "workers": sum(used.values()) - sum(self._base.get(pid, 0.0) for pid in used),
            "fakes_and_webhook": _cpu(self._me) - self._base_me,
            "redis": _cpu(self._redis) - self._base_redis,
        }


def _cpu(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


# ---- the lab -------------------------------------------------------------------------------------


class Lab:
    """Sectra, Strand, the webhook and a place for workers, around one private Redis."""

    def __init__(
        self,
        redis_url: str,
        work: Path,
        *,
        strand_options: dict[str, Any],
        worker_env: dict[str, str] | None = None,
    ) -> None:
        mock_server.print = lambda *a, **k: None
        self.work = work
        self.redis_url = redis_url
        self.redis = redis.Redis.from_url(redis_url)
        self.sectra = CountedSectra()
        self.sectra.run(port=0, host="127.0.0.1")
        self.strand = FakeStrandServer(**strand_options)
        self.strand.start()
        apps_file = work / "apps.yaml"
        apps_file.write_text(APPS_YAML)
        self.env = {
            **os.environ,
            "BRIDGE_APPS_FILE": str(apps_file),
            "REDIS_URL": redis_url,
            "STRAND_API_KEY": self.strand.api_key,
            "STRAND_BASE_URL": self.strand.url,
            "SECTRA_ALLOWED_CALLBACK_URLS": self.sectra.url,
            "SECTRA_ALLOW_HTTP": "true",
            "BRIDGE_LOG_LEVEL": "INFO",  # the product's default; Celery's "ready." line is INFO
            **(worker_env or {}),
        }
        self._saved_env = dict(os.environ)
        os.environ.update(self.env)  # the in-process webhook reads the same settings as the workers
        from service.app import create_app
        from workers import runtime
        from workers.celery_app import celery_app

        runtime.reset()
        celery_app.conf.broker_url = redis_url
        self.store = runtime.context().store
        self._webhook = _Uvicorn(create_app())
        self.webhook_url = self._webhook.url
        self._http = httpx.Client(timeout=30)
        self.workers: list[Worker] = []
        self.slide_bytes: dict[str, int] = {}
        # Redis commands the bench itself sends (its polling), to take out of the product's figures.
        self.bench_commands = 0
        self._slides = work / "slides"
        self._slides.mkdir()

    def close(self) -> None:
        from workers import runtime

        for worker in self.workers:
            worker.stop()
        self._http.close()
        self._webhook.stop()
        self.strand.close()
        self.sectra.stop()
        runtime.reset()
        os.environ.clear()
        os.environ.update(self._saved_env)

    def start_worker(self, concurrency: int = 4, **env: str) -> Worker:
        """A worker with its own work volume (one per pod) and its own metrics port."""
        n = len(self.workers)
        worker_env = {
            **self.env,
            "BRIDGE_WORK_DIR": str(self.work / f"pod-{n}"),
            "BRIDGE_WORKER_METRICS_PORT": str(free_port()),
            **env,
        }
        worker = Worker(worker_env, self.work / f"worker-{n}.log", concurrency)
        self.workers.append(worker)
        return worker

    def add_slides(self, count: int, *, width: int = 1024, height: int = 768) -> list[str]:
        """`count` small SVS slides, each distinct after de-identification (Strand would otherwise
        recognise the same SHA-256 and skip the upload): slide i is `width + 8 i` pixels wide."""
        from tests.e2e.conftest import slide_metadata
        from tests.fixtures.slides import make_svs

        ids = []
        for i in range(count):
            slide_id = f"bench-{i:04d}-{uuid.uuid4().hex[:6]}"
            w = width + 8 * i
            path = make_svs(
                self._slides / f"{slide_id}.svs", width=w, height=height, phi=PHI, label_marker=LABEL_MARKER
            )
            self.sectra.add_slide(slide_metadata(slide_id, w, height))
            self.sectra.add_slide_files(slide_id, path)
            ids.append(slide_id)
            self.slide_bytes[slide_id] = path.stat().st_size
        return ids

    def create(self, slide_id: str) -> str:
        """Sectra's `create` invocation through the real webhook; returns the run id."""
        token = str(uuid.uuid4())
        body = {
            "action": "create",
            "applicationId": APP_ID,
            "slideId": slide_id,
            "callbackInfo": {"url": self.sectra.url, "token": self.sectra.token},
            "cancellationToken": token,
            "input": {"type": "wholeSlide"},
        }
        answer = self._http.post(f"{self.webhook_url}/sectra/{APP_ID}", json=body)
        if answer.status_code != 200:
            raise RuntimeError(f"create answered {answer.status_code}: {answer.text}")
        run_id = self.store.find(APP_ID, slide_id, token)
        self.bench_commands += 1  # that EXISTS is the bench's, not the product's
        assert run_id is not None
        return run_id

    def statuses(self, run_ids: Iterable[str]) -> dict[str, str]:
        """Every run's status in one Redis round trip (the bench polls this; keep it cheap)."""
        ids = list(run_ids)
        with self.redis.pipeline(transaction=False) as pipe:
            for run_id in ids:
                pipe.hget(f"bridge:run:{run_id}", "status")
            raw = pipe.execute()
        self.bench_commands += len(ids)
        return {run_id: (v.decode().strip('"') if v else "gone") for run_id, v in zip(ids, raw, strict=True)}

    def worker_metrics(self) -> list[str]:
        texts = []
        for worker in self.workers:
            if worker.proc.poll() is None:
                port = worker.env["BRIDGE_WORKER_METRICS_PORT"]
                with contextlib.suppress(httpx.HTTPError):
                    texts.append(httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text)
        return texts


class CountedSectra(MockSectraServer):
    """MockSectraServer with the fake Strand's per-endpoint counters around its app."""

    def __init__(self) -> None:
        super().__init__()
        self.requests = RequestCounts()

    def create_app(self) -> Any:
        return RequestCounting(super().create_app(), self.requests)


class _Uvicorn:
    def __init__(self, app: Any) -> None:
        import uvicorn

        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        wait_until(lambda: self.server.started, 10, "the webhook did not start")
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


@contextlib.contextmanager
def lab(
    redis_port: int, *, strand_options: dict[str, Any], worker_env: dict[str, str] | None = None
) -> Iterator[Lab]:
    with RedisServer(redis_port) as server, tempfile.TemporaryDirectory(prefix="bench-lab-") as tmp:
        the_lab = Lab(server.url, Path(tmp), strand_options=strand_options, worker_env=worker_env)
        try:
            yield the_lab
        finally:
            the_lab.close()


# ---- reading the runs back -----------------------------------------------------------------------


def stage_seconds(created_at: float, events: list[dict[str, Any]]) -> dict[str, float]:
    """Wall time per stage from a run's audit trail: each stage from the end of the one before.

    A stage's figure includes the queueing before its step and any retry backoff inside it
    (a 429 at submit shows up in `submitting`); `downloading` counts from the run's creation.
    """
    out: dict[str, float] = {}
    previous = created_at
    for event in events:
        stage = event["data"].get("stage") if event["event"] == "stage_done" else None
        if event["event"] == "job_finished":
            stage = "waiting"
        if stage in STAGES and stage not in out:
            out[stage] = event["ts"] - previous
            previous = event["ts"]
    return out


def stage_interval(events: list[dict[str, Any]], stage: str) -> tuple[float, float] | None:
    """(start, end), wall clock, of a stage in a run's audit trail: from the end of the stage
    before it to its own end; None when the run did not finish it."""
    previous = STAGES[STAGES.index(stage) - 1] if STAGES.index(stage) else None
    start = end = None
    for event in events:
        name = "waiting" if event["event"] == "job_finished" else event["data"].get("stage")
        if event["event"] not in ("stage_done", "job_finished"):
            continue
        if name == previous and start is None:
            start = event["ts"]
        if name == stage and end is None:
            end = event["ts"]
    return (start, end) if start is not None and end is not None else None


def strand_capacity_use(
    jobs: list[tuple[float, float]], ready: list[tuple[float, float]], cap: int, span: tuple[float, float]
) -> dict[str, float]:
    """How Strand's `cap` x span slot-seconds were spent: running a job, idle while some run was
    ready to submit (in `submitting`: refused with 429 and backing off), idle with no run ready
    (the pipeline before submit could not keep up, or the batch was filling or draining).

    `jobs` and `ready` are (start, end) intervals on one clock; integrated on a 10 ms grid.
    """
    step = 0.01
    busy = idle_ready = idle_none = 0.0
    t = span[0]
    while t < span[1]:
        running = sum(1 for a, b in jobs if a <= t < b)
        waiting = sum(1 for a, b in ready if a <= t < b)
        free = max(0, cap - running)
        busy += min(running, cap) * step
        idle_ready += min(free, waiting) * step
        idle_none += (free - min(free, waiting)) * step
        t += step
    total = cap * (span[1] - span[0])
    return {
        "busy": busy / total,
        "idle_run_ready": idle_ready / total,
        "idle_no_run_ready": idle_none / total,
    }


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def stage_table(per_run: list[dict[str, float]]) -> list[tuple[str, float, float, float]]:
    """(stage, p50, p95, mean) over the runs that went through each stage."""
    rows = []
    for stage in STAGES:
        values = [run[stage] for run in per_run if stage in run]
        if values:
            rows.append((stage, percentile(values, 50), percentile(values, 95), statistics.fmean(values)))
    return rows


def step_seconds(metrics_texts: list[str]) -> dict[str, tuple[float, int]]:
    """Time spent inside steps per stage (`bridge_stage_duration_seconds` sum, count), all workers."""
    out: dict[str, list[float]] = {}
    for text in metrics_texts:
        for line in text.splitlines():
            for suffix, slot in (("_sum", 0), ("_count", 1)):
                prefix = f"bridge_stage_duration_seconds{suffix}{{"
                if line.startswith(prefix):
                    labels, _, value = line[len(prefix) :].partition("} ")
                    stage = labels.split('stage="', 1)[1].split('"', 1)[0]
                    out.setdefault(stage, [0.0, 0.0])[slot] += float(value)
    return {stage: (s, int(n)) for stage, (s, n) in out.items()}
