"""`sectra-bridge render RUN_ID --out result.png`: a picture of what Sectra holds for a completed run.

The run's result(s) are read back from Sectra (`get_result`, with the run's
stored callback URL and token), not rebuilt from the record, so the picture is
the posted truth: the primitive result and, when there is one, the hotspot
gallery. The slide comes from the staged de-identified copy while it is on
this pod, else it is streamed from Sectra and deleted after reading
(`workers.thumbnail`). Every failure is a `ClickException` in plain words.
"""

from __future__ import annotations

import logging
from pathlib import Path

import click
import redis

from sectra_adapter import SectraError, SectraRequestFailed, SectraUnavailable
from workers.context import PipelineContext
from workers.render import marker_legend, png_bytes, render_result
from workers.runstore import RunStatus
from workers.thumbnail import ThumbnailError, run_thumbnail

log = logging.getLogger(__name__)


def render_run(ctx: PipelineContext, run_id: str, out: Path) -> Path:
    """Write the PNG of the run's posted result(s) to `out` and return the path."""
    try:
        record = ctx.store.get(run_id)
    except redis.RedisError as exc:
        raise click.ClickException(
            f"the run store (Redis) could not be reached: {type(exc).__name__}"
        ) from exc
    if record is None:
        raise click.ClickException(f"no run {run_id}")
    if record.status is not RunStatus.completed:
        raise click.ClickException(
            f"run {run_id} is {record.status.value}; only a completed run has a result to draw"
        )
    result_ids = [rid for rid in (record.sectra_result_id, record.review_result_id) if rid is not None]
    if not result_ids:
        raise click.ClickException(f"run {run_id} has no result in Sectra (see `runs show {run_id}`)")
    try:
        with ctx.sectra(record) as sectra:
            results = [sectra.get_result(record.app_id, rid) for rid in result_ids]
    except SectraUnavailable as exc:
        raise click.ClickException(f"Sectra could not be reached: {exc}") from exc
    except SectraRequestFailed as exc:
        raise click.ClickException(f"Sectra did not give the run's result: {exc}") from exc
    except SectraError as exc:
        raise click.ClickException(f"Sectra refused: {exc}") from exc
    try:
        picture = run_thumbnail(ctx, record, download=True)
    except (SectraError, ThumbnailError, OSError) as exc:
        # The figures and outlines are still worth a picture; say what is missing.
        click.echo(f"warning: no slide picture ({exc}); drawing on a plain canvas", err=True)
        picture = None
    width = record.slide_width or (picture.width if picture else 0)
    height = record.slide_height or (picture.height if picture else 0)
    if width <= 0 or height <= 0:
        raise click.ClickException(f"run {run_id} has no slide size to place the drawing")
    image = render_result(picture, width, height, results, legend=marker_legend(record.summary))
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    partial.write_bytes(png_bytes(image))
    partial.replace(out)
    return out
