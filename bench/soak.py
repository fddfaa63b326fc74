"""Slides per minute through real workers against Strand's own limit: its per-organisation cap on
running jobs. N small slides are sent at once; the baseline is the bound Strand imposes in the same
run (cap / job time), and the figure is the ratio to it.

    .venv/bin/python bench/soak.py [--runs 40] [--workers 2] [--cap 4] [--job-seconds 1.3]
                                   [--scenario both|clean|kill] [--redis-port 6420] [--json OUT]

Everything is real but the remotes (tests/e2e/conftest.py's approach, via bench/_harness.py): a
private `redis-server`, MockSectraServer, FakeStrandServer with `max_concurrent_jobs=cap` and
`job_duration=job_seconds`, the webhook under uvicorn, and `--workers` `sectra-bridge worker`
processes with the product's default settings. Each run goes download -> de-identify -> upload ->
submit -> wait -> summarise -> publish; a submit beyond the cap gets Strand's 429 + Retry-After.

Reported: runs/min overall (first create to last final) and in the middle of the batch (the 10th
to the 90th percentile completion, free of ramp-up and drain), the bound and the ratio; p50/p95
wall time per stage from the runs' audit trails next to the time spent inside steps (the workers'
`bridge_stage_duration_seconds`), which tells queueing and backoff from work; Strand calls per run by
endpoint (the fake's counters), and how many estimates and status polls each 429 cost.

`kill` repeats the batch and SIGKILLs one worker when half of the runs are final, starting a
replacement at once (a new pod: empty work volume). It checks that every run completes and that
Strand holds exactly one job per run. Goal (issue #15): >= 50 % of the Strand-imposed bound.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psutil

from workers.settings import Settings

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import (
    FINAL,
    CpuClock,
    Lab,
    RedisCounters,
    lab,
    percentile,
    redis_census,
    stage_interval,
    stage_seconds,
    stage_table,
    step_seconds,
    strand_capacity_use,
)

# The product's default (the lab's workers run with it): keys kept this long scale with a lab's own.
RUN_RETENTION_DAYS = Settings.model_fields["run_retention_days"].default


def run_batch(args: argparse.Namespace, *, kill: bool) -> dict[str, Any]:
    options = {"max_concurrent_jobs": args.cap, "job_duration": args.job_seconds}
    with lab(args.redis_port, strand_options=options) as the_lab:
        slides = the_lab.add_slides(args.runs)
        workers = [the_lab.start_worker(args.concurrency) for _ in range(args.workers)]
        for worker in workers:
            worker.wait_ready()
        redis_before = RedisCounters.read(the_lab.redis)
        the_lab.bench_commands = 0
        clock = CpuClock(the_lab)
        started = time.monotonic()
        run_ids = [the_lab.create(slide_id) for slide_id in slides]
        created = time.monotonic()
        finished_at: dict[str, float] = {}
        killed: dict[str, Any] = {}
        metrics_of_gone: list[str] = []
        deadline = started + args.timeout
        while len(finished_at) < len(run_ids) and time.monotonic() < deadline:
            now = time.monotonic()
            for run_id, status in the_lab.statuses(r for r in run_ids if r not in finished_at).items():
                if status in FINAL or status == "gone":
                    finished_at[run_id] = now
            if kill and not killed and len(finished_at) >= len(run_ids) // 2:
                victim = the_lab.workers[0]
                metrics_of_gone = the_lab.worker_metrics()[:1]
                clock.before_kill(victim)
                victim.kill()
                killed = {"at_s": round(now - started, 1), "final_before": len(finished_at)}
                the_lab.start_worker(args.concurrency)  # the replacement pod; ready when Celery is
            time.sleep(0.1)
        ended = time.monotonic()
        return collect(
            the_lab,
            args,
            run_ids,
            started,
            created,
            ended,
            finished_at,
            killed,
            redis_before,
            clock.read(),
            metrics_of_gone,
        )


def collect(
    the_lab: Lab,
    args: argparse.Namespace,
    run_ids: list[str],
    started: float,
    created: float,
    ended: float,
    finished_at: dict[str, float],
    killed: dict[str, Any],
    redis_before: RedisCounters,
    cpu: dict[str, float],
    metrics_of_gone: list[str],
) -> dict[str, Any]:
    redis_after = RedisCounters.read(the_lab.redis)  # before the bench's own reads below
    bench_commands = the_lab.bench_commands
    records = {run_id: the_lab.store.get(run_id) for run_id in run_ids}
    statuses = Counter(r.status.value if r else "gone" for r in records.values())
    trails = {run_id: the_lab.store.events(run_id) for run_id, r in records.items() if r}
    per_run = [stage_seconds(r.created_at, trails[r.run_id]) for r in records.values() if r]
    # The fake lives in this process: its jobs' monotonic clock is ours; audit trails are wall clock.
    to_wall = time.time() - time.monotonic()
    job_spans = [
        (job.created_mono + to_wall, job.created_mono + to_wall + args.job_seconds)
        for job in the_lab.strand.jobs.values()
    ]
    ready = [span for trail in trails.values() if (span := stage_interval(trail, "submitting"))]
    use = strand_capacity_use(job_spans, ready, args.cap, (started + to_wall, ended + to_wall))
    event_counts: Counter[str] = Counter()
    for trail in trails.values():
        for event in trail:
            event_counts[event["event"]] += 1
            if event["event"] == "step_failed":
                event_counts[f"step_failed:{event['data'].get('error_type')}"] += 1
    jobs = the_lab.strand.jobs
    job_ids = [r.job_id for r in records.values() if r and r.job_id]
    uploads_with_jobs = Counter(job.upload_id for job in jobs.values())
    elapsed = ended - started
    done = sorted(t - started for t in finished_at.values())
    lo, hi = percentile(done, 10), percentile(done, 90)
    middle = sum(1 for t in done if lo < t <= hi)
    middle_rate = middle / (hi - lo) * 60 if hi > lo else float("nan")
    bound = args.cap / args.job_seconds * 60
    completed = statuses.get("completed", 0)
    rate = completed / elapsed * 60
    run_bytes = [
        sum(
            the_lab.redis.memory_usage(key, samples=0) or 0
            for key in (f"bridge:run:{run_id}", f"bridge:run:{run_id}:events")
        )
        for run_id in run_ids
    ]
    census = redis_census(the_lab.redis)
    requests = the_lab.strand.requests
    by_endpoint = requests.by_endpoint()
    status_429 = sum(n for k, n in requests.snapshot().items() if k.status == 429)
    metrics = metrics_of_gone + the_lab.worker_metrics()
    steps = step_seconds(metrics)
    return {
        "runs": len(run_ids),
        "statuses": dict(statuses),
        "elapsed_s": elapsed,
        "create_s": created - started,
        "runs_per_min": rate,
        "middle_runs_per_min": middle_rate,
        "bound_runs_per_min": bound,
        "ratio": rate / bound,
        "middle_ratio": middle_rate / bound,
        "stages": stage_table(per_run),
        "strand_use": use,
        "step_seconds": steps,
        "strand_calls_per_run": {k: n / len(run_ids) for k, n in sorted(by_endpoint.items())},
        "strand_429": status_429,
        "submits_rejected": the_lab.strand.stats.submits_rejected,
        "events": dict(event_counts),
        "jobs": len(jobs),
        "runs_with_job": len(set(job_ids)),
        "max_jobs_per_upload": max(uploads_with_jobs.values(), default=0),
        "orphan_jobs": len(set(jobs) - set(job_ids)),
        "redis_commands_per_run": redis_after.commands_since(redis_before, bench_commands) / len(run_ids),
        "redis_memory_bytes": redis_after.used_memory,
        "redis_bytes_per_run": statistics.fmean(run_bytes),  # MEMORY USAGE of its record and audit trail
        # Every key the batch left, by shape: what the capacity model's Redis memory is made of.
        "redis_classes": [
            {
                "shape": c.shape,
                "keys": c.keys,
                "bytes_per_run": c.total_bytes / len(run_ids),
                "ttl_s": c.ttl_s,
            }
            for c in census
        ],
        "run_retention_s": RUN_RETENTION_DAYS * 86400.0,
        "slide_bytes_mean": statistics.fmean(the_lab.slide_bytes.values()),
        "worker_cpu_s_per_run": cpu["workers"] / len(run_ids),
        "cpu_s": cpu,
        "cores": psutil.cpu_count() or 1,
        "killed": killed,
        "args_cap": args.cap,
        "tail_s": (done[-1] - hi) if done else float("nan"),
    }


def report(name: str, r: dict[str, Any]) -> None:
    print(
        f"\n== {name}: {r['runs']} runs, {r['statuses']}, {r['elapsed_s']:.1f} s "
        f"(creates took {r['create_s']:.1f} s)"
    )
    if r["killed"]:
        print(
            f"   worker 0 SIGKILLed at {r['killed']['at_s']} s with {r['killed']['final_before']} "
            "runs final; replacement started at once"
        )
    print(f"   Strand-imposed bound (cap / job time): {r['bound_runs_per_min']:.0f} runs/min")
    print(
        f"   measured: {r['runs_per_min']:.1f} runs/min = {r['ratio']:.2f} x bound "
        f"(middle of the batch: {r['middle_runs_per_min']:.1f} runs/min = {r['middle_ratio']:.2f} x)"
    )
    use = r["strand_use"]
    print(
        f"   Strand's {r['args_cap']} slots over the batch: running jobs {use['busy']:.0%}, "
        f"idle while a run was ready to submit (429, backing off) {use['idle_run_ready']:.0%}, "
        f"idle with no run ready {use['idle_no_run_ready']:.0%}"
    )
    print("   stage          wall p50   wall p95  wall mean | in-step mean (steps)")
    for stage, p50, p95, mean in r["stages"]:
        total, count = r["step_seconds"].get(stage, (0.0, 0))
        inside = f"{total / count:8.3f} s ({count})" if count else "       -"
        print(f"   {stage:<13} {p50:8.2f} s {p95:8.2f} s {mean:8.2f} s | {inside}")
    print("   Strand calls per run, by endpoint:")
    for endpoint, n in r["strand_calls_per_run"].items():
        print(f"     {n:7.2f}  {endpoint}")
    rejected = r["submits_rejected"]
    calls = r["strand_calls_per_run"]
    estimates = calls.get("POST /api/v1/predict/estimate", 0.0) * r["runs"]
    print(
        f"   429 answers: {r['strand_429']} (submits rejected: {rejected}); estimates {estimates:.0f} for "
        f"{r['runs']} runs = {(estimates - r['runs']) / rejected if rejected else 0:.2f} extra per 429"
    )
    retries = {k: v for k, v in r["events"].items() if k.startswith("step_failed:") or k == "recovered"}
    print(f"   step failures / recoveries in the audit trails: {retries or 'none'}")
    print(
        f"   Strand jobs: {r['jobs']} for {r['runs']} runs ({r['runs_with_job']} runs hold one; "
        f"max jobs per upload {r['max_jobs_per_upload']}; jobs no run holds: {r['orphan_jobs']})"
    )
    print(
        f"   Redis: {r['redis_commands_per_run']:.0f} commands per run, "
        f"{r['redis_bytes_per_run'] / 1024:.1f} KiB kept per run (record + audit trail), "
        f"used_memory {r['redis_memory_bytes'] / 2**20:.1f} MiB"
    )
    print("   Redis keys left by the batch, by shape (MEMORY USAGE; expiry):")
    for c in r["redis_classes"][:10]:
        ttl = c["ttl_s"]
        kept = (
            "never expires" if ttl is None else f"{ttl / 86400:.1f} days" if ttl >= 86400 else f"{ttl:.0f} s"
        )
        per_run = f"{c['bytes_per_run'] / 1024:7.1f} KiB per run"
        print(f"     {per_run}  {c['keys']:4d} keys  {kept:>13}  {c['shape']}")
    print(
        f"   worker CPU {r['worker_cpu_s_per_run']:.2f} s per run; last run final "
        f"{r['tail_s']:.1f} s after the 90th percentile one"
    )
    used = sum(r["cpu_s"].values())
    print(
        "   CPU over the batch: "
        + ", ".join(f"{k} {v:.1f} s" for k, v in r["cpu_s"].items())
        + f" = {used / (r['cores'] * r['elapsed_s']):.0%} of {r['cores']} cores x {r['elapsed_s']:.0f} s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=4, help="slots per worker (the CLI's default)")
    parser.add_argument("--cap", type=int, default=4, help="Strand's running jobs per organisation")
    parser.add_argument("--job-seconds", type=float, default=1.3)
    parser.add_argument("--scenario", choices=("both", "clean", "kill"), default="both")
    parser.add_argument("--redis-port", type=int, default=6420)
    parser.add_argument("--timeout", type=float, default=240.0, help="per batch")
    parser.add_argument("--json", type=Path, help="write the figures here too (docs/capacity.md's inputs)")
    args = parser.parse_args()
    results = {}
    for name in ("clean", "kill"):
        if args.scenario in (name, "both"):
            results[name] = run_batch(args, kill=name == "kill")
            report(name, results[name])
    if args.json:
        args.json.write_text(json.dumps({"args": vars(args) | {"json": str(args.json)}, **results}, indent=2))
    failed = [
        n
        for n, r in results.items()
        if r["statuses"].get("completed", 0) != r["runs"] or r["jobs"] != r["runs"] or r["orphan_jobs"]
    ]
    if failed:
        print(f"\nNOT every run completed with exactly one Strand job in: {', '.join(failed)}")
    print(f"\nmean over scenarios: {statistics.fmean(r['ratio'] for r in results.values()):.2f} x bound")


if __name__ == "__main__":
    main()
