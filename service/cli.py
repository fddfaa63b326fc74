"""`sectra-bridge`: the one command operators and the container image use."""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import click

from service.analyse_cmd import analyse
from service.deidentify_cmd import deidentify


@click.group()
def main() -> None:
    """Connects a Sectra digital-pathology PACS to the Strand AI platform."""


@main.command()
@click.option("--host", default="0.0.0.0", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option(
    "--workers",
    default=1,
    show_default=True,
    type=click.IntRange(min=1),
    help="Processes serving the one port (each with the HTTP limits; metrics merged).",
)
def serve(host: str, port: int, workers: int) -> None:
    """Run the webhook and admin API (with the HTTP limits of README "HTTP limits")."""
    # Taken before anything imports the metrics: the workers share the directory, the supervisor not.
    metrics_dir = os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None) if workers > 1 else None
    from service.server import HttpLimits, serve_workers
    from service.server import serve as serve_http
    from workers.observability import configure_logging
    from workers.settings import get_settings

    settings = get_settings()
    limits = HttpLimits.from_settings(settings)
    if workers > 1:
        configure_logging(settings.log_level)  # the supervisor's own lines; each worker sets up its own
        factory = f"{__name__}:{served_app.__name__}"
        serve_workers(factory, host=host, port=port, limits=limits, workers=workers, metrics_dir=metrics_dir)
        return
    serve_http(served_app(), host=host, port=port, limits=limits)


def served_app() -> Any:
    """The app a `serve` process runs, from the environment, with its logging set up (a `--workers`
    process is spawned afresh and imports this by name)."""
    from service.app import create_app
    from workers.observability import configure_logging
    from workers.settings import get_settings

    settings = get_settings()
    configure_logging(settings.log_level)
    return create_app(settings)


@main.command()
@click.option("--concurrency", default=4, show_default=True, type=int)
def worker(concurrency: int) -> None:
    """Run a Celery worker for all of the bridge's queues."""
    from workers.worker_main import run_worker

    run_worker(concurrency)


@main.command()
@click.option("--timeout", default=60.0, show_default=True, help="Seconds before the demo gives up.")
def demo(timeout: float) -> None:
    """Run one sample slide end to end on this machine, with no external services."""
    from service.demo import run_demo

    sys.exit(run_demo(timeout=timeout))


@main.command()
@click.argument("app_id")
@click.option("--url", required=True, help="The URL Sectra will call for this app (this service's route).")
def registration(app_id: str, url: str) -> None:
    """Print the Sectra registration JSON for an app."""
    from service.registration import build_registration
    from workers.apps import load_apps
    from workers.settings import get_settings

    apps = load_apps(get_settings().apps_file)
    if app_id not in apps:
        raise click.ClickException(f"unknown app {app_id!r}; configured apps: {', '.join(sorted(apps))}")
    click.echo(json.dumps(build_registration(apps[app_id], url).model_dump(mode="json"), indent=2))


@main.command()
@click.option("--sectra-url", default=None, help="A Sectra callback URL to try (with --sectra-token).")
@click.option("--sectra-token", default=None, help="A Sectra callback token to try; never printed.")
def check(sectra_url: str | None, sectra_token: str | None) -> None:
    """Check the configuration and reach Redis, Strand and (optionally) Sectra; exit 1 on any problem."""
    from service.check import run_check
    from workers.settings import get_settings

    report = run_check(get_settings(), sectra_url=sectra_url, sectra_token=sectra_token)
    for line in report.ok:
        click.echo(f"ok       {line}")
    for line in report.problems:
        click.echo(f"PROBLEM  {line}")
    sys.exit(1 if report.problems else 0)


@main.command("fake-strand")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8100, show_default=True, type=int)
def fake_strand(host: str, port: int) -> None:
    """Run the fake Strand server standalone (for trials without a Strand account)."""
    from strand_client.testing import serve_forever

    serve_forever(host, port)


@main.group()
def runs() -> None:
    """Inspect and re-drive runs."""


def _store():  # type: ignore[no-untyped-def]
    from workers import runtime

    return runtime.context().store


