"""Enqueue-to-start latency: how long an idle worker takes to start a workflow just enqueued.

A producer enqueues a probe workflow, one at a time; the probe's first step returns
``time.time()``. Latency is that time minus the time just before the ``enqueue`` call (the
producer and the workers share the machine's clock). The producer waits for each probe to finish
and pauses 10 to 30 ms, so that the worker is idle, waiting for work, when the next one arrives
(plus a random part as long as the poll interval when the worker polls, so that probes land at
random points of its cycle).
Also reported: the same measured from when ``enqueue`` returned (its commit done), the
``enqueue`` call itself, and the two parts of the rest, split at the moment the worker called
``begin_execution`` (the workflow's ``started_at``, from the worker's clock): commit to begin
(the wake-up and the claim) and begin to the first step.

Cases, per backend:

* **another process**: one worker process running :func:`durable.worker.serve`. PostgreSQL
  wakes it with LISTEN/NOTIFY; SQLite cannot signal another process, so the worker finds work
  by polling, every ``--poll-intervals`` seconds (1.0, serve's default, and 0.1): expect about
  half the interval, which is why the target does not apply to it; nor can MySQL/MariaDB
  (``--backend mysql``, not part of ``all``), whose other-process case polls the same way;
* **same process**: the worker runs in the producer's runtime (``runtime.start_worker``) and is
  woken in-process by the commit that created the work.

Target: p50 below 25 ms on every wake-up path (LISTEN/NOTIFY, in-process).

    python benchmarks/latency.py [--backend sqlite|postgres|mysql|all] [--samples 200]
        [--poll-samples 40] [--json out.json] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib as bl
import workerlib as wl

import durable

TARGET_P50_MS = 25.0


async def sample(
    runtime: durable.Runtime, count: int, warmup: int, *, poll_interval: float | None = None
) -> dict[str, Any]:
    """Enqueue ``warmup + count`` probes one at a time; distributions of the last ``count``.

    With a polling worker (``poll_interval``), each pause also gets a random part as long as
    the interval: a probe enqueued right after the previous one finished would otherwise
    always arrive just after a poll and wait for nearly the whole interval."""
    from_call, from_commit, enqueue, to_begin, begin_to_step = [], [], [], [], []
    for i in range(warmup + count):
        before = time.time()
        workflow_id = await runtime.enqueue(wl.PROBE)
        after = time.time()
        started = await runtime.result(workflow_id, timeout=30)
        # when the worker called begin_execution (its clock, just before that transaction)
        info = await runtime.get_workflow(workflow_id)
        assert info.started_at is not None
        begun = info.started_at.timestamp()
        if i >= warmup:
            from_call.append((started - before) * 1000)
            from_commit.append((started - after) * 1000)
            enqueue.append((after - before) * 1000)
            to_begin.append((begun - after) * 1000)
            begin_to_step.append((started - begun) * 1000)
        pause = random.uniform(0.01, 0.03)
        if poll_interval is not None:
            pause += random.uniform(0, poll_interval)
        await asyncio.sleep(pause)
    return {
        "from_call_ms": wl.distribution(from_call),
        "from_commit_ms": wl.distribution(from_commit),
        "enqueue_ms": wl.distribution(enqueue),
        "commit_to_begin_ms": wl.distribution(to_begin),
        "begin_to_step_ms": wl.distribution(begin_to_step),
        "samples_ms": [round(v, 3) for v in from_call],
    }


async def other_process(
    db: wl.Database,
    *,
    samples: int,
    warmup: int,
    poll_interval: float,
    polling: bool,
    concurrency: int,
) -> dict[str, Any]:
    async with wl.producer(db) as runtime:
        with wl.WorkerProcesses(
            db, 1, concurrency=concurrency, poll_interval=poll_interval
        ) as workers:
            workers.start()
            workers.go()
            await asyncio.sleep(0.5)  # let it start serving
            result = await sample(
                runtime, samples, warmup, poll_interval=poll_interval if polling else None
            )
            workers.stop()
    return result


async def same_process(
    db: wl.Database, *, samples: int, warmup: int, concurrency: int
) -> dict[str, Any]:
    async with wl.producer(db) as runtime:
        worker = await runtime.start_worker(concurrency=concurrency, poll_interval=1.0)
        try:
            return await sample(runtime, samples, warmup)
        finally:
            await worker.stop()


async def bench_backend(kind: str, args: argparse.Namespace, sqlite_dir: Path) -> dict[str, Any]:
    cases: list[dict[str, Any]] = []
    plans: list[tuple[str, str, float | None]] = []
    if kind == "postgres":
        plans.append(("another process", "LISTEN/NOTIFY", 1.0))
    else:
        plans += [("another process", "polling", p) for p in args.poll_intervals]
    plans.append(("same process", "in-process wake-up", None))
    for where, path, poll in plans:
        db = wl.Database.fresh(
            kind, "latency", pg_url=args.pg_url, sqlite_dir=sqlite_dir, mysql_url=args.mysql_url
        )
        polling = path == "polling"
        count = min(args.samples, args.poll_samples) if polling else args.samples
        label = f"{where}, {path}" + (f" every {poll:g}s" if polling else "")
        bl.log(f"{kind}: {label}: {count} probes")
        try:
            if poll is not None:
                result = await other_process(
                    db,
                    samples=count,
                    warmup=args.warmup,
                    poll_interval=poll,
                    polling=polling,
                    concurrency=args.concurrency,
                )
            else:
                result = await same_process(
                    db, samples=count, warmup=args.warmup, concurrency=args.concurrency
                )
        finally:
            db.finish(keep=args.keep)
        bl.log(
            f"  p50 {result['from_call_ms']['p50']:.1f} ms, "
            f"p99 {result['from_call_ms']['p99']:.1f} ms"
        )
        cases.append(
            {
                "case": label,
                "where": where,
                "path": path,
                "poll_interval": poll,
                "target_applies": not polling,
                **result,
            }
        )
    return {"cases": cases}


def evaluate(results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    targets = []
    for backend, result in results.items():
        for case in result["cases"]:
            if case["target_applies"]:
                targets.append(
                    bl.target(
                        f"p50 < {TARGET_P50_MS:g} ms ({case['case']})",
                        case["from_call_ms"]["p50"],
                        TARGET_P50_MS,
                        "ms",
                        backend=backend,
                    )
                )
    return targets


def report(document: dict[str, Any]) -> None:
    rows = []
    for backend, result in document["results"].items():
        for c in result["cases"]:
            d, commit = c["from_call_ms"], c["from_commit_ms"]
            rows.append(
                (
                    backend,
                    c["case"],
                    d["n"],
                    d["p50"],
                    d["p90"],
                    d["p99"],
                    d["max"],
                    commit["p50"],
                    c["enqueue_ms"]["p50"],
                    c["commit_to_begin_ms"]["p50"],
                    c["begin_to_step_ms"]["p50"],
                )
            )
    bl.print_table(
        "Enqueue-to-start latency with an idle worker (milliseconds, from before the enqueue "
        "call to the first step)",
        [
            "backend",
            "case",
            "n",
            "p50",
            "p90",
            "p99",
            "max",
            "p50 after commit",
            "enqueue p50",
            "commit->begin p50",
            "begin->step p50",
        ],
        rows,
    )
    bl.print_targets(document["targets"])


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = bl.parser(__doc__)
    parser.add_argument("--samples", type=int, help="probes per case (200)")
    parser.add_argument("--poll-samples", type=int, help="probes per polling case (40)")
    parser.add_argument("--warmup", type=int, help="discarded first probes (5)")
    parser.add_argument("--poll-intervals", help="SQLite worker poll intervals, seconds (1.0,0.1)")
    parser.add_argument("--concurrency", type=int, default=16, help="worker concurrency (16)")
    bl.add_run_options(parser)
    bl.add_mysql_backend(parser)
    args = parser.parse_args(argv)
    quick = args.quick
    if args.samples is None:
        args.samples = 10 if quick else 200
    if args.poll_samples is None:
        args.poll_samples = 4 if quick else 40
    if args.warmup is None:
        args.warmup = 1 if quick else 5
    default_polls = "0.1" if quick else "1.0,0.1"
    args.poll_intervals = [float(p) for p in (args.poll_intervals or default_polls).split(",")]
    if args.samples < 1 or args.poll_samples < 1 or args.warmup < 0:
        parser.error("--samples and --poll-samples must be positive, --warmup not negative")
    return args


async def run(args: argparse.Namespace) -> dict[str, Any]:
    return await wl.run_per_backend(
        args,
        "latency",
        {
            "samples": args.samples,
            "poll_samples": args.poll_samples,
            "warmup": args.warmup,
            "poll_intervals": args.poll_intervals,
            "concurrency": args.concurrency,
        },
        bench_backend,
        evaluate,
    )


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print its tables, write the JSON file; return the results."""
    return bl.main(argv, parse_args, run, report)


if __name__ == "__main__":
    main()
