"""Latency of the webhook's `create` under an open-loop load, against a bare FastAPI endpoint.

    .venv/bin/python bench/webhook.py [--rate 200] [--duration 10] [--redis-url redis://localhost:6379/13]

Four processes, so no two of them share an interpreter: Sectra's mock server
(the `create` path stores a pending result there), the bridge under uvicorn,
a bare FastAPI app under the same uvicorn settings that reads the body and
answers a constant JSON, and the load generator. The load is open-loop: request
i is sent at t0 + i/rate whether or not earlier ones have answered, and its
latency counts from that scheduled instant, so a stall shows up as latency
instead of silently lowering the rate. Every bridge request carries a distinct
cancellationToken, so each is a real new run: Redis writes, a Sectra result,
and (with `--enqueue celery`, the default) a real Celery message on the broker.
The same run measures the bare endpoint first, then the bridge, and prints both
and their ratio. Target: bridge p99 < 50 ms at 200 requests/s.

Uses its own Redis database (13 by default) and deletes what it wrote.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script from anywhere: our packages are imported lazily below
SECTRA_TOKEN = "bench-sectra-token"
APP_ID = "strand-default"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_for(url: str, deadline_s: float = 30.0) -> None:
    import httpx

    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1.0)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


# ---- the servers (each runs in its own process) -------------------------------------------------


def serve_sectra(port: int) -> None:
    import uvicorn
    from sectra_client.mock_server import MockSectraServer

    # Served by uvicorn binding its own socket: MockSectraServer.run() hands uvicorn a socket
    # without IPPROTO_TCP, so asyncio skips TCP_NODELAY and every answer waits ~40 ms on Nagle.
    app = MockSectraServer(token=SECTRA_TOKEN).create_app()
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def serve_bridge(port: int, sectra_url: str, prefix: str, redis_url: str, enqueue: str) -> None:
    import redis
    import uvicorn

    os.environ["REDIS_URL"] = redis_url  # the Celery broker reads it
    from service.app import create_app
    from workers.apps import default_apps
    from workers.runstore import RunStore
    from workers.settings import Settings

    settings = Settings(REDIS_URL=redis_url, SECTRA_ALLOWED_CALLBACK_URLS=sectra_url, SECTRA_ALLOW_HTTP=True)
    store = RunStore(redis.Redis.from_url(redis_url, socket_timeout=5), prefix=prefix)
    if enqueue == "celery":
        from workers.dispatch import enqueue_run

        app = create_app(settings, default_apps(), store=store, enqueue=enqueue_run)
    else:
        app = create_app(settings, default_apps(), store=store, enqueue=lambda _run_id: None)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def serve_bare(port: int) -> None:
    import uvicorn
    from fastapi import FastAPI

    app = FastAPI()
    answer = {"id": 1, "versionId": "v", "slideId": "s", "displayResult": "Queued", "applicationVersion": "1"}

    async def bare(request: Request) -> JSONResponse:
        await request.body()
        return JSONResponse(answer, headers={"X-Sectra-ApiVersion": "1.10"})

    app.add_api_route("/sectra/{app_id}", bare, methods=["POST"])
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


# ---- the load ----------------------------------------------------------------------------------


async def _load(url: str, sectra_url: str, rate: float, duration: float, warmup: float) -> dict[str, Any]:
    import httpx

    limits = httpx.Limits(max_connections=200, max_keepalive_connections=200)
    latencies: list[float] = []
    errors: dict[str, int] = {}

    def body() -> dict[str, Any]:
        return {
            "action": "create",
            "applicationId": APP_ID,
            "slideId": f"bench-{uuid.uuid4().hex[:6]}",
            "callbackInfo": {"url": sectra_url, "token": SECTRA_TOKEN},
            "cancellationToken": uuid.uuid4().hex,
            "input": {"type": "wholeSlide"},
        }

    async with httpx.AsyncClient(base_url=url, timeout=30.0, limits=limits) as client:

        async def one(scheduled: float, measured: bool) -> None:
            delay = scheduled - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            try:
                response = await client.post(f"/sectra/{APP_ID}", json=body())
                outcome = str(response.status_code)
            except httpx.HTTPError as exc:
                outcome = type(exc).__name__
            if measured:
                latencies.append(time.perf_counter() - scheduled)
                if outcome != "200":
                    errors[outcome] = errors.get(outcome, 0) + 1

        start = time.perf_counter() + 0.2
        total = int((warmup + duration) * rate)
        tasks = [asyncio.create_task(one(start + i / rate, i >= warmup * rate)) for i in range(total)]
        await asyncio.gather(*tasks)
    latencies.sort()

    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p / 100 * len(latencies)))] * 1000

    return {
        "requests": len(latencies),
        "errors": errors,
        "p50_ms": round(pct(50), 2),
        "p90_ms": round(pct(90), 2),
        "p99_ms": round(pct(99), 2),
        "max_ms": round(latencies[-1] * 1000, 2),
        "mean_ms": round(statistics.fmean(latencies) * 1000, 2),
    }


def run_load(url: str, sectra_url: str, rate: float, duration: float, warmup: float) -> None:
    print(json.dumps(asyncio.run(_load(url, sectra_url, rate, duration, warmup))))


# ---- orchestration -----------------------------------------------------------------------------


def _spawn(*args: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, __file__, *args], cwd=ROOT, env=env)


def _measure(url: str, sectra_url: str, args: argparse.Namespace) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [
            sys.executable,
            __file__,
            "_load",
            url,
            sectra_url,
            str(args.rate),
            str(args.duration),
            str(args.warmup),
        ],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
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


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rate", type=float, default=200.0, help="requests per second")
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds first")
    parser.add_argument("--redis-url", default="redis://localhost:6379/13")
    parser.add_argument("--enqueue", choices=["celery", "none"], default="celery")
    args = parser.parse_args()

    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    ports = {name: _free_port() for name in ("sectra", "bridge", "bare")}
    sectra_url = f"http://127.0.0.1:{ports['sectra']}"
    processes = [
        _spawn("_sectra", str(ports["sectra"])),
        _spawn("_bridge", str(ports["bridge"]), sectra_url, prefix, args.redis_url, args.enqueue),
        _spawn("_bare", str(ports["bare"])),
    ]
    try:
        for name in ports:
            _wait_for(f"http://127.0.0.1:{ports[name]}/")
        bare = _measure(f"http://127.0.0.1:{ports['bare']}", sectra_url, args)
        bridge = _measure(f"http://127.0.0.1:{ports['bridge']}", sectra_url, args)
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=10)
        cleaned = _cleanup(args.redis_url, prefix)
    print(
        f"open-loop load: {args.rate:g} requests/s for {args.duration:g} s (after {args.warmup:g} s warm-up)"
    )
    print(f"enqueue: {args.enqueue}; redis keys cleaned up: {cleaned}")
    for name, result in (("bare FastAPI endpoint", bare), ("bridge POST create", bridge)):
        print(
            f"{name:22}  p50 {result['p50_ms']:7.2f} ms  p90 {result['p90_ms']:7.2f} ms  "
            f"p99 {result['p99_ms']:7.2f} ms  max {result['max_ms']:7.2f} ms  "
            f"n={result['requests']} errors={result['errors'] or 0}"
        )
    met = bridge["p99_ms"] < 50 and not bridge["errors"]
    p50_ratio = bridge["p50_ms"] / bare["p50_ms"]
    p99_ratio = bridge["p99_ms"] / bare["p99_ms"]
    print(f"bridge / bare: p50 x{p50_ratio:.1f}, p99 x{p99_ratio:.1f}")
    print(f"target bridge p99 < 50 ms with no errors: {'met' if met else 'NOT met'}")


if __name__ == "__main__":
    command = sys.argv[1] if len(sys.argv) > 1 else ""
    if command == "_sectra":
        serve_sectra(int(sys.argv[2]))
    elif command == "_bridge":
        serve_bridge(int(sys.argv[2]), *sys.argv[3:7])
    elif command == "_bare":
        serve_bare(int(sys.argv[2]))
    elif command == "_load":
        run_load(sys.argv[2], sys.argv[3], float(sys.argv[4]), float(sys.argv[5]), float(sys.argv[6]))
    else:
        main()
