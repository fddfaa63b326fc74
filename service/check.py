"""`sectra-bridge check`: is this deployment able to work? Each finding in plain words.

Meant for the first install and for a runbook: it reads the configuration,
then reaches Redis, Strand (the marker catalogue is free) and, when given a
callback URL and token, Sectra. It never prints a secret.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import urlsplit

import redis

from sectra_adapter import (
    CallbackUrlRefused,
    EnvironmentProxies,
    SectraAdapter,
    SectraError,
    check_callback_url,
)
from strand_client import Client as StrandClient
from strand_client import StrandError
from workers.apps import AppConfig, AppsConfigError, load_apps
from workers.settings import Settings


@dataclass
class CheckReport:
    ok: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def good(self, text: str) -> None:
        self.ok.append(text)

    def bad(self, text: str) -> None:
        self.problems.append(text)


def _route(url: str) -> str:
    """How calls to `url` leave this pod: directly, or through the environment's proxy (named by its
    host and port only: a proxy URL may carry a password)."""
    proxy = EnvironmentProxies().for_url(url)
    if proxy is None:
        return "directly"
    where = urlsplit(proxy)
    return f"through the proxy at {where.hostname}:{where.port or 80}"


def _check_redis(settings: Settings, report: CheckReport) -> None:
    try:
        redis.Redis.from_url(settings.redis_url, socket_connect_timeout=3, socket_timeout=3).ping()
    except redis.RedisError as exc:
        report.bad(f"Redis does not answer on REDIS_URL ({type(exc).__name__}); runs cannot be queued")
        return
    report.good("Redis answers")


def _check_strand(settings: Settings, apps: dict[str, AppConfig], report: CheckReport) -> None:
    if settings.strand_api_key is None:
        report.bad("STRAND_API_KEY is not set; nothing can be sent to Strand")
        return
    try:
        with StrandClient(
            api_key=settings.strand_api_key.get_secret_value(),
            base_url=settings.strand_base_url,
            timeout=10.0,
            max_retries=1,
        ) as client:
            offered = set(client.markers.list())
    except StrandError as exc:
        report.bad(f"Strand at {settings.strand_base_url} refused or failed: {exc}")
        return
    report.good(
        f"Strand answers at {settings.strand_base_url}, {_route(settings.strand_base_url)} "
        f"({len(offered)} markers offered)"
    )
    for app in apps.values():
        missing = [m for m in app.markers if m not in offered]
        if missing:
            report.bad(f"app {app.id}: Strand does not offer {', '.join(missing)} to this organisation")
        else:
            report.good(f"app {app.id}: all markers offered ({', '.join(app.markers)})")


def _check_sectra(settings: Settings, url: str, token: str, report: CheckReport) -> None:
    try:
        check_callback_url(url, settings.allowed_callback_urls, settings.allow_http)
    except CallbackUrlRefused as exc:
        report.bad(f"Sectra URL {url} would be refused: {exc}")
        return
    try:
        with SectraAdapter(url, token, allow_http=settings.allow_http, timeout=10.0, max_retries=1) as sectra:
            info = sectra.fetch_version_info()
    except SectraError as exc:
        report.bad(f"Sectra at {url} failed: {exc}")
        return
    report.good(
        f"Sectra answers at {url}, {_route(url)} (IA-API {info.apiVersion}, software {info.softwareVersion})"
    )


def run_check(
    settings: Settings, *, sectra_url: str | None = None, sectra_token: str | None = None
) -> CheckReport:
    report = CheckReport()
    try:
        apps = load_apps(settings.apps_file)
    except AppsConfigError as exc:
        report.bad(str(exc))
        apps = {}
    else:
        report.good(f"{len(apps)} app(s) configured: {', '.join(sorted(apps))}")
    if not settings.allowed_callback_urls:
        report.bad("SECTRA_ALLOWED_CALLBACK_URLS is empty: every Sectra invocation will be refused (403)")
    if settings.webhook_token is None:
        report.bad("BRIDGE_WEBHOOK_TOKEN is not set: anyone who reaches the webhook can start runs")
    _check_redis(settings, report)
    _check_strand(settings, apps, report)
    if sectra_url and sectra_token:
        _check_sectra(settings, sectra_url, sectra_token, report)
    return report
