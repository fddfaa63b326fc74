"""`sectra-bridge demo`: the whole flow on one machine, with nothing but this package installed.

Real parts throughout: Sectra's own mock server, our fake Strand server, the
webhook over HTTP, a Celery worker, and a Redis-protocol server (fakeredis
over TCP, so the code path is the production `redis://` one).
"""

from __future__ import annotations

import os
import socket
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import click
import numpy as np

from service.demo_redis import DemoRedis

DEMO_APP = "strand-default"
DEMO_SLIDE = "demo-slide-1"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_demo_slide(path: Path, width: int = 2048, height: int = 1536) -> Path:
    """A small pyramidal H&E-looking TIFF: pink tissue on white glass, tiled, two levels."""
    import tifffile

    yy, xx = np.mgrid[0:height, 0:width]
    tissue = ((xx - width / 2) / (width * 0.4)) ** 2 + ((yy - height / 2) / (height * 0.38)) ** 2 < 1
    image = np.full((height, width, 3), 245, dtype=np.uint8)
    image[tissue] = (200, 120, 170)
    with tifffile.TiffWriter(path, bigtiff=False) as tif:
        tif.write(image, tile=(256, 256), photometric="rgb", description="Demo slide |MPP = 0.5", subifds=1)
        tif.write(image[::2, ::2], tile=(256, 256), photometric="rgb", subfiletype=1)
    return path


def _start_uvicorn(app: Any) -> tuple[str, Any]:
    import uvicorn

    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True, name="demo-webhook").start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("the webhook did not start within 10 s")
        time.sleep(0.02)
    return f"http://127.0.0.1:{port}", server


def run_demo(timeout: float = 60.0) -> int:
    """Returns the process exit code: 0 when the result reached Sectra, 1 otherwise (with the reason)."""
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="sectra-bridge-demo-"))
    from sectra_client import mock_server
    from sectra_client.schemas import CallbackInfo, DisplayedName, ImageMetadata, Size, WholeSlideInput
    from sectra_client.schemas.image import FocalPlane, OpticalPath, SlideFormat, TileFormat
    from sectra_client.schemas.invocation import CreateInvocation

    from strand_client.testing import FakeStrandServer

    # Silence the mock's per-chunk progress chatter on stdout.
    mock_server.print = lambda *args, **kwargs: None

    click.echo("Starting Sectra mock, fake Strand, Redis (fakeredis over TCP), webhook and a worker ...")
    slide = make_demo_slide(workdir / "demo-slide.tiff")
    sectra = mock_server.MockSectraServer()
    sectra.add_slide(
        ImageMetadata(
            id=DEMO_SLIDE,
            isStreamable=True,
            imageSize=Size(width=2048, height=1536),
            tileSize=Size(width=256, height=256),
            micronsPerPixel=0.5,
            focalPlanes=[FocalPlane(id="0", offsetUm=0.0)],
            opticalPaths=[OpticalPath(id="0", description="Brightfield")],
            storedTileFormat=TileFormat(mimeType="image/jpeg", extension="jpg"),
            availableTileFormats=[TileFormat(mimeType="image/jpeg", extension="jpg")],
            fileFormat=SlideFormat(mimeType="image/tiff"),
            staining=DisplayedName(displayName="H&E"),
            block=DisplayedName(displayName="A1"),
        )
    )
    sectra.add_slide_files(DEMO_SLIDE, slide)
    sectra.run(port=0, host="127.0.0.1")
    strand = FakeStrandServer(job_duration=3.0)
    strand.start()
    redis_server = DemoRedis().start()
    redis_url = redis_server.url

    os.environ.update(
        {
            "REDIS_URL": redis_url,
            "STRAND_API_KEY": strand.api_key,
            "STRAND_BASE_URL": strand.url,
            "SECTRA_ALLOWED_CALLBACK_URLS": sectra.url,
            "SECTRA_ALLOW_HTTP": "true",
            "BRIDGE_WORK_DIR": str(workdir / "work"),
            "BRIDGE_PROGRESS_INTERVAL_SECONDS": "0.5",
        }
    )
    from celery.contrib.testing.worker import start_worker

    from service.app import create_app
    from workers import runtime
    from workers.celery_app import celery_app

    runtime.reset()
    celery_app.conf.broker_url = redis_url
    webhook_url, webhook = _start_uvicorn(create_app())
    try:
        with start_worker(
            celery_app, pool="threads", concurrency=2, perform_ping_check=False, loglevel="error"
        ):
            route = f"{webhook_url}/sectra/{DEMO_APP}"
            click.echo(f"Sectra posts a 'create' invocation for slide {DEMO_SLIDE} to {route}")
            invocation = CreateInvocation(
                applicationId=DEMO_APP,
                slideId=DEMO_SLIDE,
                callbackInfo=CallbackInfo(url=sectra.url, token=sectra.token),
                cancellationToken=str(uuid.uuid4()),
                input=WholeSlideInput(),
            )
            answer = sectra.trigger(f"{webhook_url}/sectra/{DEMO_APP}", invocation)
            click.echo(
                f"Webhook answered at once with pending result #{answer['id']}: {answer['displayResult']!r}"
            )
            return _follow(sectra, started, timeout, workdir / "result.png")
    except Exception as exc:
        click.echo(f"Demo failed: {type(exc).__name__}: {exc}", err=True)
        return 1
    finally:
        webhook.should_exit = True
        strand.stop()
        sectra.stop()
        redis_server.stop()
        runtime.reset()


