"""Does a long-running worker's memory stay flat?

On a fresh database, ``--workflows`` (50,000) one-step workflows are enqueued (8 calls at a
time), then one worker process (:func:`durable.worker.serve`, ``--concurrency`` 16) runs them
all. Every ``--sample-interval`` seconds (0.5) the worker's resident set size (RSS, from psutil)
is sampled together with how many workflows have finished. Reported: RSS at the first sample
with 10%, 50% and 100% of the workflows finished, the peak, and the growth from 10% to 100%
(the first 10% warm up caches: SQLAlchemy's compiled statements, psycopg's prepared
statements, the pool's connections). Target: growth below ``--flat-mb`` (10 MB): flat.

    python benchmarks/memory.py [--backend sqlite|postgres|all] [--workflows 50000]
        [--concurrency 16] [--json out.json] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib as bl
import psutil
import workerlib as wl

MB = 2**20
MARKS = (10, 50, 100)


async def bench_backend(kind: str, args: argparse.Namespace, sqlite_dir: Path) -> dict[str, Any]:
    db = wl.Database.fresh(kind, "memory", pg_url=args.pg_url, sqlite_dir=sqlite_dir)
    count = args.workflows
    try:
        bl.log(f"{kind}: enqueueing {count} one-step workflows")
        async with wl.producer(db, pool_size=8) as runtime:
            enqueue = await wl.enqueue_concurrently(runtime, wl.TRIVIAL, count, concurrency=8)
        bl.log(f"  {enqueue['per_second']:,.0f}/s; one worker runs them")
        samples: list[dict[str, Any]] = []
        with wl.WorkerProcesses(db, 1, concurrency=args.concurrency) as workers:
            workers.start()
            proc = psutil.Process(workers.pids[0])
            rss_ready = proc.memory_info().rss
            go = workers.go()
            deadline = time.monotonic() + max(600.0, count / 5)
            next_log = 10
            while True:
                left = int(db.scalar("SELECT count(*) FROM durable_tasks"))
                rss = proc.memory_info().rss
                done = count - left
                samples.append(
                    {"t": round(time.time() - go, 3), "done": done, "rss_mb": round(rss / MB, 2)}
                )
                if done * 100 >= next_log * count:
                    bl.log(f"  {done} done, RSS {rss / MB:.1f} MB")
                    next_log += 10
                if left == 0:
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{left} of {count} workflows still queued")
                await asyncio.sleep(args.sample_interval)
            reports = workers.stop()
        statuses = db.status_counts()
    finally:
        db.finish(keep=args.keep)
    marks = {}
    for mark in MARKS:
        first = next(s for s in samples if s["done"] * 100 >= mark * count)
        marks[str(mark)] = first
    growth = marks["100"]["rss_mb"] - marks["10"]["rss_mb"]
    return {
        "workflows": count,
        "concurrency": args.concurrency,
        "enqueue": enqueue,
        "rss_ready_mb": round(rss_ready / MB, 2),
        "rss_at_mb": {mark: s["rss_mb"] for mark, s in marks.items()},
        "done_at_mark": {mark: s["done"] for mark, s in marks.items()},
        "rss_peak_mb": max(s["rss_mb"] for s in samples),
        "growth_mb": round(growth, 2),
        "growth_per_1000_workflows_kb": round(
            growth * 1024 / max(1, marks["100"]["done"] - marks["10"]["done"]) * 1000, 2
        ),
        "seconds": samples[-1]["t"],
        "workflows_per_second": round(count / samples[-1]["t"], 1) if samples[-1]["t"] else None,
        "statuses": statuses,
        "not_succeeded": count - statuses.get("succeeded", 0),
        "worker": reports[0],
        "samples": samples,
    }


def evaluate(results: dict[str, dict[str, Any]], flat_mb: float) -> list[dict[str, Any]]:
    targets = []
    for backend, r in results.items():
        targets.append(
            bl.target(
                f"RSS growth 10% -> 100% <= {flat_mb:g} MB",
                r["growth_mb"],
                flat_mb,
                "MB",
                backend=backend,
            )
        )
        targets.append(
            bl.target(
                "workflows not succeeded = 0", r["not_succeeded"], 0, "workflows", backend=backend
            )
        )
    return targets


def report(document: dict[str, Any]) -> None:
    rows = []
    for backend, r in document["results"].items():
        at = r["rss_at_mb"]
        rows.append(
            (
                backend,
                r["workflows"],
                r["rss_ready_mb"],
                at["10"],
                at["50"],
                at["100"],
                r["rss_peak_mb"],
                r["growth_mb"],
                r["workflows_per_second"],
            )
        )
    bl.print_table(
        "Worker memory (RSS, MB) while it runs one-step workflows",
        ["backend", "workflows", "ready", "at 10%", "at 50%", "at 100%", "peak", "growth", "wf/s"],
        rows,
    )
    bl.print_targets(document["targets"])


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = bl.parser(__doc__)
    parser.add_argument("--workflows", type=int, help="one-step workflows (50000)")
    parser.add_argument("--concurrency", type=int, help="worker concurrency (16)")
    parser.add_argument("--sample-interval", type=float, help="seconds between samples (0.5)")
    parser.add_argument("--flat-mb", type=float, default=10.0, help="growth limit, MB (10)")
    bl.add_run_options(parser)
    args = parser.parse_args(argv)
    quick = args.quick
    if args.workflows is None:
        args.workflows = 100 if quick else 50_000
    if args.concurrency is None:
        args.concurrency = 4 if quick else 16
    if args.sample_interval is None:
        args.sample_interval = 0.05 if quick else 0.5
    if args.workflows < 10 or args.concurrency < 1 or args.sample_interval <= 0:
        parser.error("--workflows must be at least 10, --concurrency and the interval positive")
    return args


async def run(args: argparse.Namespace) -> dict[str, Any]:
    return await wl.run_per_backend(
        args,
        "memory",
        {
            "workflows": args.workflows,
            "concurrency": args.concurrency,
            "sample_interval": args.sample_interval,
            "flat_mb": args.flat_mb,
        },
        bench_backend,
        lambda results: evaluate(results, args.flat_mb),
    )


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print its tables, write the JSON file; return the results."""
    return bl.main(argv, parse_args, run, report)


if __name__ == "__main__":
    main()
