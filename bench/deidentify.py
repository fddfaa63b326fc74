"""Benchmark: de-identifying a 1 GiB Aperio SVS (and a 1 GiB MRXS) must cost headers, not pyramid.

Target (issues 8 and 12): under 1 s and under 64 MiB RSS growth for a 1 GiB SVS
and a 1 GiB 3DHISTECH MRXS. Baseline measured in the same run: copying the
(largest) file once (the least any rewrite-the-file de-identifier must do). The
slides are generated with constant tiles (uncompressed for the SVS, one JPEG's
bytes repeated for the MRXS) so generation stays fast; the edit cost does not
depend on tile content.

    .venv/bin/python bench/deidentify.py [--gib 1.0] [--dir /tmp]
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

sys.path[:0] = [str(Path(__file__).resolve().parents[1])]

TILE = 256
MPP = 0.499
TARGET_SECONDS = 1.0
TARGET_RSS_MIB = 64.0


def make_big_svs(path: Path, gib: float) -> int:
    """Level 0 of about `gib` GiB (RGB, uncompressed), a thumbnail, two levels, a label and a macro."""
    side = int((gib * 2**30 / 3) ** 0.5) // TILE * TILE
    tile = np.full((TILE, TILE, 3), 200, dtype=np.uint8)

    def tiles(count: int) -> Iterator[np.ndarray]:
        for _ in range(count):
            yield tile

    head = "Aperio Image Library v12.0.15\r\n"
    pairs = f"AppMag = 20|Filename = DOE_JANE_ACC123|Date = 03/01/24|User = jdoe|Barcode = ACC123|MPP = {MPP}"
    common: dict[str, Any] = {"photometric": "rgb", "metadata": None}
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        levels = [side, side // 4, side // 16]
        for number, size in enumerate(levels):
            across = -(-size // TILE)
            tw.write(
                tiles(across * across),
                shape=(size, size, 3),
                dtype=np.uint8,
                tile=(TILE, TILE),
                description=f"{head}{size}x{size} ({TILE}x{TILE}) RAW|{pairs}",
                datetime="2024:03:01 10:22:00",
                **common,
            )
            if number == 0:
                tw.write(np.zeros((64, 64, 3), np.uint8), description=f"{head}thumbnail|{pairs}", **common)
        tw.write(
            np.full((400, 800, 3), 7, np.uint8), subfiletype=1, description=f"{head}label 800x400", **common
        )
        tw.write(
            np.full((600, 1600, 3), 9, np.uint8), subfiletype=9, description=f"{head}macro 1600x600", **common
        )
    return side


def _child(paths: list[str], out_dir: str, results: Any) -> None:
    import psutil

    from workers.deidentify import deidentify_slide, verify_deidentified

    process = psutil.Process()
    baseline = process.memory_info().rss
    started = time.perf_counter()
    files, report = deidentify_slide([Path(path) for path in paths], run_id="bench", out_dir=Path(out_dir))
    deid_seconds = time.perf_counter() - started
    started = time.perf_counter()
    verify_deidentified(files, identifiers={"accessionNumber": "ACC123", "user": "jdoe"})
    verify_seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    results.put((deid_seconds, verify_seconds, (peak - baseline) / 2**20, report.removed_images))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=1.0, help="size of level 0 in GiB")
    parser.add_argument("--dir", type=Path, default=None, help="scratch directory (default: a temp dir)")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="deid-bench-", dir=args.dir))
    try:
        slide = scratch / "ACC123 DOE JANE.svs"
        started = time.perf_counter()
        side = make_big_svs(slide, args.gib)
        size = slide.stat().st_size
        print(
            f"generated {size / 2**30:.2f} GiB SVS ({side}x{side}) in {time.perf_counter() - started:.1f} s"
        )

        started = time.perf_counter()
        shutil.copyfile(slide, scratch / "copy.svs")
        copy_seconds = time.perf_counter() - started
        (scratch / "copy.svs").unlink()

        context = multiprocessing.get_context("spawn")
        results = context.Queue()
        child = context.Process(target=_child, args=([str(slide)], str(scratch / "out"), results))
        child.start()
        deid_seconds, verify_seconds, rss_mib, removed = results.get(timeout=600)
        child.join(timeout=60)

        print(f"baseline  copy the file once:       {copy_seconds:8.3f} s")
        ratio = deid_seconds / copy_seconds
        print(f"ours      deidentify_slide:         {deid_seconds:8.3f} s  ({ratio:.4f} x the copy)")
        print(f"ours      verify_deidentified:      {verify_seconds:8.3f} s")
        print(f"ours      RSS growth (peak):        {rss_mib:8.1f} MiB")
        print(f"removed: {removed}")
        ok = deid_seconds < TARGET_SECONDS and rss_mib < TARGET_RSS_MIB
        print(f"target < {TARGET_SECONDS} s and < {TARGET_RSS_MIB:.0f} MiB: {'met' if ok else 'MISSED'}")
        return 0 if _bench_mrxs(scratch, args.gib, context) and ok else 1
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _bench_mrxs(scratch: Path, gib: float, context: Any) -> bool:
    """The same measurement for an MRXS: its .mrxs file, Slidedat.ini, Index.dat and one big Data file."""
    from tests.fixtures.mrxs import make_big_mrxs

    started = time.perf_counter()
    slide = make_big_mrxs(
        scratch / "mrxs" / "ACC123 DOE JANE.mrxs", gib=gib, phi={"accession": "ACC123 DOE JANE"}
    )
    size = sum(path.stat().st_size for path in slide.files)
    print(f"generated {size / 2**30:.2f} GiB MRXS in {time.perf_counter() - started:.1f} s")
    started = time.perf_counter()
    shutil.copyfile(slide.data, scratch / "copy.dat")
    copy_seconds = time.perf_counter() - started
    (scratch / "copy.dat").unlink()
    results = context.Queue()
    paths = [str(path) for path in slide.files]
    child = context.Process(target=_child, args=(paths, str(scratch / "mrxs-out"), results))
    child.start()
    deid_seconds, verify_seconds, rss_mib, removed = results.get(timeout=600)
    child.join(timeout=60)
    print(f"MRXS baseline  copy the Data file once: {copy_seconds:8.3f} s")
    ratio = deid_seconds / copy_seconds
    print(f"MRXS ours      deidentify_slide:        {deid_seconds:8.3f} s  ({ratio:.4f} x the copy)")
    print(f"MRXS ours      verify_deidentified:     {verify_seconds:8.3f} s")
    print(f"MRXS ours      RSS growth (peak):       {rss_mib:8.1f} MiB")
    print(f"MRXS removed: {removed}")
    ok = deid_seconds < TARGET_SECONDS and rss_mib < TARGET_RSS_MIB
    print(f"MRXS target < {TARGET_SECONDS} s and < {TARGET_RSS_MIB:.0f} MiB: {'met' if ok else 'MISSED'}")
    return ok


if __name__ == "__main__":
    sys.exit(main())
