"""Resumable uploads against the fake's GCS-compatible endpoint, with every fault it can inject."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from strand_client import Client, UploadCheckpoint, UploadError
from strand_client.testing import FakeStrandServer

KiB = 1024
MiB = 1024 * KiB
CHUNK = 256 * KiB

SameBytes = Callable[[Path, Path], bool]


class Crash(Exception):
    """Stands in for a worker process dying mid-upload."""


def test_upload_stores_identical_bytes_and_reads_tiff_dimensions(
    client: Client, fake: FakeStrandServer, tiff_slide: Path, same_bytes: SameBytes
) -> None:
    seen: list[tuple[int, int]] = []
    upload = client.uploads.upload_file(tiff_slide, progress=lambda done, total: seen.append((done, total)))

    assert (upload.width_px, upload.height_px, upload.dimensions_source) == (900, 700, "sharp")
    assert upload.status == "ready" and not upload.existing
    assert same_bytes(tiff_slide, fake.upload_path(upload.id))
    assert seen[-1] == (tiff_slide.stat().st_size, tiff_slide.stat().st_size)
    assert [done for done, _ in seen] == sorted(done for done, _ in seen)
    assert client.uploads.get(upload.id).status == "ready"


def test_non_tiff_gets_stub_dimensions(client: Client, make_file: Callable[..., Path]) -> None:
    upload = client.uploads.upload_file(make_file(300 * KiB, "slide.svs"), chunk_size=CHUNK)
    assert upload.dimensions_source == "stub"
    assert upload.width_px and upload.height_px


def test_each_confirmed_offset_is_checkpointed(
    client: Client, fake: FakeStrandServer, make_file: Callable[..., Path]
) -> None:
    path = make_file(5 * CHUNK + 1000)
    checkpoints: list[UploadCheckpoint] = []
    upload = client.uploads.upload_file(path, chunk_size=CHUNK, on_checkpoint=checkpoints.append)

    assert [c.offset for c in checkpoints] == [0, CHUNK, 2 * CHUNK, 3 * CHUNK, 4 * CHUNK, 5 * CHUNK]
    assert {c.upload_id for c in checkpoints} == {upload.id}
    assert checkpoints[0].total_size == path.stat().st_size
    restored = UploadCheckpoint.from_dict(json.loads(json.dumps(checkpoints[2].to_dict())))
    assert restored == checkpoints[2]
    assert fake.stats.put_requests == 6


def test_503_on_chunks_and_status_queries_is_retried(
    client: Client, fake: FakeStrandServer, make_file: Callable[..., Path], same_bytes: SameBytes
) -> None:
    path = make_file(4 * CHUNK)
    fake.fail_next_puts(3, status=503, retry_after=0)  # the chunk, then the two status queries after it
    upload = client.uploads.upload_file(path, chunk_size=CHUNK)

    assert same_bytes(path, fake.upload_path(upload.id))
    assert fake.stats.upload_sessions_opened == 1
    assert fake.stats.put_requests == 4 + 3 + 1  # chunks + failures + the query that finally answered


@pytest.mark.parametrize("status", [408, 429, 500, 502, 504])
def test_every_transient_status_is_retried(
    client: Client, fake: FakeStrandServer, make_file: Callable[..., Path], status: int, same_bytes: SameBytes
) -> None:
    path = make_file(2 * CHUNK + 5)
    fake.periodic_put_faults(fail_every=2, status=status)
    upload = client.uploads.upload_file(path, chunk_size=CHUNK)
    assert same_bytes(path, fake.upload_path(upload.id))


def test_server_keeping_part_of_a_chunk_is_resumed_from_its_range(
    client: Client, fake: FakeStrandServer, make_file: Callable[..., Path], same_bytes: SameBytes
) -> None:
    path = make_file(16 * CHUNK + 123)
    fake.keep_partial_next_puts(3, fraction=0.5)
    upload = client.uploads.upload_file(path, chunk_size=4 * CHUNK)

    assert same_bytes(path, fake.upload_path(upload.id))
    # Three half-kept 1 MiB chunks had their second halves sent twice.
    assert fake.stats.bytes_received == path.stat().st_size + 3 * 2 * CHUNK


def test_nothing_kept_means_no_range_header_and_a_full_resend(
    client: Client, fake: FakeStrandServer, make_file: Callable[..., Path], same_bytes: SameBytes
) -> None:
    path = make_file(CHUNK + 10)
    fake.keep_partial_next_puts(1, fraction=0.5)  # half of 256 KiB rounds down to nothing
    upload = client.uploads.upload_file(path, chunk_size=CHUNK)
    assert same_bytes(path, fake.upload_path(upload.id))
    assert fake.stats.bytes_received == path.stat().st_size + CHUNK


def test_lost_session_opens_a_new_one(
    client: Client, fake: FakeStrandServer, make_file: Callable[..., Path], same_bytes: SameBytes
) -> None:
    path = make_file(4 * CHUNK)
    checkpoints: list[UploadCheckpoint] = []

    def forget_after_first_chunk(checkpoint: UploadCheckpoint) -> None:
        checkpoints.append(checkpoint)
        if checkpoint.offset == CHUNK and len({c.upload_id for c in checkpoints}) == 1:
            fake.forget_session(checkpoint.upload_url)

    upload = client.uploads.upload_file(path, chunk_size=CHUNK, on_checkpoint=forget_after_first_chunk)

    assert fake.stats.upload_sessions_opened == 2
    assert checkpoints[-1].upload_id == upload.id != checkpoints[0].upload_id
    assert next(c.offset for c in checkpoints if c.upload_id == upload.id) == 0
    assert same_bytes(path, fake.upload_path(upload.id))


def test_resume_after_a_process_restart_sends_only_the_rest(
    fake: FakeStrandServer,
    client_factory: Callable[..., Client],
    make_file: Callable[..., Path],
    same_bytes: SameBytes,
) -> None:
    path = make_file(8 * CHUNK + 77)
    total = path.stat().st_size
    saved: dict[str, object] = {}

    def persist_then_die(checkpoint: UploadCheckpoint) -> None:
        saved.update(checkpoint.to_dict())
        if checkpoint.offset >= 4 * CHUNK:
            raise Crash

    first = client_factory()
    with pytest.raises(Crash):
        first.uploads.upload_file(path, chunk_size=CHUNK, on_checkpoint=persist_then_die)
    first.close()
    sent_before = fake.stats.bytes_received

    resumed = client_factory()
    checkpoint = UploadCheckpoint.from_dict(json.loads(json.dumps(saved)))
    upload = resumed.uploads.upload_file(path, chunk_size=CHUNK, resume=checkpoint)

    sent_after = fake.stats.bytes_received - sent_before
    assert sent_after == total - 4 * CHUNK < total
    assert upload.id == checkpoint.upload_id
    assert fake.stats.upload_sessions_opened == 1
    assert same_bytes(path, fake.upload_path(upload.id))


def test_resume_trusts_the_server_offset_over_a_stale_checkpoint(
    client: Client, fake: FakeStrandServer, make_file: Callable[..., Path], same_bytes: SameBytes
) -> None:
    path = make_file(6 * CHUNK)
    checkpoints: list[UploadCheckpoint] = []

    def die_at_three(checkpoint: UploadCheckpoint) -> None:
        checkpoints.append(checkpoint)
        if checkpoint.offset == 3 * CHUNK:
            raise Crash

    with pytest.raises(Crash):
        client.uploads.upload_file(path, chunk_size=CHUNK, on_checkpoint=die_at_three)
    stale = checkpoints[1]  # says 1 chunk; Strand holds 3
    before = fake.stats.bytes_received
    upload = client.uploads.upload_file(path, chunk_size=CHUNK, resume=stale)

    assert fake.stats.bytes_received - before == 3 * CHUNK
    assert same_bytes(path, fake.upload_path(upload.id))


def test_resume_of_an_expired_session_starts_over(
    client: Client, fake: FakeStrandServer, make_file: Callable[..., Path], same_bytes: SameBytes
) -> None:
    path = make_file(3 * CHUNK)
    checkpoints: list[UploadCheckpoint] = []

    def die(checkpoint: UploadCheckpoint) -> None:
        checkpoints.append(checkpoint)
        if checkpoint.offset == CHUNK:
            raise Crash

    with pytest.raises(Crash):
        client.uploads.upload_file(path, chunk_size=CHUNK, on_checkpoint=die)
    fake.forget_session(checkpoints[-1].upload_url)
    fresh: list[UploadCheckpoint] = []
    upload = client.uploads.upload_file(
        path, chunk_size=CHUNK, resume=checkpoints[-1], on_checkpoint=fresh.append
    )

    assert upload.id != checkpoints[-1].upload_id
    assert fresh[0].offset == 0 and fresh[0].upload_id == upload.id
    assert same_bytes(path, fake.upload_path(upload.id))


def test_checkpoint_of_another_file_is_refused(client: Client, make_file: Callable[..., Path]) -> None:
    path = make_file(CHUNK)
    wrong = UploadCheckpoint("u", "http://127.0.0.1:9/gcs/upload/x", 0, CHUNK + 1)
    with pytest.raises(UploadError) as raised:
        client.uploads.upload_file(path, resume=wrong)
    assert raised.value.error_code == "checkpoint_mismatch"


def test_content_hash_dedup_sends_no_bytes_the_second_time(
    client: Client, fake: FakeStrandServer, tiff_slide: Path, file_sha256: Callable[[Path], str]
) -> None:
    digest = file_sha256(tiff_slide)
    first = client.uploads.upload_file(tiff_slide, content_sha256=digest)
    received = fake.stats.bytes_received
    second = client.uploads.upload_file(tiff_slide, content_sha256=digest, filename="another-name.tif")

    assert second.existing and not first.existing
    assert second.id == first.id
    assert (second.width_px, second.height_px, second.status) == (900, 700, "ready")
    assert fake.stats.bytes_received == received
    assert fake.stats.upload_sessions_opened == 1


def test_declared_hash_that_does_not_match_fails_the_upload(
    client: Client, fake: FakeStrandServer, make_file: Callable[..., Path]
) -> None:
    path = make_file(CHUNK)
    with pytest.raises(UploadError) as raised:
        client.uploads.upload_file(path, content_sha256="0" * 64)
    assert raised.value.error_code == "upload_failed"
    (upload,) = fake.uploads.values()
    assert client.uploads.get(upload.id).status == "upload_failed"


def test_empty_file(client: Client, fake: FakeStrandServer, tmp_path: Path) -> None:
    path = tmp_path / "empty.bin"
    path.touch()
    upload = client.uploads.upload_file(path)
    assert upload.status == "ready"
    assert fake.upload_path(upload.id).stat().st_size == 0


def test_gives_up_after_max_retries(
    client: Client, fake: FakeStrandServer, make_file: Callable[..., Path]
) -> None:
    fake.fail_next_puts(100, status=503)
    with pytest.raises(UploadError) as raised:
        client.uploads.upload_file(make_file(CHUNK), chunk_size=CHUNK)
    assert raised.value.error_code == "upload_stalled"
    assert fake.stats.put_requests == 6  # the first try and five retries


def test_chunk_size_must_be_a_multiple_of_256_kib(client: Client, make_file: Callable[..., Path]) -> None:
    with pytest.raises(ValueError, match="256 KiB"):
        client.uploads.upload_file(make_file(CHUNK), chunk_size=CHUNK + 1)


@pytest.mark.slow
def test_one_gib_sparse_upload(
    client: Client, fake: FakeStrandServer, tmp_path: Path, same_bytes: SameBytes
) -> None:
    """1 GiB through the real protocol with faults on the way; sparse on both ends so CI stays fast."""
    path = tmp_path / "big.svs"
    size = 1024 * MiB + 12_345
    with path.open("wb") as out:
        out.truncate(size)
        for offset in (0, 300 * MiB + 5, 777 * MiB, size - 4096):
            out.seek(offset)
            out.write(bytes(range(256)) * 16)
    fake.periodic_put_faults(fail_every=20, keep_partial_every=20)
    upload = client.uploads.upload_file(path)

    assert upload.status == "ready"
    assert same_bytes(path, fake.upload_path(upload.id))
    assert fake.stats.upload_sessions_opened == 1