def _checked_run_id(_ctx: click.Context, _param: click.Parameter, value: str) -> str:
    """A run id off its grammar names no run (and could name another Redis key): refuse it here."""
    from workers.ids import RUN_ID_RULE, is_run_id

    if not is_run_id(value):
        raise click.BadParameter(f"must be {RUN_ID_RULE}")
    return value


@runs.command("list")
@click.option("--status", default=None, help="Only runs in this status.")
@click.option("--app", "app_id", default=None, help="Only runs of this app.")
@click.option("--limit", default=50, show_default=True, type=int)
def runs_list(status: str | None, app_id: str | None, limit: int) -> None:
    """List recent runs, newest first."""
    from workers.runstore import RunStatus

    try:
        wanted = RunStatus(status) if status else None
    except ValueError as exc:
        raise click.ClickException(
            f"unknown status {status!r}; one of: {', '.join(s.value for s in RunStatus)}"
        ) from exc
    records = _store().list_runs(status=wanted, app_id=app_id, limit=limit)
    if not records:
        click.echo("no runs")
        return
    click.echo(f"{'RUN':36}  {'APP':18}  {'STATUS':13}  {'UPDATED':19}  MESSAGE")
    for r in records:
        updated = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.updated_at))
        click.echo(f"{r.run_id:36}  {r.app_id[:18]:18}  {r.status.value:13}  {updated}  {r.message or ''}")


@runs.command("show")
@click.argument("run_id", callback=_checked_run_id)
def runs_show(run_id: str) -> None:
    """Show a run's record and its audit trail."""
    store = _store()
    record = store.get(run_id)
    if record is None:
        raise click.ClickException(f"no run {run_id}")
    click.echo(json.dumps(record.public_dict(), indent=2, default=str))
    click.echo("events:")
    for event in store.events(run_id):
        click.echo("  " + json.dumps(event, default=str))


@runs.command("retry")
@click.argument("run_id", callback=_checked_run_id)
def runs_retry(run_id: str) -> None:
    """Re-drive a failed run from its last good checkpoint (no re-upload, no re-submit)."""
    from workers.dispatch import retry_run
    from workers.runstore import IllegalTransition, RunNotFound

    try:
        stage = retry_run(run_id)
    except RunNotFound as exc:
        raise click.ClickException(f"no run {run_id}") from exc
    except IllegalTransition as exc:
        raise click.ClickException(f"run {run_id} cannot be retried: {exc}") from exc
    click.echo(f"run {run_id} restarts at {stage.value}")


@runs.command("export")
@click.argument("run_id", callback=_checked_run_id)
@click.option(
    "--geojson", "geojson_file", required=True, type=click.Path(dir_okay=False), help="Where to write it."
)
def runs_export(run_id: str, geojson_file: str) -> None:
    """Write a completed run's hotspots as GeoJSON that QuPath imports (level-0 slide pixels)."""
    from pathlib import Path

    from service.export_cmd import export_run_geojson

    count = export_run_geojson(_store(), run_id, Path(geojson_file))
    click.echo(f"run {run_id}: {count} features written")


@main.command()
@click.argument("run_id", callback=_checked_run_id)
@click.option(
    "--out",
    default="result.png",
    show_default=True,
    type=click.Path(dir_okay=False),
    help="Where to write the PNG.",
)
def render(run_id: str, out: str) -> None:
    """Draw a completed run's result as Sectra holds it on a thumbnail of the slide, as a PNG."""
    from pathlib import Path

    from service.render_cmd import render_run
    from workers import runtime

    path = render_run(runtime.context(), run_id, Path(out))
    click.echo(str(path))


@runs.command("cancel")
@click.argument("run_id", callback=_checked_run_id)
def runs_cancel(run_id: str) -> None:
    """Ask a run to stop at its next checkpoint (its Strand job is cancelled and refunded)."""
    from workers.dispatch import cancel_run
    from workers.runstore import RunNotFound

    try:
        cancel_run(run_id)
    except RunNotFound as exc:
        raise click.ClickException(f"no run {run_id}") from exc
    click.echo(f"run {run_id}: cancellation requested")


main.add_command(deidentify)
main.add_command(analyse)
