"""`sectra-bridge analyse` and `sectra-bridge runs export`, run as the installed console script.

Real parts: a generated Aperio SVS carrying fake PHI, the fake Strand server on a
real port (its counters say what was uploaded and submitted), and for `runs
export` a real Redis holding a run record written through the run store API the
pipeline uses. `analyse` gets no Redis (REDIS_URL names a port nothing listens
on) and no Sectra.

Oracles, none of them ours:
- the official GeoJSON FeatureCollection JSON Schema (tests/fixtures, see tests/workers/test_geojson.py
  for its provenance) and RFC 7946 section 3.1.6 ring rules written out here;
- where the hotspots must be: the fake's ground truth (the centres it placed its dense regions at, in
  map pixels) carried to level-0 slide pixels with the geometry this test chose (slide size / map
  size; no translation), and the positive fractions computed with numpy from the ground-truth map;
- the bytes Strand stored, searched for the PHI and the label image's marker bytes.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import pty
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest
import redis

from sectra_adapter import Hotspot, MarkerSummary
from strand_client.testing import FakeStrandServer
from tests.fixtures.slides import MPP, make_svs
from workers.runstore import RunStatus, RunStore
from workers.summary_record import StoredSummary

CLI = Path(sys.executable).with_name("sectra-bridge")
PHI = {"patientName": "DOE^JANE^Q", "accessionNumber": "ACC-2026-000917"}
LABEL_MARKER = b"LABEL-MARKER-5e1d9a77c2"
SLIDE_W, SLIDE_H = 4096, 3072  # 2 x 1.5 mm: room for several 500 µm hotspot windows
MAP_SHAPE = (192, 320)  # (rows, columns): 16 x 12.8 slide pixels per map pixel, anisotropic
WINDOW_UM = 500.0  # the summariser's documented hotspot window
THRESHOLD = 0.5  # the apps' positivity threshold (AppConfig's default)
MARKERS = ("CD8", "PanCK", "Ki67")
APPS_YAML = """
strand-default:
  display_name: "Strand marker panel: CD8, PanCK, Ki67"
  markers: [CD8, PanCK, Ki67]
strand-capped:
  display_name: "Strand CD8, at most 0 credits a slide"
  markers: [CD8]
  credit_ceiling: 0
