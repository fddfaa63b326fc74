"""Summarising one marker map over real HTTP: our streaming summary vs a decode-only pass vs the official SDK.

Usage:  .venv/bin/python bench/summarise.py [--size 20000] [--workdir /tmp/bench-summarise] [--no-official]

Writes (once, cached under --workdir) a size x size sharded float32 marker map
in the platform's layout, serves it from this process with the same file route
as the platform's proxy, then runs each reader in its own subprocess, measuring
wall time and peak RSS (ru_maxrss) there:

- decode-only: our reader fetching and decoding every block, no statistics;
- ours: `workers.summarise.summarise_marker` on the same blocks;
- official: strand-sdk 0.17's `JobResults.to_array` (whole map into memory),
  run in a Python 3.12 venv under --workdir; skipped with a message when no
  3.12 interpreter is found. If it cannot hold --size, smaller maps are tried.

Prints the throughput ratio ours / decode-only (target >= 0.4) and peak RSS
(target: ours < 256 MiB and <= 1/10 of the official whole-array read).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

API_KEY = "sk-strand-bench"
MARKER = "CD8"
JOB_ID = "bench-job"
THRESHOLD = 0.5
MPP = 0.25
OFFICIAL_FALLBACK_SIZES = (16000, 12000, 8000)

_OFFICIAL_CHILD = """
import json, resource, sys, time
from strand import Client
from strand._results import JobResults
url, key, job, marker = sys.argv[1:5]
client = Client(api_key=key, base_url=url)
results = JobResults(job_id=job, result_url="", result_base_path="", expires_at="", client=client)
start = time.perf_counter()
array, _meta = results.to_array(name=marker)
wall = time.perf_counter() - start
print(json.dumps({"wall": wall, "rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                  "shape": list(array.shape)}))
"""


def child(mode: str, url: str, size: int) -> None:
    """Runs in a fresh interpreter so its peak RSS is its own (it imports only what a worker would)."""
    import resource

    from strand_client.results import JobResults
    from workers.summarise import summarise_marker

    with JobResults(api_root=f"{url}/api/v1", api_key=API_KEY, job_id=JOB_ID) as results:
        marker_map = results.open_marker(MARKER)
        start = time.perf_counter()
        if mode == "decode":
            pixels = sum(block.values.size for block in marker_map.blocks())
            detail: dict[str, Any] = {"pixels": pixels}
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
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"wall": wall, "rss": rss, **detail}))


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


def run_child(argv: list[str]) -> dict[str, Any] | None:
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
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
    parser.add_argument("--no-official", action="store_true")
    parser.add_argument("--child", choices=["decode", "ours"], help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.url, args.size)
        return

    from strand_client.testing.zarr_results import results_files_app, serve_app

    args.workdir.mkdir(parents=True, exist_ok=True)
    data = ensure_map(args.workdir, args.size)
    me = [sys.executable, str(Path(__file__).resolve())]
    rows: dict[str, dict[str, Any] | None] = {}
    with serve_app(results_files_app(data, api_key=API_KEY)) as url:
        for mode in ("decode", "ours"):
            print(f"running {mode} ...", flush=True)
            rows[mode] = run_child([*me, "--child", mode, "--url", url, "--size", str(args.size)])
        official_size = None
        python = None if args.no_official else official_python(args.workdir)
        if python is not None:
            for size in (args.size, *(s for s in OFFICIAL_FALLBACK_SIZES if s < args.size)):
                with serve_app(results_files_app(ensure_map(args.workdir, size), api_key=API_KEY)) as sdk_url:
                    print(f"running official to_array on {size}x{size} ...", flush=True)
                    rows["official"] = run_child(
                        [str(python), "-c", _OFFICIAL_CHILD, sdk_url, API_KEY, JOB_ID, MARKER]
                    )
                if rows["official"] is not None:
                    official_size = size
                    break

    print(f"\nmap {args.size}x{args.size} float32, sharded 2048/256, zstd; served over HTTP from 127.0.0.1")
    print(f"{'reader':<14}{'wall s':>9}{'Mpx/s':>9}{'peak RSS':>12}")
    for mode, row in rows.items():
        if row is None:
            print(f"{mode:<14}{'failed':>9}")
            continue
        side = official_size if mode == "official" else args.size
        assert side is not None
        print(f"{mode:<14}{row['wall']:>9.2f}{side * side / row['wall'] / 1e6:>9.1f}{mib(row['rss']):>12}")
    decode, ours, official = rows.get("decode"), rows.get("ours"), rows.get("official")
    if decode and ours:
        ratio = decode["wall"] / ours["wall"]
        print(f"\nthroughput ours / decode-only: {ratio:.2f} (target >= 0.4)")
        print(f"peak RSS ours: {mib(ours['rss'])} (target < 256 MiB)")
    if ours and official and official_size:
        note = (
            ""
            if official_size == args.size
            else f" (official read a {official_size}^2 map; ours {args.size}^2)"
        )
        print(f"peak RSS ours / official: {ours['rss'] / official['rss']:.3f} (target <= 0.1){note}")


if __name__ == "__main__":
    main()
