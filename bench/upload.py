"""Upload throughput and client memory: `strand_client` vs a plain httpx PUT loop vs the official SDK.

All three send the same file to the same fake Strand server in the same run; each
upload runs in its own subprocess so peak-RSS growth is the client's alone. Then a
faulty run (the fake fails 1 PUT in 20 with 503 and keeps only half of 1 chunk in
20): ours must finish byte-identical; the official SDK's ending is reported.

    .venv/bin/python bench/upload.py                 # 1 GiB, all columns
    .venv/bin/python bench/upload.py --size-mib 256 --no-official

Targets: ours >= 0.8 x plain PUT and >= 1.0 x official; peak RSS growth < 64 MiB. Each repeat
uploads once per client, in a rotating order; the ratios are the median of each repeat's own
ratios (runs made seconds apart, so a change in the machine's load between repeats cancels out).
The official SDK (strand-sdk 0.17) needs Python 3.12: its venv is made under the
bench's temp dir with `$(pyenv prefix 3.12.1)/bin/python3` (column skipped, with
a message, when that interpreter or the package cannot be had).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MiB = 1024 * 1024


def start_measuring() -> tuple[int, float, float]:
    """Reset the kernel's peak-RSS mark, so the peak read later covers the upload alone.

    Stdlib only: the official SDK's worker (another interpreter) imports this module too.
    """
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
    except OSError:
        pass  # then VmHWM includes start-up: growth is over- rather than under-stated
    return _proc_status("VmRSS"), time.perf_counter(), _cpu_seconds()


def report(started: tuple[int, float, float], **extra: Any) -> None:
    """One JSON line: wall seconds, the client's own CPU seconds (robust to a busy machine), RSS growth."""
    baseline, t0, cpu0 = started
    seconds, cpu = time.perf_counter() - t0, _cpu_seconds() - cpu0
    growth = _proc_status("VmHWM") - baseline
    print(json.dumps({"seconds": seconds, "cpu": cpu, "rss_growth": growth, **extra}), flush=True)


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _proc_status(field: str) -> int:
    with open("/proc/self/status") as status:
        match = re.search(field + r":\s+(\d+) kB", status.read())
    assert match is not None
    return int(match.group(1)) * 1024


_OFFICIAL_WORKER = """
import sys
sys.path.insert(0, {bench_dir!r})
import strand
import upload as bench
url, key, path = sys.argv[1:4]
client = strand.Client(api_key=key, base_url=url)
started = bench.start_measuring()
try:
    upload = client.uploads.upload_file(path)
    bench.report(started, upload_id=upload.id, outcome="completed")
except Exception as exc:
    bench.report(started, upload_id=None, outcome=f"{{type(exc).__name__}}: {{str(exc)[:110]}}")
"""


def _ours(url: str, key: str, path: str, chunk: int) -> None:
    from strand_client import Client, StrandError

    with Client(api_key=key, base_url=url) as client:
        started = start_measuring()
        try:
            upload = client.uploads.upload_file(path, chunk_size=chunk)
            report(started, upload_id=upload.id, outcome="completed")
        except StrandError as exc:
            report(started, upload_id=None, outcome=f"{type(exc).__name__}: {exc}")


def _plain(url: str, key: str, path: str, chunk: int) -> None:
    """The naive loop: read a chunk into a new `bytes`, PUT it, repeat (no Range handling)."""
    import httpx

    size = os.path.getsize(path)
    with httpx.Client(timeout=60) as http, open(path, "rb") as source:
        started = start_measuring()  # like `upload_file`, the timing includes opening the session
        answer = http.post(
            f"{url}/api/v1/uploads",
            json={"filename": "bench.svs", "fileSize": size, "contentType": "application/octet-stream"},
            headers={"Authorization": f"Bearer {key}"},
        )
        session = answer.json()
        position = 0
        while position < size:
            data = source.read(chunk)
            headers = {"Content-Range": f"bytes {position}-{position + len(data) - 1}/{size}"}
            http.put(session["uploadUrl"], content=data, headers=headers)
            position += len(data)
        report(started, upload_id=session["uploadId"], outcome="completed")


@dataclass
class Run:
    column: str
    faulty: bool
    mib_s: float | None
    cpu_s: float | None
    rss_mib: float | None
    outcome: str
    identical: bool | None = None
    repeat: int | None = None  # the clean repeat it belongs to; None for the faulty runs


