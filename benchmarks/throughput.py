"""How fast worker processes drain a queue of enqueued workflows.

For each backend (PostgreSQL, a SQLite file), each workload and each number of worker
processes, on a fresh database:

1. **enqueue**: one producer enqueues every workflow, one ``await runtime.enqueue(...)`` at a
   time, timed (the enqueue rate);
2. **drain**: ``--processes`` worker processes, each running :func:`durable.worker.serve` with
   ``--concurrency`` executions at a time, are started and wait (imports done, backend started);
   then they are all told to go, and the clock runs until the last workflow finishes (the latest
   ``completed_at`` in the database; the queue is also polled every 20 ms to know when to stop).

Workloads: ``--workflows`` (2,000) workflows of three no-op steps, and ``--trivial`` (10,000)
workflows of one no-op step. Reported: workflows/s and steps/s over the drain, the same over
the "active" window (first ``started_at`` to last ``completed_at``: without the workers'
start-up), each worker's share and CPU time, and the speed-up of 2 and 4 processes over 1. Every
workflow must have succeeded (the one target).

    python benchmarks/throughput.py [--backend sqlite|postgres|all] [--workflows 2000]
        [--trivial 10000] [--processes 1,2,4] [--concurrency 16] [--json out.json] [--quick]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib as bl
import workerlib as wl

WORKLOADS = {
    "three-step": (wl.PIPELINE, 3),
    "trivial": (wl.TRIVIAL, 1),
}


async def run_once(
    db: wl.Database,
    workload: str,
    count: int,
    *,
    processes: int,
    concurrency: int,
    poll_interval: float,
    pool_size: int | None,
) -> dict[str, Any]:
    name, steps = WORKLOADS[workload]
    async with wl.producer(db) as runtime:
        enqueue = await wl.enqueue_many(runtime, name, count)
    with wl.WorkerProcesses(
        db,
        processes,
        concurrency=concurrency,
        poll_interval=poll_interval,
        pool_size=pool_size,
    ) as workers:
        workers.start()
        go = workers.go()
        seen_done = await wl.wait_until(
            lambda: db.scalar("SELECT count(*) FROM durable_tasks") == 0,
            timeout=max(600.0, count / 2),
            what=f"{count} {workload} workflows",
        )
        reports = workers.stop()
    statuses = db.status_counts()
    times = db.workflow_times()
    first, last = times["first_started"], times["last_completed"]
    assert first is not None and last is not None
    drain, active = last - go, last - first
    cpu = sum(r["cpu_seconds"] for r in reports)
    return {
        "workload": workload,
        "workflows": count,
        "steps_per_workflow": steps,
        "processes": processes,
        "concurrency": concurrency,
        "enqueue": enqueue,
        "drain_seconds": round(drain, 4),
        "workflows_per_second": round(count / drain, 1),
        "steps_per_second": round(count * steps / drain, 1),
        "active_seconds": round(active, 4),
        "active_workflows_per_second": round(count / active, 1),
        "startup_seconds": round(first - go, 4),
        "poll_detected_seconds": round(seen_done - go, 4),
        "statuses": statuses,
        "not_succeeded": count - statuses.get("succeeded", 0),
        "per_worker_completed": [r["completed"] for r in reports],
        "worker_cpu_seconds": [r["cpu_seconds"] for r in reports],
        "worker_cpu_ms_per_workflow": round(cpu / count * 1000, 3),
        "worker_max_rss_mb": [round(r["max_rss_bytes"] / 2**20, 1) for r in reports],
    }


async def bench_backend(kind: str, args: argparse.Namespace, sqlite_dir: Path) -> dict[str, Any]:
    runs = []
    for workload, count in (("three-step", args.workflows), ("trivial", args.trivial)):
        if count <= 0:
            continue
        for processes in args.processes:
            db = wl.Database.fresh(kind, "throughput", pg_url=args.pg_url, sqlite_dir=sqlite_dir)
            bl.log(f"{kind}: {count} {workload} workflows, {processes} worker process(es)")
            try:
                run = await run_once(
                    db,
                    workload,
                    count,
                    processes=processes,
                    concurrency=args.concurrency,
                    poll_interval=args.poll_interval,
                    pool_size=args.pool_size,
                )
            finally:
                db.finish(keep=args.keep)
            bl.log(
                f"  enqueue {run['enqueue']['per_second']:,.0f}/s, drain "
                f"{run['workflows_per_second']:,.0f} workflows/s"
            )
            runs.append(run)
    return {"runs": runs, "scaling": scaling(runs)}


def scaling(runs: Sequence[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per workload: workflows/s with N processes over workflows/s with the fewest."""
    out: dict[str, dict[str, float]] = {}
    for workload in WORKLOADS:
        mine = sorted((r for r in runs if r["workload"] == workload), key=lambda r: r["processes"])
        if not mine:
            continue
        base = mine[0]["workflows_per_second"]
        out[workload] = {
            str(r["processes"]): bl.ratio(r["workflows_per_second"], base) for r in mine
        }
    return out


