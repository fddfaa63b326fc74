"""Fixtures for the Strand client suites: a real fake Strand server on a free port, a client with
short backoffs (the retry logic is the real one; only its waits are shortened), and test files.

Helpers are fixtures because test directories are not packages here (a `strand_client` test
package would shadow the real one)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile

from strand_client import Client
from strand_client._retry import RetryPolicy
from strand_client.testing import FakeStrandServer

FAST_RETRIES = RetryPolicy(max_retries=5, base_delay=0.01, max_delay=0.05)
KiB = 1024
MiB = 1024 * KiB


@pytest.fixture
def fake() -> Iterator[FakeStrandServer]:
    with FakeStrandServer(
        job_duration=0.4, progress_step=0.25, heartbeat_interval=0.1, sse_tick=0.02
    ) as server:
        yield server


@pytest.fixture
def client(fake: FakeStrandServer) -> Iterator[Client]:
    with Client(api_key=fake.api_key, base_url=fake.url, timeout=10.0, retry_policy=FAST_RETRIES) as strand:
        yield strand


@pytest.fixture
def client_factory(fake: FakeStrandServer) -> Iterator[Callable[..., Client]]:
    """New clients on the same fake, e.g. to play a process restart; all closed at teardown."""
    made: list[Client] = []

    def make(timeout: float = 10.0, **kwargs: Any) -> Client:
        strand = Client(fake.api_key, fake.url, timeout, retry_policy=FAST_RETRIES, **kwargs)
        made.append(strand)
        return strand

    yield make
    for strand in made:
        strand.close()


def random_file(path: Path, size: int, seed: int = 0) -> Path:
    """A file of incompressible bytes: a corrupted or shifted chunk cannot go unnoticed."""
    rng = np.random.default_rng(seed)
    with path.open("wb") as out:
        remaining = size
        while remaining:
            n = min(remaining, 4 * MiB)
            out.write(rng.integers(0, 256, n, dtype=np.uint8).tobytes())
            remaining -= n
    return path


@pytest.fixture
def make_file(tmp_path: Path) -> Callable[..., Path]:
    def make(size: int, name: str = "slide.bin", seed: int = 0) -> Path:
        return random_file(tmp_path / name, size, seed)

    return make


@pytest.fixture
def tiff_slide(tmp_path: Path) -> Path:
    """A real (small) TIFF, so the fake reads true dimensions as the platform's probe would."""
    path = tmp_path / "slide.tif"
    rng = np.random.default_rng(7)
    tifffile.imwrite(path, rng.integers(0, 255, (700, 900, 3), dtype=np.uint8))
    return path


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as source:
        while block := source.read(4 * MiB):
            digest.update(block)
    return digest.hexdigest()


@pytest.fixture
def same_bytes() -> Callable[[Path, Path], bool]:
    def compare(a: Path, b: Path) -> bool:
        if a.stat().st_size != b.stat().st_size:
            return False
        with a.open("rb") as left, b.open("rb") as right:
            while block := left.read(8 * MiB):
                if block != right.read(len(block)):
                    return False
        return True

    return compare


@pytest.fixture
def file_sha256() -> Callable[[Path], str]:
    return sha256_of
