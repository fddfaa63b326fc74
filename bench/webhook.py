"""Latency and CPU of the webhook's `create` under an open-loop load, against a bare endpoint.

    .venv/bin/python bench/webhook.py [--rates 50,100,200] [--duration 10] [--workers 2]
                                      [--redis-url redis://127.0.0.1:6379/13] [--log-level INFO]
                                      [--rounds 3] [--profile FILE]

Separate processes, so no two parts share an interpreter: Sectra's mock server (the `create`
path stores a pending result there; one uvicorn process), the bridge as a deployment runs it
(`sectra-bridge serve --workers N`: service/server.py's HTTP layer, N processes behind one port),
a bare FastAPI app behind the same HTTP layer with the same N processes (it reads the body and
answers a constant JSON), the floor (the bare app making the create's three round trips, Redis,
Sectra, Redis, with nothing else: `_Floor`, what the contract costs any create here), the load
generator (one process, started per measurement), and Redis
(the server at `--redis-url`; its CPU is read from `INFO cpu`, so give the bench a Redis of its
own for that figure to be the bench's alone).

The load is open-loop: request i is sent at t0 + i/rate whether or not earlier ones have
answered, and its latency counts from that scheduled instant, so a stall shows up as latency
instead of quietly lowering the rate. The loader speaks HTTP/1.1 over raw asyncio streams
(keep-alive, a new connection only when all are busy): an HTTP client library would cost more
CPU than the bare endpoint itself on a small machine, and skew both figures alike.

Every bridge request carries a distinct cancellationToken, so each is a real new run: Redis
writes, a Sectra result and a Celery message on the broker (nobody consumes it; the bench
deletes it). At each rate the same run measures the bare endpoint, the floor and the bridge,
`--rounds` times over (alternated, so a slow spell of the machine falls on all three), and prints
each round with its ratios and the median of each CPU ratio (bridge / floor: what the bridge's
own work costs above the round trips); CPU per request is each server's
process tree (supervisor and workers) over the requests sent. On a shared VM that figure
moves by a tenth to a third between runs, for the bare endpoint as much as for the bridge,
hence the rounds. Targets: bridge p99 < 50 ms at 200 requests/s in every round, and CPU per
create <= 3x the bare endpoint (the median of the rounds) at every rate.

`--profile FILE` adds an unmeasured pass at the highest rate under py-spy (`--gil`: samples of
the threads holding the GIL, so CPU, not waiting), writes the collapsed stacks to FILE and
prints the costliest frames.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script from anywhere; our packages are imported lazily below
SECTRA_TOKEN = "bench-sectra-token"
GC_PAUSE = "mock Sectra's garbage collector paused"
APP_ID = "strand-default"
_CONTENT_LENGTH = re.compile(rb"(?i)\r\ncontent-length:\s*(\d+)")
_FRAME = re.compile(r"^(?!process |thread ).+ \([^()]+\)$")
# Frames that every sample passes through and that say nothing about where the cost is.
_PLUMBING = re.compile(
    r"^(Thread\._bootstrap|Thread\.run|WorkerThread\.run|<module>|run \(|Runner\.run|asyncio_run|"
    r"Server\.(run|serve)|BaseEventLoop|_run_once|Handle\._run|subprocess_started|Process\.|"
    r"BaseProcess\.|_main \(|spawn_main|_serve_forever|Popen)"
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_for(url: str, process: subprocess.Popen[bytes], deadline_s: float = 60.0) -> None:
    import httpx

    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server for {url} exited with status {process.returncode}")
        try:
            httpx.get(url, timeout=1.0)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


# ---- the servers (each in its own processes) ---------------------------------------------------


def sectra_app() -> FastAPI:
    from sectra_client.mock_server import MockSectraServer

    # Served by uvicorn binding its own socket: MockSectraServer.run() hands uvicorn a socket
    # without IPPROTO_TCP, so asyncio skips TCP_NODELAY and every answer waits ~40 ms on Nagle.
    return MockSectraServer(token=SECTRA_TOKEN).create_app()


def bare_app() -> FastAPI:
    app = FastAPI()
    answer = {"id": 1, "versionId": "v", "slideId": "s", "displayResult": "Queued", "applicationVersion": "1"}

    async def bare(request: Request) -> JSONResponse:
        await request.body()
        return JSONResponse(answer, headers={"X-Sectra-ApiVersion": "1.10"})

    app.add_api_route("/sectra/{app_id}", bare, methods=["POST"])
    app.add_api_route("/healthz", lambda: {"status": "ok"}, methods=["GET"])
    return app


class _KeptConnections:
    """Connections to one server kept open between exchanges, one per exchange in flight.

    The servers here drop keep-alive connections idle for 5 s (uvicorn's default), so one idle for
    2 s is closed rather than reused into a reset.
    """

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._idle: list[tuple[float, asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def get(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        while self._idle:
            used, reader, writer = self._idle.pop()
            if time.perf_counter() - used < 2.0:
                return reader, writer
            writer.close()
        return await asyncio.open_connection(self.host, self.port)

    def put(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._idle.append((time.perf_counter(), reader, writer))

    def close(self) -> None:
        for _, _, writer in self._idle:
            writer.close()


async def _http_answer(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """One HTTP/1.1 answer's head and body (the servers here always send Content-Length)."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = _CONTENT_LENGTH.search(head)
    return head, await reader.readexactly(int(length.group(1)) if length else 0)


class _Floor:
    """The create's three round trips and nothing else: the cost no create can go below on this machine.

    Per request, on connections kept open (one per request in flight): a Redis round trip, a POST of
    a whole-slide pending result's bytes to Sectra's mock (so Sectra's side does what it does for the
    bridge), and a second Redis round trip. The Redis commands are `EVAL "return 1" 0`, prebuilt,
    and the answers are read as plainly as the loader reads its own, so what this adds to the bare
    endpoint is the waiting and waking on three exchanges, which the contract (claim, then store in
    Sectra, then record) makes any create pay.
    """

    def __init__(self, redis_url: str, sectra_url: str) -> None:
        from urllib.parse import urlsplit

        from sectra_adapter import pending_result_json

        where, sectra = urlsplit(redis_url), urlsplit(sectra_url)
        self.redis = _KeptConnections(where.hostname or "127.0.0.1", where.port or 6379)
        self.sectra = _KeptConnections(sectra.hostname or "127.0.0.1", sectra.port or 80)
        body = pending_result_json("floor-slide", "1")  # what the bridge POSTs for a whole slide
        self.post = (
            f"POST /applications/{APP_ID}/results HTTP/1.1\r\nHost: {sectra.netloc}\r\n"
            f"Authorization: Bearer {SECTRA_TOKEN}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        self.eval = b"*3\r\n$4\r\nEVAL\r\n$8\r\nreturn 1\r\n$1\r\n0\r\n"

    async def redis_trip(self) -> None:
        reader, writer = await self.redis.get()
        writer.write(self.eval)
        await reader.readuntil(b"\r\n")
        self.redis.put(reader, writer)

    async def sectra_trip(self) -> bytes:
        reader, writer = await self.sectra.get()
        writer.write(self.post)
        _, answer = await _http_answer(reader)
        self.sectra.put(reader, writer)
        return answer


def floor_app() -> FastAPI:
    """The bare app whose endpoint makes the create's three round trips (`_Floor`) before answering."""
    app = FastAPI()
    floor = _Floor(os.environ["BENCH_REDIS_URL"], os.environ["BENCH_SECTRA_URL"])

    async def create(request: Request) -> Response:
        await request.body()
        await floor.redis_trip()
        answer = await floor.sectra_trip()
        await floor.redis_trip()
        return Response(answer, media_type="application/json", headers={"X-Sectra-ApiVersion": "1.10"})

    app.add_api_route("/sectra/{app_id}", create, methods=["POST"])
    app.add_api_route("/healthz", lambda: {"status": "ok"}, methods=["GET"])
    return app


def _serve_sectra(port: int) -> None:
    """Sectra's mock, with its garbage collector kept off what it stores.

    The mock keeps every result posted to it, tens of thousands in a run, and each full collection
    walked them all: 100-130 ms in which it answered nobody, and every create waiting on it took as
    long (the bridge's and the floor's p99 at 200 requests/s, never the bare endpoint's, which does
    not call it). Sectra is remote and not ours; its stand-in's pauses are not the webhook's latency.
    So what the mock holds is moved out of the collector's reach every half second (`gc.freeze`; it
    is never freed anyway), and any pause over 5 ms is still written to its log, which the summary
    counts.
    """
    import gc
    import threading

    import uvicorn

    started: list[float] = []

    def pauses(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started[:] = [time.perf_counter()]
        elif started and (took := time.perf_counter() - started[0]) > 0.005:
            print(f"{GC_PAUSE} gen{info['generation']} {took * 1000:.1f} ms", file=sys.stderr, flush=True)

    def freeze() -> None:
        while True:
            time.sleep(0.5)
            gc.freeze()

    gc.callbacks.append(pauses)
    threading.Thread(target=freeze, daemon=True).start()
    uvicorn.run(sectra_app(), host="127.0.0.1", port=port, log_level="warning", access_log=False)


def _serve_bare(port: int, workers: int, factory: str = "bare_app") -> None:
    """A bench app (`bare_app`, `floor_app`) behind the bridge's own HTTP layer and process model
    (service/server.py)."""
    from service.server import HttpLimits, serve_workers

    serve_workers(
        f"{Path(__file__).stem}:{factory}", host="127.0.0.1", port=port, limits=HttpLimits(), workers=workers
    )


# ---- the load ----------------------------------------------------------------------------------


def _payload(host: str, sectra_url: str) -> bytes:
    body = json.dumps(
        {
            "action": "create",
            "applicationId": APP_ID,
            "slideId": f"bench-{uuid.uuid4().hex[:6]}",
            "callbackInfo": {"url": sectra_url, "token": SECTRA_TOKEN},
            "cancellationToken": uuid.uuid4().hex,
            "input": {"type": "wholeSlide"},
        }
    ).encode()
    head = (
        f"POST /sectra/{APP_ID} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def _load(port: int, sectra_url: str, rate: float, duration: float, warmup: float) -> dict[str, Any]:
    total = int((warmup + duration) * rate)
    payloads = [_payload(f"127.0.0.1:{port}", sectra_url) for _ in range(total)]
    connections = _KeptConnections("127.0.0.1", port)
    latencies: list[float] = []
    errors: dict[str, int] = {}

    async def exchange(payload: bytes) -> str:
        reader, writer = await connections.get()
        writer.write(payload)
        head, _ = await _http_answer(reader)
        connections.put(reader, writer)
        return head[9:12].decode()

    async def one(i: int, scheduled: float) -> None:
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        try:
            outcome = await asyncio.wait_for(exchange(payloads[i]), timeout=30)
        except (TimeoutError, OSError, asyncio.IncompleteReadError) as exc:
            outcome = type(exc).__name__
        if i >= warmup * rate:
            latencies.append(time.perf_counter() - scheduled)
            if outcome != "200":
                errors[outcome] = errors.get(outcome, 0) + 1

    cpu_before = time.process_time()
    start = time.perf_counter() + 0.2
    await asyncio.gather(*(one(i, start + i / rate) for i in range(total)))
    connections.close()
    latencies.sort()

    def pct(p: float) -> float:
        return round(latencies[min(len(latencies) - 1, int(p / 100 * len(latencies)))] * 1000, 2)

    return {
        "requests": len(latencies),
        "errors": errors,
        "p50_ms": pct(50),
        "p99_ms": pct(99),
        "max_ms": round(latencies[-1] * 1000, 2),
        "mean_ms": round(statistics.fmean(latencies) * 1000, 2),
        "loader_cpu_ms_per_request": round((time.process_time() - cpu_before) / total * 1000, 3),
    }


def run_load(port: int, sectra_url: str, rate: float, duration: float, warmup: float) -> None:
    import uvloop

    uvloop.install()
    print(json.dumps(asyncio.run(_load(port, sectra_url, rate, duration, warmup))))


# ---- measuring ---------------------------------------------------------------------------------


def _popen(args: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    merged = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    with log.open("ab") as out:
        return subprocess.Popen(args, cwd=ROOT, env=merged, stdout=out, stderr=out)


def _cpu_seconds(pid: int, part: str = "both") -> float:
    """CPU time of a server: its supervisor and every worker process under it (user, system or both)."""
    import psutil

    root = psutil.Process(pid)
    total = 0.0
    for process in [root, *root.children(recursive=True)]:
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += {"user": times.user, "system": times.system, "both": times.user + times.system}[part]
    return total


def _redis_cpu_seconds(redis_url: str) -> float:
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        info = client.info("cpu")
    finally:
        client.close()
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def _measure(
    port: int,
    server: subprocess.Popen[bytes],
    sectra: subprocess.Popen[bytes],
    rate: float,
    sectra_url: str,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """Latencies from the loader; CPU per request of the server, the mock Sectra and Redis."""
    before = (
        _cpu_seconds(server.pid),
        _cpu_seconds(server.pid, "system"),
        _cpu_seconds(sectra.pid),
        _redis_cpu_seconds(args.redis_url),
    )
    out = subprocess.run(
        [
            sys.executable,
            __file__,
            "_load",
            str(port),
            sectra_url,
            *map(str, (rate, args.duration, args.warmup)),
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=True,
        capture_output=True,
        text=True,
    )
    after = (
        _cpu_seconds(server.pid),
        _cpu_seconds(server.pid, "system"),
        _cpu_seconds(sectra.pid),
        _redis_cpu_seconds(args.redis_url),
    )
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    total = int((args.warmup + args.duration) * rate)
    server_cpu, server_system, sectra_cpu, redis_cpu = (
        round((a - b) / total * 1000, 3) for a, b in zip(after, before, strict=True)
    )
    result.update(
        cpu_ms_per_request=server_cpu,
        system_cpu_ms=server_system,
        sectra_cpu_ms=sectra_cpu,
        redis_cpu_ms=redis_cpu,
    )
    return result


def _profile(
    port: int, server: subprocess.Popen[bytes], rate: float, sectra_url: str, args: argparse.Namespace
) -> None:
    """py-spy over the bridge's process tree during one unmeasured pass at `rate`."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        print("--profile: py-spy is not installed (pip install py-spy); no profile taken")
        return
    seconds = args.warmup + args.duration + 1
    recorder = subprocess.Popen(
        [
            spy,
            "record",
            "--gil",
            "--subprocesses",
            "--nonblocking",
            "--rate",
            "200",
            "--format",
            "raw",
            "--output",
            args.profile,
            "--duration",
            str(int(seconds + 1)),
            "--pid",
            str(server.pid),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(1.0)  # py-spy attaches to every process of the tree before the load starts
    subprocess.run(
        [
            sys.executable,
            __file__,
            "_load",
            str(port),
            sectra_url,
            *map(str, (rate, args.duration, args.warmup)),
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=True,
        capture_output=True,
    )
    recorder.wait(timeout=seconds + 30)
    print(f"\nprofile of the bridge at {rate:g} requests/s (py-spy --gil; stacks in {args.profile}):")
    for line in top_frames(Path(args.profile)):
        print("  " + line)


def top_frames(collapsed: Path, count: int = 30) -> list[str]:
    """Inclusive share of samples per frame (function and file), plumbing frames left out."""
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, samples = line.rpartition(" ")
        if not stack or not samples.isdigit():
            continue
        n = int(samples)
        total += n
        # Frames read "function (file:line)"; the process and thread labels (a command line may hold
        # a ';' of its own) do not.
        frames = {re.sub(r":\d+\)$", ")", f) for f in stack.split(";") if _FRAME.match(f)}
        for frame in frames:
            inclusive[frame] += n
    rows = [(frame, n) for frame, n in inclusive.most_common() if not _PLUMBING.match(frame)][:count]
    return [f"{100 * n / max(total, 1):5.1f} %  {frame}" for frame, n in rows]


def _cleanup(redis_url: str) -> int:
    import redis

    from workers.celery_app import QUEUE
    from workers.priority import queue_keys

    client = redis.Redis.from_url(redis_url)
    deleted = 0
    for key in client.scan_iter("bridge:*", count=1000):
        deleted += client.delete(key)
    deleted += client.delete(*queue_keys(QUEUE), f"_kombu.binding.{QUEUE}")
    client.close()
    return deleted


def _report(name: str, r: dict[str, Any]) -> None:
    print(
        f"  {name:8} p50 {r['p50_ms']:7.2f} ms  p99 {r['p99_ms']:7.2f} ms  max {r['max_ms']:7.2f} ms  "
        f"server CPU {r['cpu_ms_per_request']:.3f} ms/req (kernel {r['system_cpu_ms']:.3f})  "
        f"(Sectra mock {r['sectra_cpu_ms']:.3f}, "
        f"Redis {r['redis_cpu_ms']:.3f}, loader {r['loader_cpu_ms_per_request']:.3f})  "
        f"n={r['requests']} errors={r['errors'] or 0}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rates", default="50,100,200", help="requests per second, comma-separated")
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per rate")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds first, per rate")
    parser.add_argument("--workers", type=int, default=2, help="server processes (`serve --workers N`)")
    parser.add_argument(
        "--redis-url", default="redis://127.0.0.1:6379/13", help="a database the bench may fill"
    )
    parser.add_argument(
        "--log-level", default="INFO", help="the bridge's BRIDGE_LOG_LEVEL (INFO: the default)"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="bare-then-bridge measurements per rate; the CPU ratio is their median (this VM's noise)",
    )
    parser.add_argument("--profile", default=None, help="also profile the bridge with py-spy into this file")
    args = parser.parse_args()
    rates = [float(r) for r in args.rates.split(",")]

    ports = {name: _free_port() for name in ("sectra", "bridge", "bare", "floor")}
    sectra_url = f"http://127.0.0.1:{ports['sectra']}"
    logs = Path(tempfile.mkdtemp(prefix="bench-webhook-"))
    exe = str(Path(sys.executable).parent / "sectra-bridge")
    bridge_env = {
        "REDIS_URL": args.redis_url,  # the run store and the Celery broker
        "SECTRA_ALLOWED_CALLBACK_URLS": sectra_url,
        "SECTRA_ALLOW_HTTP": "true",
        "BRIDGE_LOG_LEVEL": args.log_level,
    }
    sectra = _popen([sys.executable, __file__, "_sectra", str(ports["sectra"])], logs / "sectra.log")
    bridge = _popen(
        [exe, "serve", "--host", "127.0.0.1", "--port", str(ports["bridge"]), "--workers", str(args.workers)],
        logs / "bridge.log",
        env=bridge_env,
    )
    bare = _popen(
        [sys.executable, __file__, "_bare", str(ports["bare"]), str(args.workers)], logs / "bare.log"
    )
    floor = _popen(
        [sys.executable, __file__, "_bare", str(ports["floor"]), str(args.workers), "floor_app"],
        logs / "floor.log",
        env={"BENCH_REDIS_URL": args.redis_url, "BENCH_SECTRA_URL": sectra_url},
    )
    servers = (sectra, bridge, bare, floor)
    results: list[tuple[float, list[dict[str, dict[str, Any]]]]] = []
    try:
        _wait_for(f"{sectra_url}/dev/slides", sectra)
        _wait_for(f"http://127.0.0.1:{ports['bridge']}/healthz", bridge)
        _wait_for(f"http://127.0.0.1:{ports['bare']}/healthz", bare)
        _wait_for(f"http://127.0.0.1:{ports['floor']}/healthz", floor)
        measured = {"bare": bare, "floor": floor, "bridge": bridge}
        # Unmeasured first: what each server does once (the bridge's first create imports Celery and
        # opens its connections) would otherwise land on the first rate's CPU per request.
        for name, server in measured.items():
            port = ports[name]
            _measure(
                port,
                server,
                sectra,
                min(rates),
                sectra_url,
                argparse.Namespace(**{**vars(args), "duration": 1.0, "warmup": 1.0}),
            )
        for rate in rates:
            # Alternated, so a slow spell of the machine lands on every server rather than on one.
            rounds = [
                {
                    name: _measure(ports[name], server, sectra, rate, sectra_url, args)
                    for name, server in measured.items()
                }
                for _ in range(args.rounds)
            ]
            results.append((rate, rounds))
        if args.profile:
            _profile(ports["bridge"], bridge, max(rates), sectra_url, args)
    finally:
        for process in servers:
            process.send_signal(signal.SIGTERM)
        for process in servers:
            process.wait(timeout=30)
        cleaned = _cleanup(args.redis_url)
    print(
        f"\nopen-loop load, {args.duration:g} s per rate after {args.warmup:g} s warm-up; "
        f"{args.workers} server processes each (`sectra-bridge serve --workers {args.workers}`, and the "
        f"bare app behind the same service/server.py layer); bridge log level {args.log_level}; "
        f"Redis keys cleaned: {cleaned}"
    )
    print(
        "also on this machine: the load generator (1 process), the mock Sectra (1 uvicorn process), "
        f"Redis (1 process), each server's supervisor (1 process); {os.cpu_count()} cores; logs in {logs}"
    )
    pauses = [line for line in (logs / "sectra.log").read_text().splitlines() if line.startswith(GC_PAUSE)]
    print(
        f"mock Sectra's garbage-collector pauses over 5 ms: {len(pauses)}{': ' if pauses else ''}"
        f"{'; '.join(p.removeprefix(GC_PAUSE).strip() for p in pauses[:5])}"
    )
    met = True
    worst_cpu_ratio = 0.0
    for rate, rounds in results:
        print(f"{rate:g} requests/s")
        ratios: dict[str, list[float]] = {"bridge / bare": [], "floor / bare": [], "bridge / floor": []}
        for number, measured_round in enumerate(rounds, 1):
            if len(rounds) > 1:
                print(f" round {number}")
            for name, result in measured_round.items():
                _report(name, result)
            cpu = {name: result["cpu_ms_per_request"] for name, result in measured_round.items()}
            for pair in ratios:
                top, bottom = pair.split(" / ")
                ratios[pair].append(cpu[top] / cpu[bottom])
            bridge_result, bare_result = measured_round["bridge"], measured_round["bare"]
            p50 = bridge_result["p50_ms"] / bare_result["p50_ms"]
            p99 = bridge_result["p99_ms"] / bare_result["p99_ms"]
            cpu_ratio, floor_ratio = ratios["bridge / bare"][-1], ratios["floor / bare"][-1]
            print(
                f"  bridge / bare: p50 x{p50:.1f}, p99 x{p99:.1f}, CPU per request x{cpu_ratio:.1f}"
                f" (the floor x{floor_ratio:.1f})"
            )
            met = met and bridge_result["p99_ms"] < 50 and not bridge_result["errors"]
        print(f"  CPU per request over {len(rounds)} round(s), median (each):")
        for pair, values in ratios.items():
            each = ", ".join(f"x{v:.2f}" for v in values)
            print(f"    {pair:15} x{statistics.median(values):.2f} ({each})")
        worst_cpu_ratio = max(worst_cpu_ratio, statistics.median(ratios["bridge / bare"]))
    print(
        f"target bridge p99 < 50 ms with no errors at every rate (every round): {'met' if met else 'NOT met'}"
    )
    verdict = "met" if worst_cpu_ratio <= 3 else "NOT met"
    print(
        f"target CPU per create <= 3x the bare endpoint at every rate (median of the rounds): {verdict} "
        f"(x{worst_cpu_ratio:.2f} at worst)"
    )


if __name__ == "__main__":
    command = sys.argv[1] if len(sys.argv) > 1 else ""
    if command == "_sectra":
        _serve_sectra(int(sys.argv[2]))
    elif command == "_bare":
        _serve_bare(int(sys.argv[2]), int(sys.argv[3]), *sys.argv[4:5])
    elif command == "_load":
        run_load(int(sys.argv[2]), sys.argv[3], float(sys.argv[4]), float(sys.argv[5]), float(sys.argv[6]))
    else:
        main()
