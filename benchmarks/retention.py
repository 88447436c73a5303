"""Retention beside a worker: how much deleting N finished executions slows a worker draining a
queue.

On a fresh database (PostgreSQL, or a SQLite file) holding ``--old`` (100,000) executions that
finished 40 days ago (two steps each):

1. **baseline**: ``--jobs`` (2,000) one-step workflows are enqueued, then one worker (an
   in-process runtime, ``--concurrency`` 16) drains them; the drain is timed;
2. **with deletion**: as many are enqueued again, then ``durable gc URL --older-than 30d
   --batch B --pause P`` starts in a process of its own; once it deletes, the worker starts and the
   drain is timed again; the gc's own run too (seconds from its start, rows/s).

Both are repeated ``--rounds`` (3) times, alternated (the old executions stored again before
each round), and the medians reported: a machine shared with other work is noisy.

Reported: the worker's throughput (workflows/s) with and without the deletion and the slowdown
(target: below 20%), and whether the gc was still deleting when the drain ended (if it was not,
the run measured less than a whole drain under deletion: raise ``--old``).

    python benchmarks/retention.py [--backend sqlite|postgres|all] [--old 100000]
        [--jobs 2000] [--batch 1000] [--pause 0] [--concurrency 16] [--rounds 3]
        [--json out.json] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib as bl
import psycopg
import sqlalchemy as sa
from sqlalchemy.engine import make_url

import durable
from durable.backends.sql.schema import steps, workflows

PG_DATABASE = "durable_bench_retention"
registry = durable.Registry()


@durable.workflow(name="bench.retention.job", registry=registry)
async def job(n: int) -> int:
    return await bump(n)


@durable.step(name="bench.retention.bump")
async def bump(n: int) -> int:
    return n + 1


def fill(url: str, count: int) -> None:
    """Insert ``count`` executions that finished 40 days ago, two steps each (bulk inserts)."""
    engine = sa.create_engine(url)
    at = datetime.now(UTC) - timedelta(days=40)
    chunk = 5000
    with engine.begin() as conn:
        for start in range(0, count, chunk):
            ids = [f"old-{i}" for i in range(start, min(count, start + chunk))]
            conn.execute(
                workflows.insert(),
                [
                    {
                        "id": i,
                        "name": "bench.retention.old",
                        "status": "succeeded",
                        "input": '{"args": [], "kwargs": {}}',
                        "output": "1",
                        "queue": "default",
                        "priority": 0,
                        "attempts": 1,
                        "version": 3,
                        "created_at": at,
                        "updated_at": at,
                        "started_at": at,
                        "completed_at": at,
                    }
                    for i in ids
                ],
            )
            conn.execute(
                steps.insert(),
                [
                    {
                        "workflow_id": i,
                        "position": p,
                        "name": "s",
                        "status": "succeeded",
                        "output": "1",
                        "attempts": 1,
                        "started_at": at,
                        "completed_at": at,
                    }
                    for i in ids
                    for p in (0, 1)
                ],
            )
    with engine.begin() as conn:  # as autovacuum would after a bulk load: fresh statistics
        conn.execute(sa.text("ANALYZE"))
    engine.dispose()


async def drain(
    url: str, jobs: int, concurrency: int, gc: list[str] | None, old: int
) -> dict[str, Any]:
    """Enqueue ``jobs``; if ``gc`` is given, start it and wait until it deletes (its start-up
    is not measured); then start one worker and time the drain."""
    async with durable.Runtime(durable.connect(url), registry=registry) as rt:
        await rt.client.enqueue_many(job, [(i,) for i in range(jobs)])
        process = None
        if gc is not None:
            gc_started = time.perf_counter()
            process = await asyncio.create_subprocess_exec(
                *gc, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
            )
            while True:
                if await rt.client.count_finished(timedelta(days=30)) < old:
                    break
                await asyncio.sleep(0.02)
        started = time.perf_counter()
        worker = await rt.start_worker(concurrency=concurrency, poll_interval=0.2)
        while True:
            if not (await rt.client.list_workflows(status=["pending", "running"], limit=1)).items:
                break
            await asyncio.sleep(0.05)
        seconds = time.perf_counter() - started
        await worker.stop()
        result: dict[str, Any] = {"jobs": jobs, "seconds": seconds, "rate": jobs / seconds}
        if process is not None:
            result["gc_running_at_end"] = process.returncode is None
            out, _ = await process.communicate()
            result["gc_seconds"] = time.perf_counter() - gc_started
            result["gc_output"] = out.decode().strip()
        return result


async def run_backend(backend: str, url: str, args: argparse.Namespace) -> dict[str, Any]:
    gc = [
        sys.executable,
        "-c",
        "from durable.cli import main; main()",
        "gc",
        url,
        "--older-than",
        "30d",
        "--batch",
        str(args.batch),
        "--pause",
        str(args.pause),
    ]
    baselines, loaded = [], []
    for round_ in range(args.rounds):  # alternated, so that a noisy machine hits both alike
        bl.log(f"{backend} round {round_ + 1}: storing {args.old} finished executions")
        fill(url, args.old)
        bl.log(f"{backend} round {round_ + 1}: baseline drain of {args.jobs}")
        baselines.append(await drain(url, args.jobs, args.concurrency, None, args.old))
        bl.log(f"{backend} round {round_ + 1}: drain while durable gc deletes {args.old}")
        loaded.append(await drain(url, args.jobs, args.concurrency, gc, args.old))
    alone = statistics.median(r["rate"] for r in baselines)
    with_gc = statistics.median(r["rate"] for r in loaded)
    return {
        "old": args.old,
        "batch": args.batch,
        "pause": args.pause,
        "rounds": args.rounds,
        "baseline": baselines,
        "with_deletion": loaded,
        "rate_alone": alone,
        "rate_with_deletion": with_gc,
        "slowdown": 1 - with_gc / alone,
        "gc_rows_per_second": statistics.median(args.old / r["gc_seconds"] for r in loaded),
        "gc_outlasted_drain": all(r["gc_running_at_end"] for r in loaded),
    }


def prepare_pg(url: str) -> str:
    parsed = make_url(url).set(database=PG_DATABASE)
    target = parsed.render_as_string(hide_password=False)
    bl.ensure_pg_database(target)
    with psycopg.connect(bl.pg_conninfo(target), autocommit=True) as conn:
        conn.execute("DROP SCHEMA IF EXISTS public CASCADE")
        conn.execute("CREATE SCHEMA public")
    return target


async def run(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {}
    targets = []
    backends = ["sqlite", "postgres"] if args.backend == "all" else [args.backend]
    for backend in backends:
        if backend == "postgres":
            url = prepare_pg(args.pg_url)
        else:
            directory = Path(args.sqlite_dir or tempfile.mkdtemp(prefix="durable-retention-"))
            path = directory / "retention.db"
            bl.remove_sqlite(path)
            url = bl.sqlite_url(path)
        async with durable.Client(url):  # creates the tables
            pass
        results[backend] = await run_backend(backend, url, args)
        targets.append(
            bl.target(
                "worker slowdown while deleting",
                max(0.0, results[backend]["slowdown"] * 100),
                20.0,
                "%",
                backend=backend,
            )
        )
        if backend == "sqlite" and not args.keep:
            bl.remove_sqlite(path)
    return {
        "benchmark": "retention",
        "machine": bl.machine_info(args.pg_url if "postgres" in backends else None),
        "results": results,
        "targets": targets,
    }


def report(document: dict[str, Any]) -> None:
    rows = []
    for backend, r in document["results"].items():
        rows.append(
            [
                backend,
                r["old"],
                f"{r['rate_alone']:.0f}",
                f"{r['rate_with_deletion']:.0f}",
                f"{r['slowdown'] * 100:.1f}%",
                f"{r['gc_rows_per_second']:.0f}",
                "yes" if r["gc_outlasted_drain"] else "no",
            ]
        )
    bl.print_table(
        "worker throughput with and without durable gc",
        ["backend", "deleted", "wf/s alone", "wf/s with gc", "slowdown", "gc rows/s",
         "gc outlasted drain"],
        rows,
    )  # fmt: skip
    bl.print_targets(document["targets"])


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = bl.parser(__doc__)
    p.add_argument("--old", type=int, default=100_000, help="finished executions to delete")
    p.add_argument("--jobs", type=int, default=2000, help="workflows the worker drains")
    p.add_argument("--batch", type=int, default=1000, help="durable gc --batch")
    p.add_argument("--pause", type=float, default=0.0, help="durable gc --pause (seconds)")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--rounds", type=int, default=3, help="alternated rounds (medians reported)")
    bl.add_run_options(p)
    args = p.parse_args(argv)
    if args.quick:
        args.old, args.jobs, args.rounds = min(args.old, 2000), min(args.jobs, 100), 1
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    return bl.main(argv, parse_args, run, report)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