"""
SCHEMA = json.loads(
    (Path(__file__).parents[1] / "fixtures" / "geojson-FeatureCollection.schema.json").read_text()
)
VALIDATOR = jsonschema.Draft7Validator(SCHEMA)


@pytest.fixture
def fake() -> Iterator[FakeStrandServer]:
    # The fake writes its maps' OME-NGFF pixel sizes from the slide's µm per pixel: the SVS's own.
    with FakeStrandServer(
        job_duration=1.0,
        progress_step=0.25,
        heartbeat_interval=0.2,
        sse_tick=0.02,
        results_shape=MAP_SHAPE,
        results_slide_mpp=MPP,
    ) as server:
        yield server


@pytest.fixture
def slide(tmp_path: Path) -> Path:
    name = f"{PHI['accessionNumber']}_{PHI['patientName'].split('^')[0]}.svs"  # named as scanners do
    return make_svs(
        tmp_path / "in" / name, width=SLIDE_W, height=SLIDE_H, phi=PHI, label_marker=LABEL_MARKER, jpeg=True
    )


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("STRAND_", "BRIDGE_", "SECTRA_"))}
    return {**env, "REDIS_URL": "redis://127.0.0.1:1/0", **extra}


def analyse(fake: FakeStrandServer, tmp_path: Path, *args: str | Path) -> subprocess.CompletedProcess[str]:
    apps = tmp_path / "apps.yaml"
    apps.write_text(APPS_YAML)
    env = cli_env(STRAND_API_KEY=fake.api_key, STRAND_BASE_URL=fake.url, BRIDGE_APPS_FILE=str(apps))
    return subprocess.run(
        [str(CLI), "analyse", *map(str, args)],
        env=env,
        cwd=tmp_path,  # no stray .env file is read
        stdin=subprocess.DEVNULL,  # no terminal: nobody to ask
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


def assert_valid_geojson(collection: dict[str, Any]) -> None:
    VALIDATOR.validate(collection)
    for feature in collection["features"]:  # RFC 7946 section 3.1.6, beyond what a schema can say
        for ring in feature["geometry"]["coordinates"]:
            assert len(ring) >= 4 and ring[0] == ring[-1]
            assert sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in itertools.pairwise(ring)) > 0
        assert feature["properties"]["objectType"] == "annotation"  # what QuPath imports as annotations


def box(feature: dict[str, Any]) -> tuple[float, float, float, float]:
    (ring,) = feature["geometry"]["coordinates"]
    xs, ys = [p[0] for p in ring], [p[1] for p in ring]
    return min(xs), min(ys), max(xs), max(ys)


def counters(fake: FakeStrandServer) -> tuple[int, ...]:
    stats = fake.stats
    return (
        stats.upload_sessions_opened,
        stats.uploads_completed,
        stats.bytes_received,
        stats.submits_accepted,
        len(fake.jobs),
        len(fake.uploads),
    )


def test_analyse_writes_a_summary_and_geojson_at_the_truth_and_a_second_call_reuses_upload_and_job(
    fake: FakeStrandServer, slide: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    first = analyse(fake, tmp_path, slide, "--out", out)

    assert first.returncode == 0, first.stdout + first.stderr
    assert "1 of 1 slides analysed" in first.stdout
    printed = first.stdout + first.stderr
    assert all(value not in printed for value in [*PHI.values(), PHI["patientName"].split("^")[0]])
    summary = json.loads((out / f"{slide.stem}.summary.json").read_text())
    job_id, upload_id = summary["strand"]["job_id"], summary["strand"]["upload_id"]
    assert set(fake.jobs) == {job_id} and set(fake.uploads) == {upload_id}

    # What reached Strand is de-identified: no PHI, no label or macro bytes, a neutral name.
    sent = fake.upload_path(upload_id).read_bytes()
    for needle in [*(v.encode() for v in PHI.values()), LABEL_MARKER, LABEL_MARKER[::-1]]:
        assert needle not in sent
    assert all(value not in fake.uploads[upload_id].filename for value in PHI.values())

    fixture = fake.results_fixture(job_id)
    assert (summary["slide"]["width_px"], summary["slide"]["height_px"]) == (SLIDE_W, SLIDE_H)
    stored = {m["marker"]: m for m in summary["summary"]["markers"]}
    assert set(stored) == set(MARKERS) and summary["summary"]["missing"] == {}
    for marker in MARKERS:  # the figures: numpy over the ground-truth map
        values = fixture.truth[marker]
        tissue = ~np.isnan(values)
        positive = tissue & (np.nan_to_num(values, nan=0.0) >= THRESHOLD)
        assert stored[marker]["positive_fraction"] == pytest.approx(positive.sum() / tissue.sum(), abs=1e-9)

    collection = json.loads((out / f"{slide.stem}.geojson").read_text())
    assert_valid_geojson(collection)
    # Slide pixels per map pixel from this test's own choices, never from the reader's metadata.
    scale_y, scale_x = SLIDE_H / MAP_SHAPE[0], SLIDE_W / MAP_SHAPE[1]
    window = WINDOW_UM / MPP  # in slide pixels
    by_marker: dict[str, list[dict[str, Any]]] = {}
    for feature in collection["features"]:
        by_marker.setdefault(feature["properties"]["marker"], []).append(feature)
    assert set(by_marker) == set(MARKERS)
    for marker, features in by_marker.items():
        assert [f["properties"]["rank"] for f in features] == list(range(1, len(features) + 1))
        for feature in features:  # level-0 slide pixels: on the slide, not in [0, 1]
            left, top, right, bottom = box(feature)
            assert 0 <= left < right <= SLIDE_W and 0 <= top < bottom <= SLIDE_H
            if right < SLIDE_W and bottom < SLIDE_H:  # unclipped: a window of whole quarter-window cells
                assert abs((right - left) - window) <= 2 * scale_x
                assert abs((bottom - top) - window) <= 2 * scale_y
        # The best hotspot holds one of the dense regions the fake placed (centres in map pixels).
        centres = [((c + 0.5) * scale_x, (r + 0.5) * scale_y) for r, c in fixture.hotspots[marker]]
        left, top, right, bottom = box(features[0])
        assert any(left <= x <= right and top <= y <= bottom for x, y in centres), (marker, centres)
        assert features[0]["properties"]["area_mm2"] == pytest.approx(
            (right - left) * (bottom - top) * MPP**2 / 1e6
        )

    before = counters(fake)
    geojson_bytes = (out / f"{slide.stem}.geojson").read_bytes()
    second = analyse(fake, tmp_path, slide, "--out", out)

    assert second.returncode == 0, second.stdout + second.stderr
    assert counters(fake) == before, "a second call must not upload or submit again"
    assert f"job {job_id} followed again" in second.stdout and f"upload {upload_id} reused" in second.stdout
    assert (out / f"{slide.stem}.geojson").read_bytes() == geojson_bytes


def test_an_estimate_above_the_ceiling_is_refused_without_a_terminal_and_accepted_with_yes(
    fake: FakeStrandServer, slide: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    refused = analyse(fake, tmp_path, slide, "--app", "strand-capped", "--out", out)

    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "above app strand-capped's ceiling of 0" in refused.stdout and "--yes" in refused.stdout
    assert fake.stats.submits_accepted == 0 and not fake.jobs
    assert not (out / f"{slide.stem}.geojson").exists()
    uploaded = counters(fake)[:3]

    accepted = analyse(fake, tmp_path, slide, "--app", "strand-capped", "--out", out, "--yes")

    assert accepted.returncode == 0, accepted.stdout + accepted.stderr
    assert fake.stats.submits_accepted == 1 and len(fake.jobs) == 1
    assert counters(fake)[:3] == uploaded, "the refused call's upload is reused"
    collection = json.loads((out / f"{slide.stem}.geojson").read_text())
    assert_valid_geojson(collection)
    assert {f["properties"]["marker"] for f in collection["features"]} == {"CD8"}


def test_on_a_terminal_the_estimate_above_the_ceiling_is_asked_about_and_a_yes_submits(
    fake: FakeStrandServer, slide: Path, tmp_path: Path
) -> None:
    apps = tmp_path / "apps.yaml"
    apps.write_text(APPS_YAML)
    env = cli_env(STRAND_API_KEY=fake.api_key, STRAND_BASE_URL=fake.url, BRIDGE_APPS_FILE=str(apps))
    controller, terminal = pty.openpty()  # a real terminal on stdin: the command must ask
    try:
        os.write(controller, b"y\n")  # typed ahead; the terminal holds it until the question reads it
        result = subprocess.run(
            [str(CLI), "analyse", str(slide), "--app", "strand-capped", "--out", str(tmp_path / "out")],
            env=env,
            cwd=tmp_path,
            stdin=terminal,
            capture_output=True,
            text=True,
            timeout=240,
            check=False,
        )
    finally:
        os.close(terminal)
        os.close(controller)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "above the app's ceiling of 0" in result.stderr and "Submit it?" in result.stderr
    assert fake.stats.submits_accepted == 1


def test_an_interrupted_upload_continues_in_its_session_without_resending_a_byte(
    fake: FakeStrandServer, slide: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    fake.periodic_put_faults(fail_every=2, status=403)  # the second chunk is refused: the call fails
    broken = analyse(fake, tmp_path, slide, "--out", out)

    assert broken.returncode == 1 and "[1] failed: Strand: " in broken.stdout, broken.stdout + broken.stderr
    (upload,) = fake.uploads.values()
    assert upload.status == "uploading" and 0 < fake.stats.bytes_received < slide.stat().st_size
    fake.periodic_put_faults(None, None)

    resumed = analyse(fake, tmp_path, slide, "--out", out)

    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    size = fake.uploads[upload.id].file_size
    assert fake.stats.upload_sessions_opened == 1, "the same session went on"
    # Sent twice: only the refused chunk (the fake counts a body on arrival; the client's chunks are 8 MiB).
    assert fake.stats.bytes_received - size == 8 * 1024 * 1024
    assert fake.uploads[upload.id].status != "uploading" and len(fake.jobs) == 1
    summary = json.loads((out / f"{slide.stem}.summary.json").read_text())
    stored = hashlib.sha256(fake.upload_path(upload.id).read_bytes()).hexdigest()
    assert stored == summary["slide"]["sha256"], "Strand holds exactly the de-identified bytes"


def test_a_file_that_is_no_slide_is_refused_without_reaching_strand(
    fake: FakeStrandServer, tmp_path: Path
) -> None:
    junk = tmp_path / f"{PHI['accessionNumber']}.svs"
    junk.write_bytes(b"not a slide at all" * 100)

    result = analyse(fake, tmp_path, junk, "--out", tmp_path / "out")

    assert result.returncode == 1
    assert "[1] refused:" in result.stdout and PHI["accessionNumber"] not in result.stdout + result.stderr
    assert fake.stats.upload_sessions_opened == 0 and not fake.uploads


# ---------- runs export ----------

SLIDE_40K = (40_000, 30_000)  # a Sectra-sized slide: normalised coordinates would all be below 1


def completed_run(store: RunStore, summary: StoredSummary, *, final: RunStatus = RunStatus.completed) -> str:
    """A run walked through the pipeline's states, its summary stored as the summary stage stores it."""
    record, _ = store.create_or_get(
        app_id="strand-default",
        slide_id=f"slide-{uuid.uuid4().hex[:8]}",
        cancellation_token=str(uuid.uuid4()),
        callback_url="https://sectra.invalid/ia",
        callback_token="callback-token-not-used",
        source="create",
    )
    order = [
        RunStatus.downloading,
        RunStatus.deidentifying,
        RunStatus.uploading,
        RunStatus.submitting,
        RunStatus.waiting,
        RunStatus.summarising,
        RunStatus.publishing,
        RunStatus.completed,
    ]
    for status in order[: order.index(final) + 1]:
        store.transition(record.run_id, status)
        if status is RunStatus.summarising:
            store.update(
                record.run_id,
                slide_width=SLIDE_40K[0],
                slide_height=SLIDE_40K[1],
                microns_per_pixel=0.25,
                job_id="job-1",
                summary=summary.to_record(),
            )
    return record.run_id


