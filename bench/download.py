"""Slide download: our streaming `SectraAdapter.download_slide_files` against `curl` on the same URL.

A generated file (1 GiB by default) is served by `sectra_client`'s own
`MockSectraServer` (multipart/form-data, its progress prints silenced). Each
round downloads it once with `curl -o` and once with ours, alternating, each in
its own process so neither shares the server's interpreter, each into a fresh
directory; a first, uncounted round warms the page cache and the server. Both
are timed the same way: the transfer alone, from request to the file on disk
(curl's own `%{time_total}`, ours around `download_slide_files`), without
process start-up. Peak RSS is the child's VmHWM (polled for curl), and for ours
also the growth over the RSS it had just before the download; CPU is the
downloading process's user + system seconds (its rusage, all threads). Figures
are medians over the rounds; throughput is the median of the per-round ratios
against curl (each round pairs runs made seconds apart, curl first in odd rounds
and last in even ones), so it holds on a busy machine too. The CPU of a
SHA-256 over the same bytes is printed alongside: ours hashes every byte (the
staged file's identity) and curl does not, so that, with the mock server on the
same cores, is the gap a CPU-bound machine shows (without the digest, ours is
faster than curl: `--digest-rows`). A second baseline
does the same work as ours: `curl -o`, then OpenSSL's SHA-256 of the file it
wrote (`openssl dgst -sha256`), timed together.

`--digest-rows` adds two diagnostic rows of ours with its digest swapped out
in the child (the product always hashes with SHA-256): with none, which is the
transfer's own speed, and with BLAKE3 when the `blake3` module is installed,
to show what a faster digest would buy. `--with-httpx` adds the same adapter on
httpx's own transport, to show why the adapter defaults to its urllib3
transport; `--with-upstream` adds `sectra_client`'s
`SectraClient.download_slide_files` (it holds the whole body: ~4 GB for 1 GiB).

    .venv/bin/python bench/download.py [--size-mib 1024] [--rounds 5] [--digest-rows] [--with-httpx]
        [--with-upstream] [--python-env NAME=VALUE ...]

Targets (issue #15): median throughput >= 0.9 x curl; peak RSS < 64 MiB.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.util
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sectra_client.mock_server import MockSectraServer

REPO = Path(__file__).resolve().parent.parent
TOKEN = "bench-token"
SLIDE = "bench-slide"
MIB = 1024 * 1024

# Runs in a child process: times the download alone (not interpreter start-up) and reports its
# peak RSS (VmHWM: ru_maxrss would include the bench parent's RSS, inherited across fork/exec).
_CHILD = r"""
import json, resource, sys, time
from pathlib import Path
mode, url, out, token, slide = sys.argv[1], sys.argv[2], Path(sys.argv[3]), sys.argv[4], sys.argv[5]

def hwm_kib():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])

if mode in ("ours-nodigest", "ours-blake3"):  # diagnostics only: the product hashes with SHA-256
    import types
    import sectra_adapter._download as download_module

    class NoDigest:
        def update(self, data):
            pass

        def hexdigest(self):
            return ""

    if mode == "ours-blake3":
        import blake3
        make = blake3.blake3
    else:
        make = NoDigest
    download_module.hashlib = types.SimpleNamespace(sha256=make)

if mode == "upstream":
    import sectra_client.client as upstream
    client = upstream.SectraClient(url, token, _allow_http=True)
else:
    import httpx
    from sectra_adapter import SectraAdapter
    transport = httpx.HTTPTransport() if mode == "ours-httpx" else None
    client = SectraAdapter(url, token, allow_http=True, max_retries=0, transport=transport)
def cpu():
    usage = resource.getrusage(resource.RUSAGE_SELF)  # every thread of the process
    return usage.ru_utime + usage.ru_stime

before = hwm_kib()
cpu_before, start = cpu(), time.perf_counter()
paths = client.download_slide_files(slide, out)
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "cpu_seconds": cpu() - cpu_before,
                  "rss_before_kib": before, "rss_peak_kib": hwm_kib(),
                  "files": [str(p) for p in paths]}))
