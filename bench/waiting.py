"""What one worker pays to carry many runs whose Strand jobs are still running, against the same
worker idle: resident memory, CPU seconds per minute, Redis commands per minute, Strand status
requests per minute, and whether any worker slot is held while the runs wait.

    .venv/bin/python bench/waiting.py [--runs 200] [--window 60] [--idle-window 20] [--redis-port 6420]

One `sectra-bridge worker` (the CLI's 4 slots, the product's default settings), a private
`redis-server`, MockSectraServer, and FakeStrandServer whose jobs run for a day
(`job_duration=86400`) with its cap above `--runs`. The bench first measures the idle worker
(the baseline), then sends `--runs` slides through download, de-identification, upload and submit,
and once every run is `waiting` (and `--settle` seconds more, past the first looks) measures for
`--window` seconds. Slots: Celery's own remote control
(`inspect().active()` and `.scheduled()`), sampled after the window so its traffic is not counted;
a slot counts as held when one task has been active on it for `HELD_SECONDS`.

Goal (issue #15): >= 200 concurrent waiting runs on one worker with bounded memory and no slot held,
Strand polled no more often than its SSE heartbeat would allow: the stream sends a keep-alive every
15 s (reference/strand-rest-api.md, `GET /jobs/{id}/stream`), so at most runs x 60 / 15 status
requests per minute.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import Lab, RedisCounters, Worker, dir_bytes, lab, wait_until

HEARTBEAT_SECONDS = 15.0  # Strand's SSE keep-alive interval (reference/strand-rest-api.md)
STATUS = "GET /api/v1/jobs/{job_id}"
STREAM = "GET /api/v1/jobs/{job_id}/stream"
MiB = 2**20
# A status poll takes well under a second; a slot at one task this long is held by a waiting run.
HELD_SECONDS = 5.0


def window(the_lab: Lab, worker: Worker, seconds: float) -> dict[str, Any]:
    """Everything the worker cost over `seconds`, sampled once a second (RSS: the peak)."""
    redis_before = RedisCounters.read(the_lab.redis)
    strand_before = the_lab.strand.requests.by_endpoint()
    sectra_before = _sectra_posts(the_lab)
    cpu_before = worker.cpu_seconds()
    started = time.monotonic()
    peak = worker.rss()
    while time.monotonic() - started < seconds:
        time.sleep(1.0)
        peak = max(peak, worker.rss())
    elapsed = time.monotonic() - started
    cpu = worker.cpu_seconds() - cpu_before
    redis_after = RedisCounters.read(the_lab.redis)
    strand = the_lab.strand.requests.by_endpoint() - strand_before
    per_min = 60.0 / elapsed
    return {
        "seconds": elapsed,
        "rss_peak": peak,
        "cpu_s_per_min": cpu * per_min,
        "redis_per_min": redis_after.commands_since(redis_before, 0) * per_min,
        "redis_by_command_per_min": {
            k: n * per_min for k, n in sorted(redis_after.minus(redis_before).items(), key=lambda kv: -kv[1])
        },
        "redis_memory": redis_after.used_memory,
        "strand_per_min": {k: n * per_min for k, n in strand.items()},
        "sectra_per_min": (_sectra_posts(the_lab) - sectra_before) * per_min,
    }


def _sectra_posts(the_lab: Lab) -> int:
    """Requests Sectra answered (progress updates, token checks), by the mock's own counters."""
    return sum(the_lab.sectra.requests.by_endpoint().values())


def slots(samples: int = 5) -> dict[str, float]:
    """Worker slots busy (`active`), how long the oldest busy one had been at its task, and steps held
    for later (`scheduled`), by Celery's remote control.

    A slot held by a waiting run shows as a task active for as long as the run waits; the status
    polls themselves (800 a minute for 200 runs) are short tasks, several of which may be in flight
    at any instant, so the count alone does not tell a held slot from a busy one.
    """
    from workers.celery_app import celery_app

    busy, held, oldest = 0, 0, 0.0
    for _ in range(samples):
        # One worker answers: `limit=1` returns with its reply instead of waiting out the timeout, so
        # the clock read right after `active()` is the reply's moment (read after both calls, it was
        # up to two timeouts late, and a task just begun looked 4 s old).
        inspect = celery_app.control.inspect(timeout=2.0, limit=1)
        active = inspect.active() or {}
        now = time.time()  # Celery reports `time_start` as wall-clock time
        scheduled = inspect.scheduled() or {}
        busy = max(busy, sum(len(v) for v in active.values()))
        held = max(held, sum(len(v) for v in scheduled.values()))
        started = [
            task["time_start"] for tasks in active.values() for task in tasks if task.get("time_start")
        ]
        oldest = max([oldest, *(now - start for start in started)])
        time.sleep(1.0)
    return {"active_max": busy, "oldest_active_s": oldest, "scheduled_max": held}


