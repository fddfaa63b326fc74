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
        """Only the markers the job delivered are in its store (a `partial_failed` job lacks the rest).

        The map covers the uploaded slide: its scale per axis is the slide's
        size (less any translation) over the map's, so a map whose aspect
        differs from the slide's has anisotropic pixels, as a real one may.
        """
        with self._lock:
            fixture = self._stores.get(job.id)
            if fixture is None:
                options = self._options
                height, width = options.results_shape
                shift_y, shift_x = options.results_translation
                slide_scale: tuple[float, float] = (1.0, 1.0)
                if upload is not None and upload.width_px and upload.height_px:
                    slide_scale = ((upload.height_px - shift_y) / height, (upload.width_px - shift_x) / width)
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
                    slide_scale=slide_scale,
                    chunk=options.results_chunk,
                    chunks_per_shard=options.results_chunks_per_shard,
                    units=options.results_units,
                    slide_mpp=options.results_slide_mpp,
                    translation=options.results_translation,
                    pad_to_shards=options.results_pad_to_shards,
                    level_rounding=options.results_level_rounding,
                    split_transforms=options.results_split_transforms,
                )
                self._stores[job.id] = fixture
            return fixture
