"""Where a `create`'s CPU goes: each part of the create path timed alone, then whole, in one process.

    .venv/bin/python bench/webhook_parts.py [--count 3000] [--redis-url redis://127.0.0.1:6379/13]

`bench/webhook.py` measures the create as deployed (`serve --workers 2`, open-loop load) against a
bare endpoint; this says which part of the difference is which. One process drives the app's ASGI
callable directly (no HTTP server: that layer is the bare endpoint's too), against a real Redis
and Sectra's mock server in a process of its own, so the CPU read here (`time.process_time`) is
the create path's alone. Each part runs `--count` times warm, on its own: a part's figure inside a
whole create is higher (caches are colder when every part runs once per request), which the
"whole" lines show. Ratios are against the bare endpoint's ASGI app measured in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


def _invocation(sectra_url: str) -> bytes:
    return json.dumps(
        {
            "action": "create",
            "applicationId": "strand-default",
            "slideId": f"parts-{uuid.uuid4().hex[:6]}",
            "callbackInfo": {"url": sectra_url, "token": "bench-sectra-token"},
            "cancellationToken": uuid.uuid4().hex,
            "input": {"type": "wholeSlide"},
        }
    ).encode()


async def _asgi_post(app: Any, body: bytes) -> int:
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": "/sectra/strand-default", "raw_path": b"/sectra/strand-default",
        "query_string": b"", "root_path": "", "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 2),
        "headers": [(b"host", b"bench"), (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode())],
        "state": {},
    }  # fmt: skip
    sent = False
    status = 0

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await asyncio.Event().wait()  # the client never disconnects
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]

    await app(scope, receive, send)
    return status


async def _cpu_per_call(call: Callable[[], Awaitable[Any]], count: int) -> float:
    for _ in range(min(200, count)):
        await call()
    started = time.process_time()
    for _ in range(count):
        await call()
    return (time.process_time() - started) / count * 1e6


async def _measure(args: argparse.Namespace, sectra_url: str) -> list[tuple[str, float]]:
    import webhook as bench_webhook

    from sectra_adapter import pending_result_json, results_path
    from service.app import create_app
    from service.parsing import parse_invocation
    from workers.runstore import ModelJson

    app = create_app()
    bare = bench_webhook.bare_app()
    state = app.state.bridge
    count = args.count
    bodies = iter([_invocation(sectra_url) for _ in range(8 * (count + 200))])
    rows: list[tuple[str, float]] = []
    async with app.router.lifespan_context(app), bare.router.lifespan_context(bare):
        runs, sectra, log = state.loop.runs, state.loop.sectra, logging.getLogger("service.webhook")
        claims: list[tuple[str, str]] = []

        async def claim() -> None:
            invocation = parse_invocation(next(bodies))
            run_id, _, step = await runs.create_and_claim(
                app_id="strand-default", slide_id=invocation.slideId,
                cancellation_token=invocation.cancellationToken, callback_url=sectra_url,
                callback_token="bench-sectra-token", source="create", step="pending-result",
                ttl_seconds=60, done_field="pending_result",
            )  # fmt: skip
            claims.append((run_id, step.token or ""))

        async def post() -> Any:  # as `service.webhook._create_in_sectra` makes it
            pending = pending_result_json("parts-slide", "1")
            return await sectra.create_results(
                sectra_url, "bench-sectra-token", pending, path=results_path("strand-default")
            )

        posted = await post()
        answer, stored = ModelJson(posted.json), posted.result
        held = iter(claims)

        async def record() -> None:
            run_id, token = next(held)
            await state.loop.record_and_enqueue(
                run_id, "pending-result", token, event="created",
                event_data={"source": "create", "sectra_result_id": stored.id}, pending_result=answer,
                sectra_result_id=stored.id, sectra_version_id=stored.versionId, message=stored.displayResult,
                input_type="wholeSlide", region_input=None,
            )  # fmt: skip

        async def parse() -> None:
            parse_invocation(next(bodies))

        async def log_line() -> None:
            log.info("run created", extra={"source": "create", "sectra_result_id": 1})

        async def whole(target: Any) -> None:
            assert await _asgi_post(target, next(bodies)) == 200

        rows.append(("bare endpoint (ASGI app)", await _cpu_per_call(lambda: whole(bare), count)))
        rows.append(("whole create (ASGI app)", await _cpu_per_call(lambda: whole(app), count)))
        rows.append(("  parse and validate the invocation", await _cpu_per_call(parse, count)))
        rows.append(("  Redis: create and claim the run", await _cpu_per_call(claim, count)))
        rows.append(("  Sectra: POST the pending result", await _cpu_per_call(post, count)))
        rows.append(("  Redis: record it and queue the first step", await _cpu_per_call(record, count)))
        rows.append(("  the 'run created' log line", await _cpu_per_call(log_line, count)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=3000, help="calls per part")
    parser.add_argument(
        "--redis-url", default="redis://127.0.0.1:6379/13", help="a database the bench may fill"
    )
    args = parser.parse_args()
    import httpx
    import webhook as bench_webhook

    port = bench_webhook._free_port()
    sectra_url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    sectra = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "webhook.py"), "_sectra", str(port)], env=env
    )
    os.environ.update(
        REDIS_URL=args.redis_url, SECTRA_ALLOWED_CALLBACK_URLS=sectra_url, SECTRA_ALLOW_HTTP="true"
    )
    from workers.observability import configure_logging

    configure_logging("INFO")
    logging.getLogger().handlers[0].setStream(open(os.devnull, "w"))  # noqa: SIM115 - lives as long as the bench
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"{sectra_url}/dev/slides", timeout=1.0)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        import uvloop

        rows = uvloop.run(_measure(args, sectra_url))
    finally:
        sectra.terminate()
        sectra.wait(timeout=30)
        bench_webhook._cleanup(args.redis_url)  # the runs and the queued steps
    bare = rows[0][1]
    print(f"CPU per call, {args.count} calls each, one process (uvloop), log lines to /dev/null:")
    for name, micros in rows:
        print(f"  {name:44} {micros:8.1f} µs  x{micros / bare:5.1f} the bare endpoint")


if __name__ == "__main__":
    main()