def warm_up(the_lab: Lab, slide_id: str) -> None:
    """One whole run first (its job finished by hand), so the idle baseline is a worker that has
    loaded every stage's code, as a worker in service has: the growth measured is the runs'."""
    run_id = the_lab.create(slide_id)
    wait_until(
        lambda: the_lab.store.require(run_id).job_id is not None, 60, "the warm-up run was not submitted"
    )
    job_id = the_lab.store.require(run_id).job_id
    assert job_id is not None
    the_lab.strand.advance(job_id, "completed")
    wait_until(
        lambda: the_lab.statuses([run_id])[run_id] == "completed", 60, "the warm-up run did not complete"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--window", type=float, default=60.0, help="seconds measured while the runs wait")
    parser.add_argument("--idle-window", type=float, default=20.0, help="seconds measured idle (baseline)")
    parser.add_argument("--setup-timeout", type=float, default=240.0)
    parser.add_argument(
        "--settle", type=float, default=20.0, help="seconds between all waiting and the window"
    )
    parser.add_argument("--redis-port", type=int, default=6420)
    parser.add_argument("--json", type=Path, help="write the figures here too (docs/capacity.md's inputs)")
    args = parser.parse_args()
    options = {"max_concurrent_jobs": args.runs + 10, "job_duration": 86_400.0}
    with lab(args.redis_port, strand_options=options) as the_lab:
        slides = the_lab.add_slides(args.runs + 1, width=512, height=384)  # size does not matter here
        worker = the_lab.start_worker()
        worker.wait_ready()
        warm_up(the_lab, slides.pop())
        idle = window(the_lab, worker, args.idle_window)
        idle_slots = slots(2)
        started = time.monotonic()
        run_ids = [the_lab.create(slide_id) for slide_id in slides]
        rss_by_waiting: dict[int, int] = {}
        marks = sorted({args.runs // 4, args.runs // 2, 3 * args.runs // 4, args.runs})

        def all_waiting() -> bool:
            statuses = Counter(the_lab.statuses(run_ids).values())
            if set(statuses) - {
                "received",
                "downloading",
                "deidentifying",
                "uploading",
                "submitting",
                "waiting",
            }:
                raise RuntimeError(f"a run left the path to waiting: {dict(statuses)}")
            for mark in marks:
                if statuses["waiting"] >= mark and mark not in rss_by_waiting:
                    rss_by_waiting[mark] = worker.rss()
            return statuses["waiting"] == len(run_ids)

        wait_until(all_waiting, args.setup_timeout, f"not all {args.runs} runs reached waiting", every=0.5)
        setup = time.monotonic() - started
        time.sleep(args.settle)  # past the first looks' ramp (0, 2, 4, 8, 16 s): the steady state
        busy = window(the_lab, worker, args.window)
        busy_slots = slots()
        disk = dir_bytes(worker.work_dir)
        slide_mean = sum(the_lab.slide_bytes[s] for s in slides) / len(slides)
        jobs = the_lab.strand.jobs
        running = sum(1 for job in jobs.values() if job.status == "running")
    report(args, idle, idle_slots, busy, busy_slots, rss_by_waiting, setup, running)
    print(
        f"work dir with {args.runs} runs waiting: {disk / MiB:.1f} MiB = "
        f"{disk / args.runs / slide_mean:.2f} x the slide size per waiting run "
        f"(slides {slide_mean / MiB:.2f} MiB; released once Strand holds the upload)"
    )
    if args.json:
        n = args.runs
        per_run = {
            "rss_bytes": (busy["rss_peak"] - idle["rss_peak"]) / n,
            "cpu_s_per_min": (busy["cpu_s_per_min"] - idle["cpu_s_per_min"]) / n,
            "redis_commands_per_min": (busy["redis_per_min"] - idle["redis_per_min"]) / n,
            "redis_bytes": (busy["redis_memory"] - idle["redis_memory"]) / n,
            "status_gets_per_min": busy["strand_per_min"].get(STATUS, 0.0) / n,
            "sectra_requests_per_min": busy["sectra_per_min"] / n,
            "workdir_slides": disk / n / slide_mean,
        }
        figures = {"runs": n, "idle": idle, "waiting": busy, "slots": busy_slots, "per_waiting_run": per_run}
        args.json.write_text(json.dumps(figures, indent=2))


def report(
    args: argparse.Namespace,
    idle: dict[str, Any],
    idle_slots: dict[str, int],
    busy: dict[str, Any],
    busy_slots: dict[str, int],
    rss_by_waiting: dict[int, int],
    setup: float,
    running: int,
) -> None:
    n = args.runs
    print(f"{n} runs reached `waiting` in {setup:.0f} s; Strand jobs still running: {running}")
    print(f"{'':23}idle worker ({idle['seconds']:.0f} s)   {n} waiting ({busy['seconds']:.0f} s)   ratio")
    print(
        f"RSS peak               {idle['rss_peak'] / MiB:9.1f} MiB   {busy['rss_peak'] / MiB:14.1f} MiB   "
        f"{busy['rss_peak'] / idle['rss_peak']:5.2f} x"
    )
    print(
        f"CPU s per minute       {idle['cpu_s_per_min']:9.2f}       {busy['cpu_s_per_min']:14.2f}       "
        f"{busy['cpu_s_per_min'] / max(idle['cpu_s_per_min'], 1e-9):5.1f} x"
    )
    print(
        f"Redis commands / min   {idle['redis_per_min']:9.0f}       {busy['redis_per_min']:14.0f}       "
        f"{busy['redis_per_min'] / max(idle['redis_per_min'], 1e-9):5.1f} x"
    )
    status = busy["strand_per_min"].get(STATUS, 0.0)
    allowed = n * 60.0 / HEARTBEAT_SECONDS
    print(
        f"Strand status GETs/min {idle['strand_per_min'].get(STATUS, 0.0):9.0f}       {status:14.0f}       "
        f"{status / allowed:5.2f} x the heartbeat bound "
        f"({allowed:.0f}/min = {n} jobs x 60 / {HEARTBEAT_SECONDS:g} s)"
    )
    print(
        f"Strand SSE streams/min {idle['strand_per_min'].get(STREAM, 0.0):9.0f}       "
        f"{busy['strand_per_min'].get(STREAM, 0.0):14.0f}"
    )
    print(f"Sectra requests / min  {idle['sectra_per_min']:9.0f}       {busy['sectra_per_min']:14.0f}")
    print(
        f"slots busy (max of samples): idle {idle_slots['active_max']}, "
        f"waiting {busy_slots['active_max']} of 4, the longest at its task "
        f"{busy_slots['oldest_active_s']:.2f} s; steps held for later: {busy_slots['scheduled_max']}"
    )
    grown = sorted(rss_by_waiting.items())
    print("RSS as runs reached waiting: " + ", ".join(f"{k}: {v / MiB:.1f} MiB" for k, v in grown))
    if len(grown) >= 2 and grown[-1][0] > grown[0][0]:
        slope = (grown[-1][1] - grown[0][1]) / (grown[-1][0] - grown[0][0])
        print(f"  growth {slope / 1024:.1f} KiB per waiting run (from {grown[0][0]} to {grown[-1][0]} runs)")
    grown_redis = (busy["redis_memory"] - idle["redis_memory"]) / n
    print(
        f"Redis used_memory idle {idle['redis_memory'] / MiB:.1f} MiB, with {n} runs waiting "
        f"{busy['redis_memory'] / MiB:.1f} MiB: {grown_redis / 1024:.1f} KiB per waiting run "
        "(its record, audit trail and scheduled step)"
    )
    top = list(busy["redis_by_command_per_min"].items())[:10]
    print("Redis commands per minute while waiting, top 10: " + ", ".join(f"{k} {v:.0f}" for k, v in top))
    verdict = {
        f"no slot held (none at one task for {HELD_SECONDS:g} s)": busy_slots["oldest_active_s"]
        < HELD_SECONDS,
        "polling within the heartbeat bound": status <= allowed,
    }
    print("goal: " + "; ".join(f"{k}: {'yes' if ok else 'NO'}" for k, ok in verdict.items()))


if __name__ == "__main__":
    main()