def export(redis_url: str, run_id: str, target: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(CLI), "runs", "export", run_id, "--geojson", str(target)],
        env={**cli_env(), "REDIS_URL": redis_url},
        cwd=target.parent,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_runs_export_writes_the_stored_level0_boxes_as_valid_geojson(redis_url: str, tmp_path: Path) -> None:
    boxes = {"CD8": [(30_000, 20_000, 2_000, 2_000, 0.8), (100, 200, 2_000, 1_500, 0.6)], "Ki67": []}
    summary = StoredSummary(
        markers=[
            MarkerSummary(
                marker=name,
                positive_fraction=0.3,
                positive_area_mm2=2.0,
                tissue_area_mm2=7.0,
                mean=0.3,
                p50=0.3,
                p90=0.5,
                p99=0.8,
                hotspots=[Hotspot(*spec) for spec in specs],
            )
            for name, specs in boxes.items()
        ]
    )
    client = redis.Redis.from_url(redis_url)
    store = RunStore(client)  # the default prefix: the one the CLI's run store uses
    done = completed_run(store, summary)
    waiting = completed_run(store, summary, final=RunStatus.waiting)
    try:
        target = tmp_path / "run.geojson"
        result = export(redis_url, done, target)

        assert result.returncode == 0, result.stdout + result.stderr
        assert f"run {done}: 2 features written" in result.stdout
        collection = json.loads(target.read_text())
        assert_valid_geojson(collection)
        assert [box(f) for f in collection["features"]] == [
            (x, y, x + w, y + h) for x, y, w, h, _ in boxes["CD8"]
        ]
        first = collection["features"][0]["properties"]
        assert first["positive_fraction"] == 0.8
        assert first["area_mm2"] == pytest.approx(2_000 * 2_000 * 0.25**2 / 1e6)

        not_done = export(redis_url, waiting, tmp_path / "waiting.geojson")
        assert not_done.returncode == 1 and "only completed runs are exported" in not_done.stderr
        assert not (tmp_path / "waiting.geojson").exists()
        unknown = export(redis_url, f"run-{uuid.uuid4().hex[:24]}", tmp_path / "unknown.geojson")
        assert unknown.returncode == 1 and "no run" in unknown.stderr
    finally:
        store.delete(done)
        store.delete(waiting)
        client.close()
