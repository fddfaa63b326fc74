"""Result stores of finished fake jobs, built once per job by `zarr_results.build_results` (known truth)."""

from __future__ import annotations

import threading

from strand_client.testing.state import FakeOptions, JobRecord, UploadRecord
from strand_client.testing.zarr_results import ResultsFixture, build_results


class ResultStores:
    """Builds a job's OME-Zarr store on first use (zarr encoding is too slow to do on every request)."""

    def __init__(self, options: FakeOptions) -> None:
        self._options = options
        self._lock = threading.Lock()
        self._stores: dict[str, ResultsFixture] = {}

    def get(self, job: JobRecord, upload: UploadRecord | None) -> ResultsFixture:
        """Only the markers the job delivered are in its store (a `partial_failed` job lacks the rest)."""
        with self._lock:
            fixture = self._stores.get(job.id)
            if fixture is None:
                options = self._options
                height, width = options.results_shape
                slide_width = upload.width_px if upload is not None else None
                fixture = build_results(
                    job.delivered,
                    height,
                    width,
                    layout=options.results_layout,
                    seed=job.seq,
                    dtype=options.results_dtype,
                    tissue_mode=options.results_tissue_mode,
                    microns_per_pixel=options.results_microns_per_pixel,
                    missing_datasets=options.results_missing_datasets,
                    slide_scale=slide_width / width if slide_width else 1.0,
                )
                self._stores[job.id] = fixture
            return fixture
