"""The per-process pipeline context, built from settings the first time a step needs it."""

from __future__ import annotations

import threading

import redis

from strand_client import Client as StrandClient
from workers.apps import load_apps
from workers.context import PipelineContext
from workers.metering import CountingTransport, InFlight
from workers.runstore import RunStore
from workers.scheduler import StepScheduler
from workers.settings import get_settings
from workers.upload_index import UploadIndex

_lock = threading.Lock()
_context: PipelineContext | None = None
_redis: redis.Redis | None = None


def redis_client() -> redis.Redis:
    global _redis
    with _lock:
        if _redis is None:
            _redis = redis.Redis.from_url(
                get_settings().redis_url, socket_timeout=30, socket_connect_timeout=10
            )
        return _redis


def scheduler() -> StepScheduler:
    settings = get_settings()
    return StepScheduler(redis_client(), ttl_seconds=settings.run_retention_days * 86400)


def context() -> PipelineContext:
    global _context
    settings = get_settings()
    client = redis_client()
    with _lock:
        if _context is None:
            retention = settings.run_retention_days * 86400
            api_key = settings.strand_api_key.get_secret_value() if settings.strand_api_key else None
            _context = PipelineContext(
                settings=settings,
                apps=load_apps(settings.apps_file),
                store=RunStore(client, retention_seconds=retention),
                strand_factory=lambda: StrandClient(
                    api_key=api_key, base_url=settings.strand_base_url, transport=CountingTransport("strand")
                ),
                uploads=UploadIndex(client, ttl_seconds=retention),
                in_flight=InFlight(client),
                wait_slice_seconds=settings.wait_slice_seconds,
                progress_interval=settings.progress_interval_seconds,
            )
        return _context


def reset() -> None:
    """Forget the cached context (tests and the demo switch servers between runs)."""
    global _context, _redis
    with _lock:
        if _context is not None:
            _context.close()
        _context = None
        _redis = None
    get_settings.cache_clear()
