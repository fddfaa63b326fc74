"""Summarising one marker map over real HTTP: our streaming summary vs decode-only vs the official SDK.

Usage:  .venv/bin/python bench/summarise.py [--size 20000] [--latency 0.05] [--workdir /tmp/bench-summarise]
                                            [--no-official] [--timeout 240]

Writes (once, cached under --workdir) a size x size sharded float32 marker map
in the platform's layout, serves it from this process with the same file route
as the platform's proxy, then runs each reader in its own subprocess, measuring
wall time and peak RSS there (VmHWM; `ru_maxrss` is carried over exec from the
forking parent, this server, so it would count the server's memory). First
with no added latency, then with --latency seconds added to every answer (the
fake platform's latency fault, `strand_client.testing.faults.FaultMiddleware`:
a hospital's link to the cloud; 0 skips that round):

- fetch: every shard object fetched whole by our reader's threads, not
  decoded: what this link carries, for the bound below;
- decode-only: our reader fetching and decoding every block, no statistics;
- ours: `workers.summarise.summarise_marker` on the same blocks;
- official: strand-sdk 0.17's `JobResults.to_array` (whole map into memory),
  run in a Python 3.12 venv under --workdir; skipped with a message when no
  3.12 interpreter is found. If it cannot hold --size, smaller maps are tried.

Every child is stopped after --timeout seconds. The server counts the answers
and body bytes of each run. Prints ours against the official SDK (target >=
1.2x) and against decode-only (target >= 0.6x), peak RSS (target: ours < 256
MiB and <= 1/10 of the official whole-array read), and, with latency, ours
against the link's bound: bytes / bandwidth (from the fetch run without added
latency) + round trips x latency, where the round trips are the answers over
the requests our reader keeps in flight.
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

API_KEY = "sk-strand-bench"
MARKER = "CD8"
JOB_ID = "bench-job"
THRESHOLD = 0.5
MPP = 0.25
OFFICIAL_FALLBACK_SIZES = (16000, 12000, 8000)


def peak_rss() -> int:
    """This process's own peak RSS in bytes (Linux: VmHWM, the high-water mark since its exec).

    `ru_maxrss` will not do: Linux carries it over exec from the parent that
    forked the child, so every child would report at least this server's peak.
    """
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024


_OFFICIAL_CHILD = (
    inspect.getsource(peak_rss)
    + """
import json, sys, time
from strand import Client
from strand._results import JobResults
url, key, job, marker = sys.argv[1:5]
client = Client(api_key=key, base_url=url)
results = JobResults(job_id=job, result_url="", result_base_path="", expires_at="", client=client)
start = time.perf_counter()
array, _meta = results.to_array(name=marker)
wall = time.perf_counter() - start
print(json.dumps({"wall": wall, "rss": peak_rss(), "shape": list(array.shape)}))
"""
)


class Counting:
    """ASGI wrapper counting answers and body bytes sent (read between runs: one run at a time)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._lock = threading.Lock()
        self.answers = 0
        self.body_bytes = 0

    def take(self) -> tuple[int, int]:
        with self._lock:
            counts = (self.answers, self.body_bytes)
            self.answers = self.body_bytes = 0
            return counts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def counting_send(message: Message) -> None:
            with self._lock:
                if message["type"] == "http.response.start":
                    self.answers += 1
                elif message["type"] == "http.response.body":
                    self.body_bytes += len(message.get("body", b""))
            await send(message)

        await self.app(scope, receive, counting_send)