def _follow(sectra: Any, started: float, timeout: float, picture: Path) -> int:
    from workers import runtime
    from workers.runstore import RunStatus

    store = runtime.context().store
    last = ""
    while time.monotonic() - started < timeout:
        runs = store.list_runs(limit=1)
        if runs:
            run = runs[0]
            line = f"  [{time.monotonic() - started:5.1f}s] {run.status.value:13} {run.message or ''}"
            if line.split("]", 1)[1] != last:
                click.echo(line)
                last = line.split("]", 1)[1]
            if run.status in (RunStatus.completed, RunStatus.failed, RunStatus.cancelled):
                return _report(sectra, run, picture)
        time.sleep(0.2)
    click.echo(f"Demo failed: the run did not finish within {timeout:.0f} s", err=True)
    return 1


def _report(sectra: Any, run: Any, picture: Path) -> int:
    every = sectra.get_results(DEMO_APP, DEMO_SLIDE)
    # One drawn result per run; a hotspot gallery (patchCollection), when the app makes one, is its second.
    results = [r for r in every if getattr(r.data.result, "type", None) == "primitive"]
    if len(results) != 1:
        click.echo(
            f"Demo failed: Sectra holds {len(results)} drawn results for the slide, expected 1", err=True
        )
        return 1
    result = results[0]
    click.echo("")
    click.echo("Result that reached Sectra:")
    click.echo(f"  displayResult: {result.displayResult}")
    for key, value in result.displayProperties.items():
        click.echo(f"  {key}: {value}")
    primitives = getattr(result.data.result, "content", [])
    click.echo(f"  drawn items: {len(primitives) if isinstance(primitives, list) else 1}")
    if run.status.value != "completed":
        click.echo(f"Demo failed: the run ended {run.status.value}: {run.error or run.message}", err=True)
        return 1
    from service.render_cmd import render_run
    from workers import runtime

    try:
        # As `sectra-bridge render` does it: the results read back from Sectra, the slide streamed from it.
        render_run(runtime.context(), run.run_id, picture)
    except click.ClickException as exc:
        click.echo(f"Demo failed: the result picture could not be drawn: {exc.message}", err=True)
        return 1
    click.echo(f"Result picture (the slide with what Sectra holds drawn on it): {picture}")
    click.echo("Demo complete.")
    return 0
