"""A discrete-event simulation of the bridge's pipeline, fed by the soak bench's measured step times,
that checks docs/capacity.md's model: first against the soak bench itself (same batch, same
machine: the simulated rate must land near the measured one), then at 10x the measured rate, where
the model's pod count, Strand cap, waiting runs and request rates are compared with the simulation's.

    .venv/bin/python bench/soak.py --scenario clean --json /tmp/soak.json
    .venv/bin/python bench/capacity_sim.py --soak /tmp/soak.json [--scale 10] [--policy current|improved]

What is simulated is what workers/pipeline.py and workers/stages/*.py do, step by step: every
stage is one Celery step that takes a worker slot for its measured in-step time (the workers'
`bridge_stage_duration_seconds` mean, which on this machine already includes CPU contention) plus
the broker hand-off; slots are taken first come, first served. A submit beyond Strand's cap is
answered 429 + Retry-After, and the run's step is retried:

- `current`: as the pipeline does today: a failed step, `attempts + 1`, backoff U(0.5, 1) x 2^attempts
  s with Retry-After as a floor, failed after `max_attempts`; each retry re-reads the upload's jobs
  (`GET /samples/{id}`) and re-estimates before the POST;
- `improved`: a 429 is no failure: the step comes back after Retry-After (x U(1, 1.5)), uncounted,
  and neither the estimate nor the look for an earlier job is repeated (the 429 proves none was made).

Waiting polls once right after the submit, then as `workers.stages.follow.next_poll_delay` says
(`current`: max(2, min(30, age / 20)) s; `improved`: min(30, max(2, min(age, 15), age / 20)) s,
so 0, 2, 4, 8, 16 s and then the 15 s SSE heartbeat, 30 s for jobs older than 10 minutes).
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import random
import statistics
import sys
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from capacity_model import DISPATCH_S, LabInputs, Measured, next_poll_delay, plan

PRE_SUBMIT = ("downloading", "deidentifying", "uploading", "submitting")
POST_WAIT = ("summarising", "publishing")
ORDER = (*PRE_SUBMIT, "waiting", *POST_WAIT)


@dataclass
class Params:
    workers: int
    slots: int  # per worker
    cap: int  # Strand's running jobs per organisation
    job_s: float
    step_s: dict[str, float]  # in-step seconds per stage ("waiting" = one poll)
    dispatch_s: float = DISPATCH_S  # broker hand-off before a step starts
    retry_after: float = 2.0
    max_attempts: int = 5
    policy: str = "current"
    seed: int = 1


@dataclass
class Run:
    arrived: float
    stage: int = 0  # index into PRE_SUBMIT, then "waiting", then POST_WAIT
    attempts: int = 0
    intent_at: float | None = None
    job_end: float | None = None
    done: float | None = None
    failed: bool = False


@dataclass
class Outcome:
    """Totals over the whole simulation, and means over the measuring window (steady state)."""

    runs: int
    first_arrival: float
    window: tuple[float, float]
    completed: int = 0
    failed: int = 0
    makespan: float = 0.0
    calls: Counter[str] = field(default_factory=Counter)  # all of them
    window_calls: Counter[str] = field(default_factory=Counter)
    window_completed: int = 0
    # Integrals over the window of: slots busy, runs in `waiting`, runs in flight (created, not final).
    busy_s: float = 0.0
    waiting_s: float = 0.0
    in_flight_s: float = 0.0
    latencies: list[float] = field(default_factory=list)  # arrival to completion, per completed run

    @property
    def runs_per_min(self) -> float:
        return self.completed / (self.makespan - self.first_arrival) * 60.0

    def mean(self, integral: float) -> float:
        return integral / (self.window[1] - self.window[0])

    def per_min(self, count: float) -> float:
        return count * 60.0 / (self.window[1] - self.window[0])


def simulate(p: Params, arrivals: list[float], window: tuple[float, float] | None = None) -> Outcome:
    """Run every arrival to its end; the clock is seconds, ready steps take free slots in FIFO order.

    Means and `window_*` counts cover `window` (default: first arrival to the last completion).
    """
    rng = random.Random(p.seed)
    runs = [Run(t) for t in arrivals]
    events: list[tuple[float, int, str, int]] = []  # (time, seq, kind, run index)
    seq = 0

    def push(t: float, kind: str, i: int) -> None:
        nonlocal seq
        heapq.heappush(events, (t, seq, kind, i))
        seq += 1

    for i, run in enumerate(runs):
        push(run.arrived, "arrive", i)
    slots = p.workers * p.slots
    free = slots
    queue: deque[int] = deque()
    jobs_end: list[float] = []  # heap of running jobs' end times
    out = Outcome(len(runs), min(arrivals), window or (min(arrivals), math.inf))
    in_waiting = in_flight = 0
    last_t = out.first_arrival

    def start(i: int, now: float) -> None:
        nonlocal free
        free -= 1
        push(now + p.step_s[ORDER[runs[i].stage]] + p.dispatch_s, "done", i)

    def call(name: str, now: float) -> None:
        out.calls[name] += 1
        if out.window[0] <= now < out.window[1]:
            out.window_calls[name] += 1

    def finish(run: Run, now: float, *, failed: bool) -> None:
        nonlocal in_flight
        in_flight -= 1
        run.done, run.failed = now, failed
        if failed:
            out.failed += 1
            return
        out.completed += 1
        out.latencies.append(now - run.arrived)
        if out.window[0] <= now < out.window[1]:
            out.window_completed += 1

    while events:
        now, _, kind, i = heapq.heappop(events)
        overlap = max(0.0, min(now, out.window[1]) - max(last_t, out.window[0]))
        out.busy_s += (slots - free) * overlap
        out.waiting_s += in_waiting * overlap
        out.in_flight_s += in_flight * overlap
        last_t = now
        run = runs[i]
        if kind in ("arrive", "ready"):
            in_flight += kind == "arrive"
            if free > 0:
                start(i, now)
            else:
                queue.append(i)
            continue
        free += 1  # a step ended; its slot goes to the longest-queued ready step
        if queue:
            start(queue.popleft(), now)
        stage = ORDER[run.stage]
        if stage == "submitting":
            while jobs_end and jobs_end[0] <= now:
                heapq.heappop(jobs_end)
            if run.intent_at is not None and p.policy == "current":
                call("GET /samples/{id}", now)  # a 429 proved nothing was made; `current` looks anyway
            if run.intent_at is None or p.policy == "current":
                call("POST /predict/estimate", now)
            call("POST /predict", now)
            run.intent_at = now  # submit.run records its intent before every POST
            if len(jobs_end) >= p.cap:
                call("429", now)
                if p.policy == "current":
                    run.attempts += 1
                    if run.attempts >= p.max_attempts:
                        finish(run, now, failed=True)
                        continue
                    delay = max(rng.uniform(0.5, 1.0) * 2 ** min(run.attempts, 8), p.retry_after)
                else:
                    delay = p.retry_after * rng.uniform(1.0, 1.5)
                push(now + delay, "ready", i)
                continue
            run.job_end = now + p.job_s
            heapq.heappush(jobs_end, run.job_end)
            run.stage += 1
            in_waiting += 1
            push(now, "ready", i)  # the pipeline looks at the new job at once
            continue
        if stage == "waiting":
            call("GET /jobs/{id}", now)
            assert run.job_end is not None and run.intent_at is not None
            if now < run.job_end:
                delay = next_poll_delay(p.policy, now - run.intent_at)
                push(now + delay, "ready", i)
                continue
            in_waiting -= 1
        if stage == "publishing":
            finish(run, now, failed=False)
            continue
        run.stage += 1
        push(now, "ready", i)
    out.makespan = max(r.done or 0.0 for r in runs)
    if math.isinf(out.window[1]):
        out.window = (out.window[0], out.makespan)
        # the integrals were taken up to the last event, which is the makespan
    return out


# ---- the checks ---------------------------------------------------------------------------------------


def params_from_soak(path: Path, policy: str) -> tuple[Params, dict[str, Any]]:
    data = json.loads(path.read_text())
    args, clean = data["args"], data["clean"]
    step_s = {stage: total / count for stage, (total, count) in clean["step_seconds"].items() if count}
    params = Params(
        workers=args["workers"],
        slots=args["concurrency"],
        cap=args["cap"],
        job_s=args["job_seconds"],
        step_s=step_s,
        policy=policy,
    )
    return params, clean


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--soak", type=Path, required=True, help="bench/soak.py --json output")
    parser.add_argument("--policy", choices=("current", "improved"), default="current")
    parser.add_argument(
        "--scale", type=float, default=10.0, help="the paper check's rate, x the measured one"
    )
    parser.add_argument("--hours", type=float, default=2.0, help="simulated time of the paper check")
    parser.add_argument("--job-minutes", type=float, default=None, help="the paper check's Strand job time")
    args = parser.parse_args()
    params, clean = params_from_soak(args.soak, args.policy)

    print("1. The soak batch again, simulated (same workers, slots, cap, job time, measured step times),")
    print("   30 seeds (the retry jitter is random, so is the measured figure):")
    batches = [
        simulate(Params(**{**params.__dict__, "seed": seed}), [0.0] * clean["runs"]) for seed in range(30)
    ]
    rates = sorted(b.runs_per_min for b in batches)
    measured = clean["runs_per_min"]
    print(
        f"   simulated runs/min p10 {rates[2]:.1f}, median {statistics.median(rates):.1f}, "
        f"p90 {rates[-3]:.1f} (failed runs in all seeds: {sum(b.failed for b in batches)}); "
        f"measured {measured:.1f} = {measured / statistics.median(rates):.2f} x the simulated median"
    )
    per_run_429 = statistics.median(b.calls["429"] / b.runs for b in batches)
    print(
        f"   429s per run: simulated median {per_run_429:.2f}, "
        f"measured {clean['strand_429'] / clean['runs']:.2f}"
    )

    rate = measured * args.scale
    job_s = args.job_minutes * 60 if args.job_minutes else params.job_s
    m = Measured.load(args.soak, None)
    lab = LabInputs(
        slides_per_day=rate * 60 * 24,  # around the clock: the rate is the working rate
        hours=24,
        slide_gib=m.slide_gib,
        job_minutes=job_s / 60,
        slots_per_pod=params.slots,
        policy=args.policy,
    )
    predicted = plan(lab, m)
    paper = Params(
        **{
            **params.__dict__,
            "job_s": job_s,
            "workers": predicted["pods_for"]["slots"],
            "cap": predicted["strand_cap_needed"],
        }
    )
    rng = random.Random(7)
    horizon = args.hours * 3600
    arrivals, t = [], 0.0
    while t < horizon:
        t += rng.expovariate(rate / 60.0)
        arrivals.append(t)
    warm = min(horizon / 4, 10 * (predicted["runs_in_flight"] / (rate / 60.0)))  # a few latencies
    sim = simulate(paper, arrivals, window=(warm, horizon))
    print(
        f"\n2. On paper at {args.scale:g}x the measured rate: {rate:.0f} runs/min, Poisson arrivals for "
        f"{args.hours:g} h, Strand jobs of {job_s:g} s, policy {args.policy}; simulated means over "
        f"{warm / 60:.0f}-{horizon / 60:.0f} min (steady state)"
    )
    rows = [
        ("worker pods (x slots)", f"{paper.workers} x {paper.slots}", f"{paper.workers} x {paper.slots}"),
        ("Strand cap", f"{paper.cap}", f"{paper.cap}"),
        ("throughput, runs/min", f"{rate:.0f}", f"{sim.per_min(sim.window_completed):.0f}"),
        ("slots busy (mean)", f"{predicted['slots_busy']:.1f}", f"{sim.mean(sim.busy_s):.1f}"),
        (
            "runs waiting on Strand (mean)",
            f"{predicted['waiting_runs']:.1f}",
            f"{sim.mean(sim.waiting_s):.1f}",
        ),
        (
            "runs in flight",
            f"{predicted['runs_in_flight']:.1f}",
            f"{sim.mean(sim.in_flight_s):.1f}",
        ),
        (
            "status GETs per min",
            f"{predicted['status_gets_per_min']:.0f}",
            f"{sim.per_min(sim.window_calls['GET /jobs/{id}']):.0f}",
        ),
        ("429s per run", "0 (cap sized)", f"{sim.calls['429'] / max(1, sim.runs):.3f}"),
        ("failed runs", "0", f"{sim.failed}"),
    ]
    print(f"   {'figure':<30} {'model':>12} {'simulated':>12}")
    for name, a, b in rows:
        print(f"   {name:<30} {a:>12} {b:>12}")
    if sim.latencies:
        print(f"   run latency (arrival to published) p50 {statistics.median(sim.latencies):.1f} s")


if __name__ == "__main__":
    main()
