"""docs/capacity.md's model as code: a lab's slides per day, slide size and Strand job time in;
pods, Strand cap, work-dir disk, Redis memory and operations, bandwidth and Strand requests out.
The per-run figures come from the benches' `--json` output, so every number the doc quotes can be
produced again with one command:

    .venv/bin/python bench/soak.py --scenario clean --json /tmp/soak.json
    .venv/bin/python bench/waiting.py --json /tmp/waiting.json
    .venv/bin/python bench/capacity_model.py --soak /tmp/soak.json --waiting /tmp/waiting.json \\
        --slides-per-day 1000 --hours 10 --slide-gib 1.5 --job-minutes 10 \\
        --link-in-mibs 100 --link-out-mibs 60 --own-down-mibs D --own-up-mibs U --cpu-s-per-gib C

`--own-down-mibs`/`--own-up-mibs`/`--cpu-s-per-gib`: what bench/download.py and bench/upload.py
measure for our clients on the pods' hardware (MiB/s, and client CPU seconds per GiB moved).
bench/capacity_sim.py checks `plan` against a simulation.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HEARTBEAT_SECONDS = 15.0  # Strand's SSE keep-alive (reference/strand-rest-api.md)
UTILISATION = 0.7  # size slots, CPU and the Strand cap for 70 % busy: queues stay short
WAITING_PER_POD = 200  # the waiting load bench/waiting.py measures on one pod
PRE_AND_POST = ("downloading", "deidentifying", "uploading", "submitting", "summarising", "publishing")
DISPATCH_S = 0.005  # broker hand-off per step


def next_poll_delay(policy: str, age: float) -> float:
    """`workers.stages.follow.next_poll_delay`: `current` as it was measured, `improved` the fix."""
    if policy == "current":
        return max(2.0, min(30.0, age / 20.0))
    return min(30.0, max(2.0, min(age, HEARTBEAT_SECONDS), age / 20.0))


def poll_ages(policy: str, job_s: float) -> list[float]:
    """Ages at which a job is looked at, up to and including the look that sees it finished."""
    ages = [0.0]
    while ages[-1] < job_s:
        ages.append(ages[-1] + next_poll_delay(policy, ages[-1]))
    return ages


@dataclass
class Measured:
    """Per-run figures from the benches (small slides: the fixed part of each stage)."""

    step_s: dict[str, float]  # in-step seconds per stage; "waiting" = one look at the job
    cpu_s_per_run: float
    redis_commands_per_run: float
    redis_bytes_per_run: float  # record and audit trail
    strand_calls_per_run: float  # every call but status polls and the 429 retries' extras
    slide_gib: float  # the soak's slide size
    waiting: dict[str, float]  # bench/waiting.py's per_waiting_run
    own_down_mibs: float = math.inf
    own_up_mibs: float = math.inf
    cpu_s_per_gib: float = 0.0
    deid_s_per_gib: float = 0.0
    # Every key a run leaves in Redis (bench/soak.py's census): (bytes, how long it lives; None =
    # the run's retention, `D`). Empty for an older soak file: the record and audit trail alone.
    redis_kept: list[tuple[float, float | None]] = field(default_factory=list)

    @classmethod
    def load(cls, soak: Path, waiting: Path | None, **transfer: float) -> Measured:
        clean = json.loads(soak.read_text())["clean"]
        step_s = {stage: total / count for stage, (total, count) in clean["step_seconds"].items() if count}
        calls = clean["strand_calls_per_run"]
        extras = ("GET /api/v1/jobs/{job_id}", "GET /api/v1/samples/{upload_id}")
        per_run = sum(n for k, n in calls.items() if k not in extras)
        # A run's own calls once (one estimate, one submit), whatever the batch's 429s added.
        per_run -= calls.get("POST /api/v1/predict", 1.0) - 1.0
        per_run -= calls.get("POST /api/v1/predict/estimate", 1.0) - 1.0
        per_run += 1.0  # the one status read after the job ended (the summariser's)
        wait = json.loads(waiting.read_text())["per_waiting_run"] if waiting else {}
        retention = clean.get("run_retention_s", 0.0)
        kept = [
            (c["bytes_per_run"], None if abs(c["ttl_s"] - retention) <= 0.05 * retention else c["ttl_s"])
            for c in clean.get("redis_classes", [])
            if c["ttl_s"] is not None  # the never-expiring ones are Celery's bindings: not per run
        ]
        return cls(
            step_s=step_s,
            cpu_s_per_run=clean["worker_cpu_s_per_run"],
            redis_commands_per_run=clean["redis_commands_per_run"],
            redis_bytes_per_run=clean["redis_bytes_per_run"],
            strand_calls_per_run=per_run,
            slide_gib=clean["slide_bytes_mean"] / 2**30,
            waiting=wait,
            redis_kept=kept,
            **transfer,
        )


@dataclass
class LabInputs:
    slides_per_day: float
    hours: float  # the working day they arrive in
    slide_gib: float
    job_minutes: float
    slots_per_pod: int = 4
    pod_cores: float = 1.0
    link_in_mibs: float = math.inf
    link_out_mibs: float = math.inf
    retention_days: float = 30.0
    failed_fraction: float = 0.02  # runs failing before Strand held their upload (later ones keep no files)
    staged_retention_hours: float = 24.0  # BRIDGE_STAGED_RETENTION_HOURS: how long those keep their files
    policy: str = "improved"


def plan(lab: LabInputs, m: Measured) -> dict[str, Any]:
    """Every figure of docs/capacity.md section 3, for one lab."""
    lam = lab.slides_per_day / (lab.hours * 60.0)  # runs per minute
    job_s = lab.job_minutes * 60.0
    ages = poll_ages(lab.policy, job_s)
    polls = len(ages)
    poll_lag = ages[-1] - job_s
    mib = lab.slide_gib * 1024.0
    extra = max(0.0, lab.slide_gib - m.slide_gib)  # the soak's small slide is in the fixed part
    transfer_s = (
        extra
        * 1024.0
        * (1.0 / min(lab.link_in_mibs, m.own_down_mibs) + 1.0 / min(lab.link_out_mibs, m.own_up_mibs))
    )
    fixed_s = sum(m.step_s.get(s, 0.0) + DISPATCH_S for s in PRE_AND_POST)
    slot_s = (
        fixed_s + polls * (m.step_s.get("waiting", 0.0) + DISPATCH_S) + transfer_s + extra * m.deid_s_per_gib
    )
    slots_busy = lam / 60.0 * slot_s
    waiting_runs = lam * (job_s + poll_lag) / 60.0
    w = m.waiting
    # bench/waiting.py measures a waiting run's cost per minute at the poll rate it ran with; per
    # look at the job (the recovery sweep's share included) it carries over to any poll policy.
    measured_polls = w.get("status_gets_per_min", 0.0) or 1.0
    looks_per_s = lam / 60.0 * polls  # every run's looks, spread over its wait
    cores = (
        lam / 60.0 * (m.cpu_s_per_run + extra * m.cpu_s_per_gib)
        + looks_per_s * w.get("cpu_s_per_min", 0.0) / measured_polls
    )
    pods_for = {
        "availability": 2,
        "slots": math.ceil(slots_busy / (lab.slots_per_pod * UTILISATION)),
        "cpu": math.ceil(cores / (lab.pod_cores * UTILISATION)),
        "waiting runs": math.ceil(waiting_runs / WAITING_PER_POD),
    }
    pods = max(pods_for.values())
    in_flight = lam / 60.0 * (slot_s + job_s + poll_lag)
    workdir_slides = w.get("workdir_slides", 1.0)
    failed_kept = lab.failed_fraction * lab.slides_per_day * lab.staged_retention_hours / 24.0
    # Every slot at its peak (a download and its de-identified rewrite), plus what a waiting run keeps
    # (bench/waiting.py: nothing, since the files go once Strand holds the upload).
    disk_slots = 2 * lab.slots_per_pod * lab.slide_gib
    disk_waiting = waiting_runs / pods * workdir_slides * lab.slide_gib
    disk_failed = failed_kept / pods * lab.slide_gib
    day = 86400.0
    kept = m.redis_kept or [(m.redis_bytes_per_run, None)]
    # Little's law per kind of key: runs a day x its bytes x the days it lives.
    days = [lab.retention_days if life is None else min(life / day, lab.retention_days) for _, life in kept]
    redis_kept = sum(lab.slides_per_day * size * d for (size, _), d in zip(kept, days, strict=True))
    # A waiting run's keys beyond what a finished run leaves (its scheduled step; bench/waiting.py).
    per_finished_run = sum(size for size, _ in kept)
    redis_bytes = redis_kept + waiting_runs * max(0.0, w.get("redis_bytes", 0.0) - per_finished_run)
    return {
        "runs_per_min": lam,
        "strand_jobs_running": lam * lab.job_minutes,
        "strand_cap_needed": math.ceil(lam * lab.job_minutes / UTILISATION),
        "slot_seconds_per_run": slot_s,
        "slots_busy": slots_busy,
        "cores": cores,
        "waiting_runs": waiting_runs,
        "pods_for": pods_for,
        "pods": pods,
        "runs_in_flight": in_flight,
        "disk_gib_per_pod": disk_slots + disk_waiting + disk_failed,
        "disk_gib_slots": disk_slots,
        "disk_gib_waiting": disk_waiting,
        "disk_gib_failed_kept": disk_failed,
        "redis_gib": redis_bytes / 2**30,
        "redis_commands_per_s": lam / 60.0 * m.redis_commands_per_run
        + looks_per_s * w.get("redis_commands_per_min", 0.0) / measured_polls,
        "worker_memory_for_waiting_mib": waiting_runs / pods * w.get("rss_bytes", 0.0) / 2**20,
        "ingress_mibs": lam / 60.0 * mib,
        "egress_mibs": lam / 60.0 * mib,
        "strand_requests_per_min": lam * (m.strand_calls_per_run + polls),
        "status_gets_per_min": lam * polls,
        "polls_per_run": polls,
    }


def print_plan(lab: LabInputs, result: dict[str, Any]) -> None:
    print(f"lab: {lab}")
    rows = [
        ("runs per minute (working day)", f"{result['runs_per_min']:.2f}"),
        ("Strand jobs running at once", f"{result['strand_jobs_running']:.1f}"),
        ("Strand cap to ask for (70 % busy)", f"{result['strand_cap_needed']}"),
        ("slot-seconds per run", f"{result['slot_seconds_per_run']:.1f} s"),
        ("slots busy", f"{result['slots_busy']:.2f}"),
        ("worker cores busy", f"{result['cores']:.2f}"),
        ("runs waiting on Strand", f"{result['waiting_runs']:.0f}"),
        (
            "worker pods",
            f"{result['pods']} (for " + ", ".join(f"{k}: {v}" for k, v in result["pods_for"].items()) + ")",
        ),
        ("runs in flight", f"{result['runs_in_flight']:.0f}"),
        (
            "work-dir disk per pod",
            f"{result['disk_gib_per_pod']:.0f} GiB (slots at their peak {result['disk_gib_slots']:.0f}, "
            f"waiting runs {result['disk_gib_waiting']:.0f}, "
            f"failed runs' copies kept {result['disk_gib_failed_kept']:.0f})",
        ),
        ("worker memory for waiting runs per pod", f"{result['worker_memory_for_waiting_mib']:.0f} MiB"),
        ("Redis memory", f"{result['redis_gib']:.2f} GiB"),
        ("Redis commands per second", f"{result['redis_commands_per_s']:.0f}"),
        ("from Sectra / to Strand", f"{result['ingress_mibs']:.1f} / {result['egress_mibs']:.1f} MiB/s"),
        ("Strand requests per minute", f"{result['strand_requests_per_min']:.0f}"),
        (
            "  of which status polls",
            f"{result['status_gets_per_min']:.0f} ({result['polls_per_run']} per run)",
        ),
    ]
    for name, value in rows:
        print(f"  {name:<42} {value}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--soak", type=Path, required=True)
    parser.add_argument("--waiting", type=Path)
    parser.add_argument("--slides-per-day", type=float, required=True)
    parser.add_argument("--hours", type=float, default=10.0)
    parser.add_argument("--slide-gib", type=float, required=True)
    parser.add_argument("--job-minutes", type=float, required=True)
    parser.add_argument("--slots-per-pod", type=int, default=4)
    parser.add_argument("--pod-cores", type=float, default=1.0)
    parser.add_argument("--link-in-mibs", type=float, default=math.inf)
    parser.add_argument("--link-out-mibs", type=float, default=math.inf)
    parser.add_argument("--own-down-mibs", type=float, default=math.inf)
    parser.add_argument("--own-up-mibs", type=float, default=math.inf)
    parser.add_argument("--cpu-s-per-gib", type=float, default=0.0)
    parser.add_argument("--deid-s-per-gib", type=float, default=0.0)
    parser.add_argument("--policy", choices=("current", "improved"), default="improved")
    parser.add_argument("--retention-days", type=float, default=30.0, help="BRIDGE_RUN_RETENTION_DAYS")
    parser.add_argument(
        "--staged-retention-hours", type=float, default=24.0, help="BRIDGE_STAGED_RETENTION_HOURS"
    )
    args = parser.parse_args()
    measured = Measured.load(
        args.soak,
        args.waiting,
        own_down_mibs=args.own_down_mibs,
        own_up_mibs=args.own_up_mibs,
        cpu_s_per_gib=args.cpu_s_per_gib,
        deid_s_per_gib=args.deid_s_per_gib,
    )
    lab = LabInputs(
        slides_per_day=args.slides_per_day,
        hours=args.hours,
        slide_gib=args.slide_gib,
        job_minutes=args.job_minutes,
        slots_per_pod=args.slots_per_pod,
        pod_cores=args.pod_cores,
        link_in_mibs=args.link_in_mibs,
        link_out_mibs=args.link_out_mibs,
        retention_days=args.retention_days,
        staged_retention_hours=args.staged_retention_hours,
        policy=args.policy,
    )
    print_plan(lab, plan(lab, measured))


if __name__ == "__main__":
    main()