"""


def make_slide(path: Path, size: int) -> str:
    """A file of `size` bytes (a random block repeated: incompressible enough, quick to make)."""
    block = os.urandom(8 * MIB)
    digest = hashlib.sha256()
    with path.open("wb") as handle:
        remaining = size
        while remaining:
            piece = block[: min(len(block), remaining)]
            handle.write(piece)
            digest.update(piece)
            remaining -= len(piece)
    return digest.hexdigest()


def hashing_cpu_seconds(size: int) -> float:
    """CPU for SHA-256 over `size` bytes in memory: work ours does (the staged file's identity), curl not."""
    block = os.urandom(8 * MIB)
    digest = hashlib.sha256()
    start = time.process_time()
    for _ in range(size // len(block)):
        digest.update(block)
    digest.update(block[: size % len(block)])
    return time.process_time() - start


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(8 * MIB):
            digest.update(chunk)
    return digest.hexdigest()


def run_curl(url: str, out: Path, *, with_digest: bool = False) -> dict[str, float]:
    """`curl -o` (the raw multipart body); `with_digest`: then `openssl dgst -sha256` of it, timed as one."""
    out.mkdir(parents=True, exist_ok=True)
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.Popen(
        [
            "curl",
            "-sS",
            "--fail",
            "-w",
            "%{time_total}",
            "-o",
            str(out / "body"),
            "-H",
            f"Authorization: Bearer {TOKEN}",
            f"{url}/slides/{SLIDE}/files",
        ],
        stdout=subprocess.PIPE,
    )
    peak_kib = 0
    while proc.poll() is None:  # VmHWM only grows, so the last reading is (nearly) the peak
        with contextlib.suppress(OSError, ValueError, IndexError):  # IndexError: a zombie has no VmHWM
            status = Path(f"/proc/{proc.pid}/status").read_text()
            peak_kib = max(peak_kib, int(status.split("VmHWM:")[1].split()[0]))
        time.sleep(0.02)
    assert proc.stdout is not None
    seconds = float(proc.stdout.read())
    if proc.returncode:
        raise SystemExit(f"curl failed with exit code {proc.returncode}")
    if with_digest:  # the same work as ours: the file, then its SHA-256 (OpenSSL's)
        start = time.perf_counter()
        subprocess.run(
            ["openssl", "dgst", "-sha256", "-r", str(out / "body")], capture_output=True, check=True
        )
        seconds += time.perf_counter() - start
    children = resource.getrusage(resource.RUSAGE_CHILDREN)  # curl (and openssl) alone: both reaped
    cpu = (children.ru_utime - children_before.ru_utime) + (children.ru_stime - children_before.ru_stime)
    return {
        "seconds": seconds,
        "cpu_seconds": cpu,
        "rss_peak_mib": peak_kib / 1024,
        "rss_growth_mib": float("nan"),
    }


def run_python(
    mode: str, url: str, out: Path, expected_sha: str, extra_env: dict[str, str]
) -> dict[str, float]:
    env = {**os.environ, **extra_env, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, mode, url, str(out), TOKEN, SLIDE],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode:
        raise SystemExit(f"{mode} download failed:\n{proc.stderr[-2000:]}")
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    files = [Path(p) for p in report["files"]]
    if len(files) != 1 or sha256_of(files[0]) != expected_sha:
        raise SystemExit(f"{mode} download wrote the wrong bytes: {files}")
    return {
        "seconds": report["seconds"],
        "cpu_seconds": report["cpu_seconds"],
        "rss_peak_mib": report["rss_peak_kib"] / 1024,
        "rss_growth_mib": (report["rss_peak_kib"] - report["rss_before_kib"]) / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--digest-rows", action="store_true")
    parser.add_argument("--with-httpx", action="store_true")
    parser.add_argument("--with-upstream", action="store_true")
    parser.add_argument(
        "--python-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="set in the Python children only (e.g. GLIBC_TUNABLES=... to try allocator settings)",
    )
    args = parser.parse_args()
    size = args.size_mib * MIB
    extra_env = dict(item.split("=", 1) for item in args.python_env)
    report = sys.stdout

    with tempfile.TemporaryDirectory(prefix="bench-download-") as tmp:
        work = Path(tmp)
        source = work / "slide.svs"
        expected = make_slide(source, size)
        server = MockSectraServer(token=TOKEN, slide_files={SLIDE: source})
        results: dict[str, list[dict[str, float]]] = {"curl": [], "curl+sha256": [], "ours": []}
        if args.digest_rows:
            results["ours-nodigest"] = []
            if importlib.util.find_spec("blake3") is not None:
                results["ours-blake3"] = []
            else:
                print("(no blake3 module here: the BLAKE3 row is left out)", file=report)
        if args.with_httpx:
            results["ours-httpx"] = []
        if args.with_upstream:
            results["upstream"] = []
        # The mock prints a progress line per 8 MB chunk; keep it out of the report.
        with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
            server.run(port=0, host="127.0.0.1")
            try:
                for round_no in range(args.rounds + 1):  # round 0 warms up and is not counted
                    # Odd rounds run curl first, even rounds last: neither always gets the fresher machine.
                    names = list(results) if round_no % 2 else list(results)[::-1]
                    for name in names:
                        out = work / f"{name}-{round_no}"
                        if name == "curl":
                            figures = run_curl(server.url, out)
                        elif name == "curl+sha256":
                            figures = run_curl(server.url, out, with_digest=True)
                        else:
                            figures = run_python(name, server.url, out, expected, extra_env)
                        shutil.rmtree(out, ignore_errors=True)
                        if round_no == 0:
                            continue
                        results[name].append(figures)
                        print(f"round {round_no} {name:13s} {figures['seconds']:.2f} s", file=report)
            finally:
                server.stop()

    median = {name: statistics.median(r["seconds"] for r in runs) for name, runs in results.items()}
    curl_runs = results["curl"]
    # Each round's ratio pairs runs made seconds apart, so a load change on a shared machine
    # between rounds cancels out; the median of those ratios is the headline figure.
    paired = {
        name: statistics.median(c["seconds"] / r["seconds"] for c, r in zip(curl_runs, runs, strict=True))
        for name, runs in results.items()
    }
    print(f"\n{args.size_mib} MiB via MockSectraServer, median of {args.rounds} rounds:", file=report)
    for name, runs in results.items():
        peak = max(r["rss_peak_mib"] for r in runs)
        growth = max(r["rss_growth_mib"] for r in runs)
        growth_text = "" if name.startswith("curl") else f", RSS growth {growth:.1f} MiB"
        cpu = statistics.median(r["cpu_seconds"] for r in runs)
        print(
            f"  {name:13s} {median[name]:.2f} s = {args.size_mib / median[name]:.0f} MiB/s, "
            f"throughput {paired[name]:.2f} x curl (median of per-round ratios), CPU {cpu:.2f} s, "
            f"peak RSS {peak:.1f} MiB{growth_text}",
            file=report,
        )
    # Where the gap goes: ours hashes every byte and searches it for the delimiter; curl does neither.
    hash_cpu = hashing_cpu_seconds(size)
    print(
        f"  SHA-256 of {args.size_mib} MiB alone (in memory, this process): {hash_cpu:.2f} s CPU "
        "(done by ours, not by curl)",
        file=report,
    )
    same_work = statistics.median(
        c["seconds"] / r["seconds"] for c, r in zip(results["curl+sha256"], results["ours"], strict=True)
    )
    print(
        f"  ours against the same work (curl, then OpenSSL's SHA-256 of its file): {same_work:.2f} x",
        file=report,
    )
    ours_peak = max(r["rss_peak_mib"] for r in results["ours"])
    ratio = paired["ours"]
    verdict = "PASS" if ratio >= 0.9 and ours_peak < 64 else "MISS"
    print(
        f"targets (>= 0.9 x curl, peak RSS < 64 MiB): {verdict} ({ratio:.2f} x, {ours_peak:.1f} MiB)",
        file=report,
    )


if __name__ == "__main__":
    main()