def evaluate(results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    targets = []
    for backend, result in results.items():
        failed = sum(r["not_succeeded"] for r in result["runs"])
        targets.append(
            bl.target("workflows not succeeded = 0", failed, 0, "workflows", backend=backend)
        )
    return targets


def report(document: dict[str, Any]) -> None:
    rows = []
    for backend, result in document["results"].items():
        for r in result["runs"]:
            rows.append(
                (
                    backend,
                    r["workload"],
                    r["processes"],
                    r["workflows"],
                    r["enqueue"]["per_second"],
                    r["workflows_per_second"],
                    r["steps_per_second"],
                    r["active_workflows_per_second"],
                    f"{bl.ratio(r['workflows_per_second'], _base(result, r)):.2f}x",
                    r["worker_cpu_ms_per_workflow"],
                    "/".join(str(n) for n in r["per_worker_completed"]),
                )
            )
    config = document["config"]
    bl.print_table(
        f"Queue drain: worker processes x {config['concurrency']} concurrent executions "
        "(rates per second; speed-up over the fewest processes)",
        [
            "backend",
            "workload",
            "procs",
            "workflows",
            "enqueue/s",
            "workflows/s",
            "steps/s",
            "active wf/s",
            "speed-up",
            "cpu ms/wf",
            "per worker",
        ],
        rows,
    )
    bl.print_targets(document["targets"])


def _base(result: dict[str, Any], run: dict[str, Any]) -> float:
    mine = [r for r in result["runs"] if r["workload"] == run["workload"]]
    return float(min(mine, key=lambda r: r["processes"])["workflows_per_second"])


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = bl.parser(__doc__)
    parser.add_argument("--workflows", type=int, help="three-step workflows (2000)")
    parser.add_argument("--trivial", type=int, help="one-step workflows (10000; 0 skips)")
    parser.add_argument("--processes", help="worker process counts, comma-separated (1,2,4)")
    parser.add_argument("--concurrency", type=int, help="executions at a time per worker (16)")
    parser.add_argument(
        "--pool-size",
        type=int,
        help="workers' PostgreSQL pool size (default durable's: 20 + 10 overflow)",
    )
    parser.add_argument(
        "--poll-interval", type=float, default=1.0, help="workers' poll interval (1.0, serve's)"
    )
    bl.add_run_options(parser, keep_help="keep the last databases")
    args = parser.parse_args(argv)
    quick = args.quick
    if args.workflows is None:
        args.workflows = 30 if quick else 2000
    if args.trivial is None:
        args.trivial = 30 if quick else 10_000
    if args.concurrency is None:
        args.concurrency = 4 if quick else 16
    args.processes = [int(p) for p in (args.processes or ("1,2" if quick else "1,2,4")).split(",")]
    if args.workflows < 1 or args.trivial < 0 or args.concurrency < 1:
        parser.error("--workflows and --concurrency must be positive")
    if not args.processes or min(args.processes) < 1:
        parser.error("--processes must be positive integers")
    return args


async def run(args: argparse.Namespace) -> dict[str, Any]:
    return await wl.run_per_backend(
        args,
        "throughput",
        {
            "workflows": args.workflows,
            "trivial": args.trivial,
            "processes": args.processes,
            "concurrency": args.concurrency,
            "pool_size": args.pool_size,
            "poll_interval": args.poll_interval,
        },
        bench_backend,
        evaluate,
    )


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print its tables, write the JSON file; return the results."""
    return bl.main(argv, parse_args, run, report)


if __name__ == "__main__":
    main()
