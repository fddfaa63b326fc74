"""Latency of the webhook's `create` under an open-loop load, against a bare FastAPI endpoint.

    .venv/bin/python bench/webhook.py [--rate 200] [--duration 10] [--workers 2]
                                      [--redis-url redis://localhost:6379/13] [--enqueue celery|none]

Separate processes, so no two parts share an interpreter: Sectra's mock server
(the `create` path stores a pending result there), the bridge under uvicorn,
a bare FastAPI app under the same uvicorn settings that reads the body and
answers a constant JSON, and the load generator. Both servers run `--workers`
uvicorn processes, as a deployment would (`sectra-bridge serve` behind one port).

The load is open-loop: request i is sent at t0 + i/rate whether or not earlier
ones have answered, and its latency counts from that scheduled instant, so a
stall shows up as latency instead of quietly lowering the rate. The loader
speaks HTTP/1.1 over raw asyncio streams (keep-alive, a new connection only
when all are busy): an HTTP client library would cost more CPU than the bare
endpoint itself on a small machine, and skew both figures alike.

Every bridge request carries a distinct cancellationToken, so each is a real new
run: Redis writes, a Sectra result, and (with `--enqueue celery`, the default) a
real Celery message on the broker. The same run measures the bare endpoint
first, then the bridge, and prints both with their ratio. Target: bridge p99 <
50 ms at 200 requests/s. Uses its own Redis database (13 by default) and
deletes what it wrote.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script from anywhere; our packages are imported lazily below
SECTRA_TOKEN = "bench-sectra-token"
APP_ID = "strand-default"
_CONTENT_LENGTH = re.compile(rb"(?i)\r\ncontent-length:\s*(\d+)")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_for(url: str, deadline_s: float = 60.0) -> None:
    import httpx

    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1.0)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


# ---- the servers (each in its own processes) ---------------------------------------------------


def _uvicorn(factory: str, port: int, workers: int) -> None:
    import uvicorn

    uvicorn.run(
        f"webhook:{factory}",
        factory=True,
        app_dir=str(Path(__file__).parent),
        host="127.0.0.1",
        port=port,
        workers=workers,
        log_level="warning",
        access_log=False,
    )


def sectra_app() -> FastAPI:
    from sectra_client.mock_server import MockSectraServer

    # Served by uvicorn binding its own socket: MockSectraServer.run() hands uvicorn a socket
    # without IPPROTO_TCP, so asyncio skips TCP_NODELAY and every answer waits ~40 ms on Nagle.
    return MockSectraServer(token=SECTRA_TOKEN).create_app()


def bridge_app() -> FastAPI:
    """The real webhook, configured from BENCH_* variables (uvicorn workers import this)."""
    import redis

    from service.app import create_app
    from workers.apps import default_apps
    from workers.runstore import RunStore
    from workers.settings import Settings

    redis_url = os.environ["BENCH_REDIS_URL"]
    settings = Settings(
        REDIS_URL=redis_url,
        SECTRA_ALLOWED_CALLBACK_URLS=os.environ["BENCH_SECTRA_URL"],
        SECTRA_ALLOW_HTTP=True,
    )
    store = RunStore(redis.Redis.from_url(redis_url, socket_timeout=5), prefix=os.environ["BENCH_PREFIX"])
    if os.environ["BENCH_ENQUEUE"] == "celery":
        from workers.dispatch import enqueue_run

        return create_app(settings, default_apps(), store=store, enqueue=enqueue_run)
    return create_app(settings, default_apps(), store=store, enqueue=lambda _run_id: None)


def bare_app() -> FastAPI:
    app = FastAPI()
    answer = {"id": 1, "versionId": "v", "slideId": "s", "displayResult": "Queued", "applicationVersion": "1"}

    async def bare(request: Request) -> JSONResponse:
        await request.body()
        return JSONResponse(answer, headers={"X-Sectra-ApiVersion": "1.10"})

    app.add_api_route("/sectra/{app_id}", bare, methods=["POST"])
    app.add_api_route("/healthz", lambda: {"status": "ok"}, methods=["GET"])
    return app


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
    # (last used, reader, writer); uvicorn drops keep-alive connections idle for 5 s, so older
    # ones are closed here rather than reused into a reset.
    idle: list[tuple[float, asyncio.StreamReader, asyncio.StreamWriter]] = []
    latencies: list[float] = []
    errors: dict[str, int] = {}

    async def connection() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        while idle:
            used, reader, writer = idle.pop()
            if time.perf_counter() - used < 2.0:
                return reader, writer
            writer.close()
        return await asyncio.open_connection("127.0.0.1", port)

    async def exchange(payload: bytes) -> str:
        reader, writer = await connection()
        writer.write(payload)
        head = await reader.readuntil(b"\r\n\r\n")
        length = _CONTENT_LENGTH.search(head)
        await reader.readexactly(int(length.group(1)) if length else 0)
        idle.append((time.perf_counter(), reader, writer))
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

    start = time.perf_counter() + 0.2
    await asyncio.gather(*(one(i, start + i / rate) for i in range(total)))
    for _, _, writer in idle:
        writer.close()
    latencies.sort()

    def pct(p: float) -> float:
        return round(latencies[min(len(latencies) - 1, int(p / 100 * len(latencies)))] * 1000, 2)

    return {
        "requests": len(latencies),
        "errors": errors,
        "p50_ms": pct(50),
        "p90_ms": pct(90),
        "p99_ms": pct(99),
        "max_ms": round(latencies[-1] * 1000, 2),
        "mean_ms": round(statistics.fmean(latencies) * 1000, 2),
    }


def run_load(port: int, sectra_url: str, rate: float, duration: float, warmup: float) -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    print(json.dumps(asyncio.run(_load(port, sectra_url, rate, duration, warmup))))


# ---- orchestration -----------------------------------------------------------------------------


def _python(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    merged = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.Popen([sys.executable, __file__, *args], cwd=ROOT, env=merged)


def _cpu_seconds(pid: int) -> float:
    """CPU time of a server: its uvicorn supervisor and every worker process under it."""
    import psutil

    root = psutil.Process(pid)
    total = 0.0
    for process in [root, *root.children(recursive=True)]:
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def _measure(port: int, pid: int, sectra_url: str, args: argparse.Namespace) -> dict[str, Any]:
    """Latencies from the loader, and the server's CPU per request (a figure that load elsewhere
    on the machine barely moves, unlike latency)."""
    cpu_before = _cpu_seconds(pid)
    out = subprocess.run(
        [
            sys.executable,
            __file__,
            "_load",
            str(port),
            sectra_url,
            *map(str, (args.rate, args.duration, args.warmup)),
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=True,
        capture_output=True,
        text=True,
    )
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    total = int((args.warmup + args.duration) * args.rate)
    result["cpu_ms_per_request"] = round((_cpu_seconds(pid) - cpu_before) / total * 1000, 2)
    return result


def _cleanup(redis_url: str, prefix: str) -> int:
    import redis

    from workers.celery_app import QUEUE

    client = redis.Redis.from_url(redis_url)
    run_ids = set()
    deleted = 0
    for key in client.scan_iter(f"{prefix}:*", count=1000):
        name = key.decode()
        if name.startswith(f"{prefix}:run:") and name.count(":") == 2:
            run_ids.add(name.rsplit(":", 1)[1])
        deleted += client.delete(key)
    for run_id in run_ids:
        deleted += client.delete(f"bridge:next-step:{run_id}")
    deleted += client.delete(QUEUE, f"_kombu.binding.{QUEUE}")
    client.close()
    return deleted


def _report(name: str, result: dict[str, Any]) -> None:
    print(
        f"{name:22}  p50 {result['p50_ms']:7.2f} ms  p90 {result['p90_ms']:7.2f} ms  "
        f"p99 {result['p99_ms']:7.2f} ms  max {result['max_ms']:7.2f} ms  "
        f"server CPU {result['cpu_ms_per_request']:.2f} ms/request  n={result['requests']} "
        f"errors={result['errors'] or 0}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rate", type=float, default=200.0, help="requests per second")
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds first")
    parser.add_argument("--workers", type=int, default=2, help="uvicorn processes per server")
    parser.add_argument("--redis-url", default="redis://localhost:6379/13")
    parser.add_argument("--enqueue", choices=["celery", "none"], default="celery")
    args = parser.parse_args()

    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    ports = {name: _free_port() for name in ("sectra", "bridge", "bare")}
    sectra_url = f"http://127.0.0.1:{ports['sectra']}"
    bench_env = {
        "BENCH_REDIS_URL": args.redis_url,
        "BENCH_SECTRA_URL": sectra_url,
        "BENCH_PREFIX": prefix,
        "BENCH_ENQUEUE": args.enqueue,
        "REDIS_URL": args.redis_url,  # the Celery broker reads it
    }
    processes = [
        _python("_serve", "sectra_app", str(ports["sectra"]), "1"),
        _python("_serve", "bridge_app", str(ports["bridge"]), str(args.workers), env=bench_env),
        _python("_serve", "bare_app", str(ports["bare"]), str(args.workers)),
    ]
    try:
        _wait_for(f"{sectra_url}/dev/slides")
        _wait_for(f"http://127.0.0.1:{ports['bridge']}/healthz")
        _wait_for(f"http://127.0.0.1:{ports['bare']}/healthz")
        bare = _measure(ports["bare"], processes[2].pid, sectra_url, args)
        bridge = _measure(ports["bridge"], processes[1].pid, sectra_url, args)
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=30)
        cleaned = _cleanup(args.redis_url, prefix)
    print(
        f"open-loop load: {args.rate:g} requests/s for {args.duration:g} s (after {args.warmup:g} s warm-up)"
    )
    print(
        f"{args.workers} uvicorn worker(s) per server; enqueue: {args.enqueue}; redis keys cleaned: {cleaned}"
    )
    _report("bare FastAPI endpoint", bare)
    _report("bridge POST create", bridge)
    p50_ratio = bridge["p50_ms"] / bare["p50_ms"]
    p99_ratio = bridge["p99_ms"] / bare["p99_ms"]
    cpu_ratio = bridge["cpu_ms_per_request"] / bare["cpu_ms_per_request"]
    print(f"bridge / bare: p50 x{p50_ratio:.1f}, p99 x{p99_ratio:.1f}, CPU per request x{cpu_ratio:.1f}")
    met = bridge["p99_ms"] < 50 and not bridge["errors"]
    print(f"target bridge p99 < 50 ms with no errors: {'met' if met else 'NOT met'}")


if __name__ == "__main__":
    command = sys.argv[1] if len(sys.argv) > 1 else ""
    if command == "_serve":
        _uvicorn(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    elif command == "_load":
        run_load(int(sys.argv[2]), sys.argv[3], float(sys.argv[4]), float(sys.argv[5]), float(sys.argv[6]))
    else:
        main()
