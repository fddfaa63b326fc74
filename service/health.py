"""Probes and metrics: is the process up, can it take work, and what has it done.

Readiness checks what a new run needs at once: Redis (run store and queue)
and room in the work directory for the slide a worker on this host will
stage. Each check is reported separately, and `missing` names the failed ones,
so an operator (or a load balancer's log) sees which dependency is down.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import anyio
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from service.errors import REDIS_RETRY_AFTER_SECONDS
from service.state import get_state

MIN_FREE_BYTES = 1 << 30
MIN_FREE_FRACTION = 0.05
PROBE_TIMEOUT_SECONDS = 2.0

router = APIRouter()


def check_work_dir(
    path: Path, *, min_free_bytes: int = MIN_FREE_BYTES, min_free_fraction: float = MIN_FREE_FRACTION
) -> dict[str, Any]:
    """Free space where slides are staged; the directory may not exist yet, so its nearest parent counts."""
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        usage = shutil.disk_usage(probe)
    except OSError as exc:
        return {"ok": False, "path": str(path), "message": f"cannot read free space: {exc.strerror}"}
    fraction = usage.free / usage.total if usage.total else 0.0
    ok = usage.free >= min_free_bytes and fraction >= min_free_fraction
    check: dict[str, Any] = {
        "ok": ok,
        "path": str(path),
        "free_bytes": usage.free,
        "free_fraction": round(fraction, 4),
    }
    if not ok:
        check["message"] = (
            f"less than {min_free_bytes / (1 << 30):g} GiB or {min_free_fraction:.0%} free for staged slides"
        )
    return check


@router.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(request: Request) -> JSONResponse:
    state = get_state(request)
    redis_ok = False
    # A probe must answer within the kubelet's timeout even while Redis hangs or the client retries.
    with anyio.move_on_after(PROBE_TIMEOUT_SECONDS):
        redis_ok = await anyio.to_thread.run_sync(state.store.ping, abandon_on_cancel=True)
    checks: dict[str, dict[str, Any]] = {
        "redis": {"ok": True} if redis_ok else {"ok": False, "message": "Redis does not answer"},
        "work_dir": await anyio.to_thread.run_sync(check_work_dir, state.settings.work_dir),
    }
    missing = [name for name, check in checks.items() if not check["ok"]]
    body: dict[str, Any] = {"status": "not_ready" if missing else "ready", "checks": checks}
    if missing:
        body["missing"] = missing
        body["message"] = f"not ready: {', '.join(missing)} unavailable"
        headers = {"Retry-After": str(REDIS_RETRY_AFTER_SECONDS)}
        return JSONResponse(body, status_code=503, headers=headers)
    return JSONResponse(body)


@router.get("/metrics")
def metrics() -> Response:
    """Prometheus text format; with several web processes, merged from PROMETHEUS_MULTIPROC_DIR."""
    registry = REGISTRY
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