def child(mode: str, url: str, size: int) -> None:
    """Runs in a fresh interpreter so its peak RSS is its own (it imports only what a worker would)."""
    from concurrent.futures import ThreadPoolExecutor

    from strand_client import JobResults
    from strand_client._shards import store_fetcher
    from workers.summarise import summarise_marker

    with JobResults(api_root=f"{url}/api/v1", api_key=API_KEY, job_id=JOB_ID) as results:
        marker_map = results.open_marker(MARKER)
        layout = marker_map.shards
        start = time.perf_counter()
        if mode == "fetch":
            assert layout is not None, "the bench map is not in the platform's sharded layout"
            fetch = store_fetcher(marker_map.array)
            rows, cols = layout.grid
            keys = [layout.shard_key(row, col) for row in range(rows) for col in range(cols)]
            with ThreadPoolExecutor(marker_map.in_flight(banded=True)) as pool:
                fetched = sum(len(data) for data in pool.map(fetch, keys) if data is not None)
            detail: dict[str, Any] = {"bytes": fetched}
        elif mode == "decode":
            pixels = sum(block.values.size for block in marker_map.blocks())
            detail = {"pixels": pixels}
        else:
            summary = summarise_marker(
                marker_map, threshold=THRESHOLD, slide_width=size, slide_height=size, microns_per_pixel=MPP
            )
            detail = {
                "positive_fraction": summary.positive_fraction,
                "p50": summary.p50,
                "hotspots": len(summary.hotspots),
            }
        wall = time.perf_counter() - start
        detail["in_flight"] = marker_map.in_flight(banded=mode != "decode")
    print(json.dumps({"wall": wall, "rss": peak_rss(), **detail}))


def ensure_map(workdir: Path, size: int) -> Path:
    from strand_client.testing.zarr_results import write_results

    target = workdir / f"map-{size}"
    done = target / ".complete"
    if not done.exists():
        shutil.rmtree(target, ignore_errors=True)
        start = time.perf_counter()
        print(f"writing a {size}x{size} float32 sharded map to {target} ...", flush=True)
        write_results(target, [MARKER], size, size, microns_per_pixel=MPP, slide_mpp=MPP)
        done.touch()
        print(f"  written in {time.perf_counter() - start:.0f} s", flush=True)
    return target


def run_child(argv: list[str], timeout: float) -> dict[str, Any] | None:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=timeout)
    except subprocess.TimeoutExpired:
        print(f"  child stopped after {timeout:.0f} s")
        return None
    if proc.returncode != 0:
        print(f"  child failed ({proc.returncode}): {proc.stderr.strip()[-600:]}")
        return None
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def official_python(workdir: Path) -> Path | None:
    """A Python 3.12 venv with strand-sdk 0.17 (built once), or None with the reason printed."""
    venv = workdir / "sdk-venv"
    python = venv / "bin" / "python"
    if python.exists():
        return python
    base = None
    try:
        prefix = subprocess.run(["pyenv", "prefix", "3.12.1"], capture_output=True, text=True, check=True)
        base = Path(prefix.stdout.strip()) / "bin" / "python3"
    except (OSError, subprocess.CalledProcessError):
        found = shutil.which("python3.12")
        base = Path(found) if found else None
    if base is None or not base.exists():
        print("official SDK column skipped: no Python 3.12 interpreter (strand-sdk 0.17 needs >= 3.12)")
        return None
    subprocess.run([str(base), "-m", "venv", str(venv)], check=True)
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "strand-sdk==0.17.0", "zstandard", "numpy"],
        capture_output=True,
        text=True,
        check=False,
    )
    if install.returncode != 0:
        print(f"official SDK column skipped: pip install failed: {install.stderr.strip()[-400:]}")
        shutil.rmtree(venv, ignore_errors=True)
        return None
    return python


def mib(n: float) -> str:
    return f"{n / 2**20:.0f} MiB"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=20000)
    parser.add_argument(
        "--workdir", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "bench-summarise"
    )
    parser.add_argument("--latency", type=float, default=0.05, help="seconds added to every answer (0: none)")
    parser.add_argument("--timeout", type=float, default=240.0, help="seconds before a child is stopped")
    parser.add_argument("--no-official", action="store_true")
    parser.add_argument("--child", choices=["fetch", "decode", "ours"], help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.url, args.size)
        return

    args.workdir.mkdir(parents=True, exist_ok=True)
    data = ensure_map(args.workdir, args.size)
    python = None if args.no_official else official_python(args.workdir)
    me = [sys.executable, str(Path(__file__).resolve())]
    rounds: dict[float, dict[str, dict[str, Any] | None]] = {}
    official_size: int | None = None
    for latency in [0.0, *([args.latency] if args.latency > 0 else [])]:
        rows = rounds[latency] = {}
        with served(data, latency) as (url, counting):
            for mode in ("fetch", "decode", "ours"):
                print(f"[latency {latency * 1000:.0f} ms] running {mode} ...", flush=True)
                counting.take()
                row = run_child([*me, "--child", mode, "--url", url, "--size", str(args.size)], args.timeout)
                rows[mode] = counted(row, counting)
        if python is None:
            continue
        sizes = (
            [official_size]
            if official_size
            else [args.size, *(s for s in OFFICIAL_FALLBACK_SIZES if s < args.size)]
        )
        for size in sizes:
            with served(ensure_map(args.workdir, size), latency) as (sdk_url, counting):
                print(
                    f"[latency {latency * 1000:.0f} ms] running official to_array on {size}x{size} ...",
                    flush=True,
                )
                counting.take()
                row = run_child(
                    [str(python), "-c", _OFFICIAL_CHILD, sdk_url, API_KEY, JOB_ID, MARKER], args.timeout
                )
                rows["official"] = counted(row, counting)
            if rows["official"] is not None:
                official_size = size
                break
    report(args.size, official_size, rounds)