class Bench:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        from strand_client.testing import FakeStrandServer

        self.args = args
        self.workdir = workdir
        self.chunk = args.chunk_mib * MiB
        self.source = workdir / "slide.svs"
        self.fake = FakeStrandServer(storage_dir=workdir / "fake").start()
        self.official_python: Path | None = None

    def close(self) -> None:
        self.fake.close()

    def make_file(self) -> str:
        """Pseudo-random bytes (or a sparse file): nothing in the path can shortcut real data."""
        size = self.args.size_mib * MiB
        digest = hashlib.sha256()
        with self.source.open("wb") as out:
            if self.args.sparse:
                out.truncate(size)
                return _sha256(self.source)
            block = bytearray(os.urandom(4 * MiB))
            for index in range(0, size, len(block)):
                block[:8] = index.to_bytes(8, "little")
                piece = block[: min(len(block), size - index)]
                out.write(piece)
                digest.update(piece)
        return digest.hexdigest()

    def prepare_official(self) -> str | None:
        """A Python 3.12 venv with strand-sdk 0.17; returns why not, when it cannot be had."""
        venv = Path(self.args.official_venv) if self.args.official_venv else self.workdir / "venv-official"
        python = venv / "bin" / "python"
        if not python.exists():
            try:
                prefix = subprocess.run(
                    ["pyenv", "prefix", "3.12.1"], capture_output=True, text=True, check=True
                ).stdout.strip()
            except (OSError, subprocess.CalledProcessError):
                return "no Python 3.12 interpreter (pyenv prefix 3.12.1 failed)"
            created = subprocess.run([f"{prefix}/bin/python3", "-m", "venv", str(venv)], capture_output=True)
            installed = created.returncode == 0 and (
                subprocess.run(
                    [str(python), "-m", "pip", "install", "-q", "strand-sdk==0.17.0"], capture_output=True
                ).returncode
                == 0
            )
            if not installed:
                return "could not install strand-sdk==0.17.0 into a 3.12 venv"
        self.official_python = python
        return None

    def run(self, column: str, faulty: bool, source_sha: str, repeat: int | None = None) -> Run:
        every = 20 if faulty else None
        self.fake.periodic_put_faults(fail_every=every, keep_partial_every=every)
        url, key, path = self.fake.url, self.fake.api_key, str(self.source)
        if column == "official":
            assert self.official_python is not None
            script = self.workdir / "official_worker.py"
            script.write_text(_OFFICIAL_WORKER.format(bench_dir=str(Path(__file__).resolve().parent)))
            command = [str(self.official_python), str(script), url, key, path]
        else:
            command = [sys.executable, __file__, "--worker", column, url, key, path, str(self.chunk)]
        done = subprocess.run(command, capture_output=True, text=True, timeout=1800)
        lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
        if not lines:
            crashed = f"worker crashed: {done.stderr.strip()[-200:]}"
            return Run(column, faulty, None, None, None, crashed, repeat=repeat)
        result = json.loads(lines[-1])
        upload_id = result.get("upload_id")
        completed = result["outcome"] == "completed"
        identical = None
        if upload_id is not None:
            stored = self.fake.upload_path(upload_id)
            identical = completed and _sha256(stored) == source_sha
            stored.unlink()
        size = self.args.size_mib * MiB
        mib_s = size / MiB / result["seconds"] if completed else None
        rss = result["rss_growth"] / MiB
        return Run(column, faulty, mib_s, result["cpu"], rss, result["outcome"], identical, repeat)


def _memory_dir(size_mib: int) -> str | None:
    """tmpfs when it has room for the file and one stored copy: disk write-back would blur the figures."""
    shm = Path("/dev/shm")
    if shm.is_dir() and shutil.disk_usage(shm).free > 3 * size_mib * MiB:
        return str(shm)
    return None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as source:
        while block := source.read(8 * MiB):
            digest.update(block)
    return digest.hexdigest()


def _runs_of(runs: list[Run], column: str, faulty: bool = False) -> list[Run]:
    return [r for r in runs if r.column == column and r.faulty == faulty]


