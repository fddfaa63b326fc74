"""`sectra-bridge runs export RUN_ID --geojson FILE`: a completed run's hotspots for QuPath.

The run record keeps the summary the pipeline computed (`workers.summary_record`),
hotspot boxes in level-0 slide pixels, so the GeoJSON is built from those boxes
as stored (`workers.geojson`, the same builder as `analyse`): Sectra's
width-normalised drawing coordinates are neither read nor needed.
"""

from __future__ import annotations

from pathlib import Path

import click

from workers.jsonfile import write_json
from workers.runstore import RunStatus, RunStore


def export_run_geojson(store: RunStore, run_id: str, path: Path) -> int:
    """Write the run's FeatureCollection to `path`; returns its feature count. ClickException if none."""
    from workers.geojson import feature_collection
    from workers.summary_record import StoredSummary

    record = store.get(run_id)
    if record is None:
        raise click.ClickException(f"no run {run_id}")
    if record.status is not RunStatus.completed:
        raise click.ClickException(f"run {run_id} is {record.status.value}; only completed runs are exported")
    if record.summary is None:
        raise click.ClickException(f"run {run_id} completed without figures (see `runs show {run_id}`)")
    stored = StoredSummary.from_record(record.summary)
    collection = feature_collection(stored.markers, microns_per_pixel=record.microns_per_pixel or None)
    write_json(path, collection)
    return len(collection["features"])
