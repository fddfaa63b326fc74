"""Slide download: our streaming `SectraAdapter.download_slide_files` against `curl` on the same URL.

A generated file (1 GiB by default) is served by `sectra_client`'s own
`MockSectraServer` (multipart/form-data, its progress prints silenced). Each
round downloads it once with `curl -o` and once with ours, alternating, each in
its own process so neither shares the server's interpreter; peak RSS comes from
the child's rusage (`wait4`), and for ours the growth over the RSS it had just
before the download. Figures are ratios against curl measured in this run, so
they hold on a busy machine too. `ours-httpx` is the same adapter on httpx's
own transport, to show why the adapter defaults to its urllib3 transport.
`--with-upstream` adds `sectra_client`'s `SectraClient.download_slide_files`
(it holds the whole body: ~4 GB for 1 GiB).

    .venv/bin/python bench/download.py [--size-mib 1024] [--rounds 3] [--with-upstream]

Targets: throughput >= 0.8 x curl; RSS growth < 64 MiB.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
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
import json, sys, time
from pathlib import Path
mode, url, out, token, slide = sys.argv[1], sys.argv[2], Path(sys.argv[3]), sys.argv[4], sys.argv[5]

def hwm_kib():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])

if mode == "upstream":
    import sectra_client.client as upstream
    client = upstream.SectraClient(url, token, _allow_http=True)
else:
    import httpx
    from sectra_adapter.client import SectraAdapter
    transport = httpx.HTTPTransport() if mode == "ours-httpx" else None
    client = SectraAdapter(url, token, allow_http=True, max_retries=0, transport=transport)
before = hwm_kib()
start = time.perf_counter()
paths = client.download_slide_files(slide, out)
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "rss_before_kib": before, "rss_peak_kib": hwm_kib(),
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


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(8 * MIB):
            digest.update(chunk)
    return digest.hexdigest()


def run_curl(url: str, out: Path) -> dict[str, float]:
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    proc = subprocess.Popen(
        [
            "curl",
            "-sS",
            "--fail",
            "-o",
            str(out / "body"),
            "-H",
            f"Authorization: Bearer {TOKEN}",
            f"{url}/slides/{SLIDE}/files",
        ]
    )
    peak_kib = 0
    while proc.poll() is None:  # VmHWM only grows, so the last reading is (nearly) the peak
        with contextlib.suppress(OSError, ValueError):
            status = Path(f"/proc/{proc.pid}/status").read_text()
            peak_kib = max(peak_kib, int(status.split("VmHWM:")[1].split()[0]))
        time.sleep(0.02)
    seconds = time.perf_counter() - start
    if proc.returncode:
        raise SystemExit(f"curl failed with exit code {proc.returncode}")
    return {"seconds": seconds, "rss_peak_mib": peak_kib / 1024, "rss_growth_mib": float("nan")}


def run_python(mode: str, url: str, out: Path, expected_sha: str) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
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
        "rss_peak_mib": report["rss_peak_kib"] / 1024,
        "rss_growth_mib": (report["rss_peak_kib"] - report["rss_before_kib"]) / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--with-upstream", action="store_true")
    args = parser.parse_args()
    size = args.size_mib * MIB
    report = sys.stdout

    with tempfile.TemporaryDirectory(prefix="bench-download-") as tmp:
        work = Path(tmp)
        source = work / "slide.svs"
        expected = make_slide(source, size)
        server = MockSectraServer(token=TOKEN, slide_files={SLIDE: source})
        results: dict[str, list[dict[str, float]]] = {"curl": [], "ours": [], "ours-httpx": []}
        if args.with_upstream:
            results["upstream"] = []
        # The mock prints a progress line per 8 MB chunk; keep it out of the report.
        with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
            server.run(port=0, host="127.0.0.1")
            try:
                for round_no in range(args.rounds):
                    for name in results:
                        out = work / f"{name}-{round_no}"
                        if name == "curl":
                            figures = run_curl(server.url, out)
                        else:
                            figures = run_python(name, server.url, out, expected)
                        results[name].append(figures)
                        shutil.rmtree(out, ignore_errors=True)
                        print(f"round {round_no + 1} {name:10s} {figures['seconds']:.2f} s", file=report)
            finally:
                server.stop()

    best = {name: min(r["seconds"] for r in runs) for name, runs in results.items()}
    print(f"\n{args.size_mib} MiB via MockSectraServer, best of {args.rounds} rounds:", file=report)
    for name, runs in results.items():
        peak = max(r["rss_peak_mib"] for r in runs)
        growth = max(r["rss_growth_mib"] for r in runs)
        growth_text = "" if name == "curl" else f", RSS growth {growth:.1f} MiB"
        print(
            f"  {name:10s} {best[name]:.2f} s = {args.size_mib / best[name]:.0f} MiB/s, "
            f"throughput {best['curl'] / best[name]:.2f} x curl, peak RSS {peak:.1f} MiB{growth_text}",
            file=report,
        )
    ours_growth = max(r["rss_growth_mib"] for r in results["ours"])
    ratio = best["curl"] / best["ours"]
    verdict = "PASS" if ratio >= 0.8 and ours_growth < 64 else "MISS"
    print(
        f"targets (>= 0.8 x curl, < 64 MiB growth): {verdict} ({ratio:.2f} x, {ours_growth:.1f} MiB)",
        file=report,
    )


if __name__ == "__main__":
    main()