def _median_of(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _paired_ratio(runs: list[Run], column: str, baseline: str) -> float | None:
    """The median over the clean repeats of `column`'s MiB/s over `baseline`'s in the same repeat."""
    speeds: dict[tuple[str, int | None], float | None] = {(r.column, r.repeat): r.mib_s for r in runs}
    ratios = []
    for run in _runs_of(runs, column):
        base = speeds.get((baseline, run.repeat))
        if run.mib_s and base:
            ratios.append(run.mib_s / base)
    return _median_of(ratios)


def _table(runs: list[Run], size_mib: int) -> None:
    repeats = len(_runs_of(runs, "plain"))
    print(f"\nUpload of {size_mib} MiB to the fake Strand server (clean: the median of {repeats} repeats;")
    print("vs plain: the median of the repeats' own ratios; CPU s = the client process's own CPU time,")
    print("which a busy machine disturbs less than MiB/s; RSS: the largest growth)")
    columns = f"{'client':<9} {'faults':<6} {'MiB/s':>6} {'vs plain':>8} {'CPU s':>6} {'RSS +MiB':>9}"
    print(f"{columns} {'same':>5}  outcome")
    for column in ("plain", "ours", "official"):
        for faulty in (False, True):
            mine = _runs_of(runs, column, faulty)
            if not mine:
                continue
            speed = _median_of([r.mib_s for r in mine if r.mib_s is not None])
            ratio = None if faulty else _paired_ratio(runs, column, "plain")
            cpu = _median_of([r.cpu_s for r in mine if r.cpu_s is not None])
            rss = max((r.rss_mib for r in mine if r.rss_mib is not None), default=None)
            identical = {r.identical for r in mine}
            same = "NO" if False in identical else "yes" if True in identical else "-"
            outcomes = sorted({r.outcome for r in mine})
            print(
                f"{column:<9} {'1/20' if faulty else 'none':<6} {_fmt(speed, '.0f'):>6} "
                f"{_fmt(ratio, '.2f'):>8} {_fmt(cpu, '.2f'):>6} {_fmt(rss, '.1f'):>9} {same:>5}  "
                + "; ".join(outcomes)
            )


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _verdict(runs: list[Run]) -> bool:
    checks: list[tuple[str, bool]] = []
    if (versus_plain := _paired_ratio(runs, "ours", "plain")) is not None:
        checks.append((f"ours / plain = {versus_plain:.2f} >= 0.8", versus_plain >= 0.8))
    if (versus_official := _paired_ratio(runs, "ours", "official")) is not None:
        checks.append((f"ours / official = {versus_official:.2f} >= 1.0", versus_official >= 1.0))
    growth = [r.rss_mib for r in _runs_of(runs, "ours") if r.rss_mib is not None]
    if growth:
        checks.append((f"ours peak RSS growth {max(growth):.1f} MiB < 64", max(growth) < 64))
    if faulty := _runs_of(runs, "ours", True):
        checks.append(("ours byte-identical under faults", all(r.identical for r in faulty)))
    print()
    for text, ok in checks:
        print(f"{'PASS' if ok else 'FAIL'}  {text}")
    return all(ok for _, ok in checks)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--chunk-mib", type=int, default=8)
    parser.add_argument(
        "--repeat", type=int, default=5, help="clean runs per column; the median of the paired ratios counts"
    )
    parser.add_argument("--sparse", action="store_true", help="a sparse file instead of generated bytes")
    parser.add_argument("--no-official", action="store_true", help="skip the official SDK column")
    parser.add_argument("--official-venv", help="reuse (or create) the official SDK's venv here")
    parser.add_argument(
        "--workdir", help="where the file and the fake's store go (default: tmpfs if it fits)"
    )
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="bench-upload-", dir=args.workdir or _memory_dir(args.size_mib)))
    bench = Bench(args, workdir)
    try:
        source_sha = bench.make_file()
        columns = ["plain", "ours"]
        if args.no_official:
            print("official SDK column skipped (--no-official)")
        elif (why := bench.prepare_official()) is not None:
            print(f"official SDK column skipped: {why}")
        else:
            columns.append("official")
        runs: list[Run] = []
        for repeat in range(args.repeat):
            # Rotate the order so that drifting machine load does not favour one column.
            order = columns[repeat % len(columns) :] + columns[: repeat % len(columns)]
            runs.extend(bench.run(column, False, source_sha, repeat) for column in order)
        runs.extend(bench.run(column, True, source_sha) for column in columns if column != "plain")
        _table(runs, args.size_mib)
        return 0 if _verdict(runs) else 1
    finally:
        bench.close()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        _, _, kind, url, key, path, chunk = sys.argv
        (_ours if kind == "ours" else _plain)(url, key, path, int(chunk))
    else:
        sys.exit(main())
