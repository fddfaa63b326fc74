"""Stage `deidentifying`: make the outgoing copy anonymous, then prove it, failing closed.

Identifying strings come from Sectra's PHI metadata and the original file
names; they live only in this function's memory and are never logged or
stored — the audit trail records field *names* only.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from workers.context import PipelineContext
from workers.deidentify import deidentify_slide, identifiers_from_metadata, verify_deidentified
from workers.runstore import RunRecord
from workers.stages import fetch
from workers.stages.fetch import staged_dir

_HASH_BLOCK = 4 * 1024 * 1024


def outgoing_dir(ctx: PipelineContext, run_id: str) -> Path:
    return ctx.run_dir(run_id) / "outgoing"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(_HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def _inputs(ctx: PipelineContext, record: RunRecord) -> list[Path]:
    """The files to de-identify: the staged download, or what an interrupted attempt left in `outgoing`.

    De-identification moves the staged files and edits them in place, in an order that is safe to
    repeat, so a crash mid-edit is finished by running it again on its own output. When neither is
    on this node's disk (the run resumed on another pod) the slide is fetched again.
    """
    folder = staged_dir(ctx, record.run_id)
    names = [entry["name"] for entry in record.staged_files]
    if names and all((folder / name).is_file() for name in names):
        return [folder / name for name in names]
    out = outgoing_dir(ctx, record.run_id)
    leftovers = sorted(p for p in out.iterdir() if p.is_file()) if out.is_dir() else []
    if leftovers:
        return leftovers
    fetch.run(ctx, record.model_copy(update={"staged_files": []}))
    record = ctx.store.require(record.run_id)
    return [folder / entry["name"] for entry in record.staged_files]


def run(ctx: PipelineContext, record: RunRecord) -> None:
    app = ctx.app(record)
    original_names = [entry["name"] for entry in record.staged_files]
    inputs = _inputs(ctx, record)
    out = outgoing_dir(ctx, record.run_id)
    files, report = deidentify_slide(inputs, run_id=record.run_id, out_dir=out, enabled=app.deidentify)
    if app.deidentify:
        with ctx.sectra(record) as sectra:
            metadata = sectra.get_image_metadata(record.slide_id, extended=True, phi=True)
        verify_deidentified(files, identifiers=identifiers_from_metadata(metadata, original_names))
        del metadata
    outgoing = [
        {"name": f.relative_to(out).as_posix(), "size": f.stat().st_size, "sha256": sha256_of(f)}
        for f in files
    ]
    ctx.store.update(
        record.run_id,
        outgoing_files=outgoing,
        deidentify_report={
            "format": report.format,
            "removed_images": report.removed_images,
            "blanked_fields": report.blanked_fields,
            "skipped": report.skipped,
        },
    )
    ctx.store.append_event(
        record.run_id,
        "deidentified" if not report.skipped else "deidentification_skipped_by_app_config",
        format=report.format,
        removed_images=",".join(report.removed_images),
        blanked_fields=",".join(report.blanked_fields),
        files=len(files),
    )
