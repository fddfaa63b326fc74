"""Every worker's sweep of its own work volume: no slide file outlives its run on any pod.

Each worker pod has its own volume, and a run may have moved between pods
(a crash, a redeploy), so the pod that finishes a run cannot clean up the
others. Each worker therefore looks at what *it* holds, against the run store:

- a run that is gone (deleted, expired), completed or cancelled: everything is removed;
- a failed run: everything is removed once it has been failed for `BRIDGE_STAGED_RETENTION_HOURS`
  (a day by default: time for `runs retry` to find the files; a later retry fetches and
  de-identifies again). Keeping the de-identified copy as long as the record (30 days) would make
  failed runs the largest use of the volume, and holds patient material nobody asked for;
- a run still under way is left alone (another pod may be on it; this copy goes when it ends).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from workers.runstore import RunStatus, RunStore
from workers.staging import Staging

log = logging.getLogger(__name__)


@dataclass
class Swept:
    removed_runs: int = 0  # ended or gone
    removed_failed: int = 0  # failed longer ago than the retention


def sweep(store: RunStore, staging: Staging, *, retention_seconds: float, now: float | None = None) -> Swept:
    """One pass over this pod's work directory."""
    moment = time.time() if now is None else now
    swept = Swept()
    for run_id in list(staging.run_ids()):
        record = store.get(run_id)
        if record is None or record.status in (RunStatus.completed, RunStatus.cancelled):
            if staging.remove(run_id):
                swept.removed_runs += 1
            continue
        expired = record.status is RunStatus.failed and moment - record.updated_at >= retention_seconds
        if expired and staging.remove(run_id):
            swept.removed_failed += 1
            hours = round(retention_seconds / 3600, 1)
            store.append_event(run_id, "staged_files_removed", after_hours=hours)
    if swept.removed_runs or swept.removed_failed:
        log.info(
            "work volume swept",
            extra={"removed_runs": swept.removed_runs, "removed_failed": swept.removed_failed},
        )
    return swept


def start_janitor(
    stop: threading.Event, store: RunStore, staging: Staging, *, retention_seconds: float, interval: float
) -> threading.Thread:
    """Sweep at once, then every `interval` s (`BRIDGE_JANITOR_INTERVAL_SECONDS`) until `stop` is set."""

    def loop() -> None:
        while True:
            try:
                sweep(store, staging, retention_seconds=retention_seconds)
            except Exception as exc:  # the janitor must outlive a Redis blip or a busy disk
                log.warning("work volume sweep failed", extra={"error_type": type(exc).__name__})
            if stop.wait(interval):
                return

    thread = threading.Thread(target=loop, name="bridge-janitor", daemon=True)
    thread.start()
    return thread