@contextmanager
def served(data: Path, latency: float) -> Iterator[tuple[str, Counting]]:
    """The map served as the platform's proxy does, `latency` seconds late, its answers counted."""
    from strand_client.testing.faults import FaultMiddleware, Faults
    from strand_client.testing.zarr_results import results_files_app, serve_app

    faults = Faults()
    faults.latency = latency
    counting = Counting(FaultMiddleware(results_files_app(data, api_key=API_KEY), faults))
    with serve_app(counting) as url:  # type: ignore[arg-type]
        yield url, counting


def counted(row: dict[str, Any] | None, counting: Counting) -> dict[str, Any] | None:
    """The child's figures with the server's count of its answers and body bytes."""
    answers, body_bytes = counting.take()
    return None if row is None else {**row, "answers": answers, "served": body_bytes}


def report(
    size: int, official_size: int | None, rounds: dict[float, dict[str, dict[str, Any] | None]]
) -> None:
    print(f"\nmap {size}x{size} float32, sharded 2048/256, zstd; served over HTTP from 127.0.0.1")
    base = rounds.get(0.0, {})
    for latency, rows in rounds.items():
        print(f"\nadded latency {latency * 1000:.0f} ms per answer")
        print(f"{'reader':<12}{'wall s':>9}{'Mpx/s':>9}{'peak RSS':>11}{'answers':>9}{'served':>11}")
        for mode, row in rows.items():
            if row is None:
                print(f"{mode:<12}{'failed':>9}")
                continue
            side = official_size if mode == "official" else size
            assert side is not None
            print(
                f"{mode:<12}{row['wall']:>9.2f}{side * side / row['wall'] / 1e6:>9.1f}{mib(row['rss']):>11}"
                f"{row['answers']:>9}{mib(row['served']):>11}"
            )
        decode, ours, official = rows.get("decode"), rows.get("ours"), rows.get("official")
        if decode and ours:
            print(f"throughput ours / decode-only: {decode['wall'] / ours['wall']:.2f} (target >= 0.6)")
            print(f"peak RSS ours: {mib(ours['rss'])} (target < 256 MiB)")
        if ours and official and official_size:
            scale = (
                size / official_size
            ) ** 2  # the official read a smaller map when it could not hold this one
            note = "" if official_size == size else f" (official read a {official_size}^2 map, scaled)"
            print(
                f"speed ours / official: {official['wall'] * scale / ours['wall']:.2f}x (target >= 1.2){note}"
            )
            print(f"peak RSS ours / official: {ours['rss'] / official['rss']:.3f} (target <= 0.1){note}")
        fetch0 = base.get("fetch")
        if latency > 0 and ours and fetch0:
            bandwidth = fetch0["served"] / fetch0["wall"]
            trips = math.ceil(ours["answers"] / ours["in_flight"])
            bound = ours["served"] / bandwidth + trips * latency
            print(
                f"bound for ours: {mib(ours['served'])} / {bandwidth / 2**20:.0f} MiB/s + {trips} round "
                f"trips ({ours['answers']} answers / {ours['in_flight']} in flight)"
                f" x {latency * 1000:.0f} ms = {bound:.2f} s; "
                f"ours {ours['wall']:.2f} s = {ours['wall'] / bound:.2f}x the bound"
            )
            base_ours = base.get("ours")
            if base_ours:
                print(
                    f"ours with latency - ours without: {ours['wall'] - base_ours['wall']:+.2f} s "
                    f"(the round trips alone: {trips * latency:.2f} s)"
                )


if __name__ == "__main__":
    main()
