"""Many processes claiming from one task table: claims per second, and proof that no task was
claimed twice and none was missed.

On a fresh database, ``--tasks`` (10,000) workflows are created, each with its task, through the
backend API (``backend.create_workflow(snapshot, task=TaskSpec(...))``). Then ``--processes``
(8) processes, started and connected beforehand and released together, each loop on
``backend.claim_available_tasks(worker_id, --batch (50), ttl)`` until two claims in a row come
back empty, and report every task they got. Two rounds on the same tasks:

* **claim**: claims only (a long lease, so nothing expires): the claim statement alone (one
  ``UPDATE ... FOR UPDATE SKIP LOCKED`` on PostgreSQL; one ``BEGIN IMMEDIATE`` write
  transaction on SQLite);
* **claim + complete**: after every lease is released with one SQL ``UPDATE``, the same, but
  each claimed task is completed (``backend.complete_task``, one transaction each), as a worker
  does when it finishes.

Checks, per round: the claims add up to exactly the tasks created, with no task twice (from
what the processes report) and, in the database, every task claimed exactly once (``attempts``
= 1 and a holder set, for "claim"; the table empty, for "claim + complete").

    python benchmarks/contention.py [--backend sqlite|postgres|all] [--tasks 10000]
        [--processes 8] [--batch 50] [--json out.json] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib as bl
import workerlib as wl

import durable

TASK_NAME = "bench.contention.task"
CHILD = wl.child_command("contention")


async def create_tasks(db: wl.Database, count: int) -> tuple[list[str], dict[str, Any]]:
    """``count`` workflows with their tasks, through the backend API; their ids, and timing."""
    backend = db.connect(pool_size=8)
    ids = [f"contention-{i:06d}-{uuid.uuid4().hex[:8]}" for i in range(count)]
    await backend.start()
    try:
        gate = asyncio.Semaphore(8 if db.kind == "postgres" else 1)

        async def create(workflow_id: str) -> None:
            async with gate:
                await backend.create_workflow(
                    durable.WorkflowSnapshot(id=workflow_id, name=TASK_NAME, input={}),
                    task=durable.TaskSpec(instance_id=workflow_id, name=TASK_NAME),
                )

        started = time.perf_counter()
        await asyncio.gather(*(create(i) for i in ids))
        seconds = time.perf_counter() - started
    finally:
        await backend.close()
    return ids, {"count": count, "seconds": round(seconds, 3), "per_second": round(count / seconds)}


def run_round(
    db: wl.Database,
    created: list[str],
    *,
    processes: int,
    batch: int,
    complete: bool,
) -> dict[str, Any]:
    procs: list[subprocess.Popen[str]] = []
    try:
        for i in range(processes):
            args = [*db.child_args(), "--worker-id", f"claimer-{i}", "--batch", str(batch)]
            if complete:
                args.append("--complete")
            procs.append(
                subprocess.Popen(
                    [*CHILD, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
                )
            )
        for proc in procs:
            wl.expect_line(proc, "ready", timeout=60)
        go = time.time()
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.close()
        reports = []
        for proc in procs:
            assert proc.stdout is not None
            out = proc.stdout.read()
            wl.close_pipes(proc)
            if proc.wait(timeout=600) != 0:
                raise RuntimeError(f"claimer {proc.pid} exited with {proc.returncode}")
            reports.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            wl.close_pipes(proc)
    claimed = [i for r in reports for i in r["claimed"]]
    counts = Counter(claimed)
    wanted = set(created)
    twice = sum(1 for n in counts.values() if n > 1)
    missed = len(wanted - counts.keys())
    unknown = len(counts.keys() - wanted)
    end = max(r["end"] for r in reports)
    seconds = end - go
    if complete:
        db_left = int(db.scalar("SELECT count(*) FROM durable_tasks"))
        db_check = {"tasks_left": db_left, "ok": db_left == 0}
    else:
        unclaimed = int(db.scalar("SELECT count(*) FROM durable_tasks WHERE claimed_by IS NULL"))
        not_once = int(db.scalar("SELECT count(*) FROM durable_tasks WHERE attempts <> 1"))
        db_check = {
            "unclaimed": unclaimed,
            "attempts_not_1": not_once,
            "ok": unclaimed == 0 and not_once == 0,
        }
    latencies = [v for r in reports for v in r["claim_ms"]]
    return {
        "mode": "claim + complete" if complete else "claim",
        "tasks": len(created),
        "processes": processes,
        "batch": batch,
        "claims": len(claimed),
        "claimed_twice": twice,
        "missed": missed,
        "unknown": unknown,
        "database": db_check,
        "seconds": round(seconds, 4),
        "claims_per_second": round(len(claimed) / seconds, 1),
        "claim_calls": sum(r["calls"] for r in reports),
        "empty_claims": sum(r["empty"] for r in reports),
        "errors": sum(r["errors"] for r in reports),
        "claim_call_ms": wl.distribution(latencies),
        "per_process_claims": [len(r["claimed"]) for r in reports],
        "per_process_cpu_seconds": [r["cpu_seconds"] for r in reports],
    }


async def bench_backend(kind: str, args: argparse.Namespace, sqlite_dir: Path) -> dict[str, Any]:
    db = wl.Database.fresh(kind, "contention", pg_url=args.pg_url, sqlite_dir=sqlite_dir)
    try:
        bl.log(f"{kind}: creating {args.tasks} workflows with their tasks")
        created, creation = await create_tasks(db, args.tasks)
        rounds = []
        for complete in (False, True):
            if complete:  # the same tasks again: release every lease
                with db.sql() as conn:
                    conn.execute(
                        "UPDATE durable_tasks SET claimed_by = NULL, "
                        "claim_expires_at = NULL, attempts = 0"
                    )
            bl.log(
                f"{kind}: {args.processes} processes claiming {args.tasks} tasks"
                + (" and completing them" if complete else "")
            )
            r = run_round(
                db, created, processes=args.processes, batch=args.batch, complete=complete
            )
            bl.log(
                f"  {r['claims_per_second']:,.0f} claims/s, {r['claimed_twice']} twice, "
                f"{r['missed']} missed"
            )
            rounds.append(r)
    finally:
        db.finish(keep=args.keep)
    return {"creation": creation, "rounds": rounds}


def evaluate(results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    targets = []
    for backend, result in results.items():
        for r in result["rounds"]:
            mode = r["mode"]
            wrong = r["claimed_twice"] + r["unknown"] + (0 if r["database"]["ok"] else 1)
            targets.append(
                bl.target(f"tasks claimed twice = 0 ({mode})", wrong, 0, "tasks", backend=backend)
            )
            targets.append(
                bl.target(f"tasks missed = 0 ({mode})", r["missed"], 0, "tasks", backend=backend)
            )
    return targets


def report(document: dict[str, Any]) -> None:
    rows = []
    for backend, result in document["results"].items():
        for r in result["rounds"]:
            rows.append(
                (
                    backend,
                    r["mode"],
                    r["processes"],
                    r["claims"],
                    r["claims_per_second"],
                    r["claim_call_ms"]["p50"],
                    r["claim_call_ms"]["p99"],
                    r["claimed_twice"],
                    r["missed"],
                    "ok" if r["database"]["ok"] else "WRONG",
                    f"{min(r['per_process_claims'])}..{max(r['per_process_claims'])}",
                )
            )
    config = document["config"]
    bl.print_table(
        f"Claim contention: {config['processes']} processes, batches of {config['batch']} "
        "(claim call in milliseconds)",
        [
            "backend",
            "round",
            "procs",
            "claims",
            "claims/s",
            "call p50",
            "call p99",
            "twice",
            "missed",
            "database",
            "per process",
        ],
        rows,
    )
    bl.print_targets(document["targets"])


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = bl.parser(__doc__)
    parser.add_argument("--tasks", type=int, help="tasks to claim (10000)")
    parser.add_argument("--processes", type=int, help="claiming processes (8)")
    parser.add_argument("--batch", type=int, help="tasks per claim (50)")
    bl.add_run_options(parser)
    args = parser.parse_args(argv)
    quick = args.quick
    if args.tasks is None:
        args.tasks = 200 if quick else 10_000
    if args.processes is None:
        args.processes = 3 if quick else 8
    if args.batch is None:
        args.batch = 10 if quick else 50
    if min(args.tasks, args.processes, args.batch) < 1:
        parser.error("--tasks, --processes and --batch must be positive")
    return args


async def run(args: argparse.Namespace) -> dict[str, Any]:
    return await wl.run_per_backend(
        args,
        "contention",
        {
            "tasks": args.tasks,
            "processes": args.processes,
            "batch": args.batch,
        },
        bench_backend,
        evaluate,
    )


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print its tables, write the JSON file; return the results."""
    return bl.main(argv, parse_args, run, report)


# -- the claiming process ----------------------------------------------------------------------


async def _claim(args: argparse.Namespace) -> dict[str, Any]:
    db = wl.child_database(args.url, args.schema)
    backend = db.connect()
    await backend.start()
    ttl = timedelta(seconds=args.ttl)
    claimed: list[str] = []
    claim_ms: list[float] = []
    calls = empty = errors = 0
    print("ready", flush=True)
    if (await asyncio.to_thread(sys.stdin.readline)).strip() != "go":
        await backend.close()
        return {"claimed": [], "aborted": True}
    start, cpu = time.time(), time.process_time()
    empty_in_a_row = 0
    try:
        while empty_in_a_row < 2:
            before = time.perf_counter()
            try:
                claims = await backend.claim_available_tasks(
                    args.worker_id, args.batch, ttl, include_own=False
                )
            except durable.DurableError as exc:  # e.g. SQLite's busy timeout: try again
                errors += 1
                print(f"claimer {args.worker_id}: {exc}", file=sys.stderr)
                continue
            finally:
                calls += 1
            claim_ms.append((time.perf_counter() - before) * 1000)
            if not claims:
                empty += 1
                empty_in_a_row += 1
                await asyncio.sleep(0.005)
                continue
            empty_in_a_row = 0
            for claim in claims:
                claimed.append(claim.instance_id)
                if args.complete:
                    await backend.complete_task(claim.instance_id, claim.task_id, args.worker_id)
        end = time.time()
    finally:
        await backend.close()
    return {
        "claimed": claimed,
        "calls": calls,
        "empty": empty,
        "errors": errors,
        "claim_ms": [round(v, 3) for v in claim_ms],
        "start": start,
        "end": end,
        "cpu_seconds": round(time.process_time() - cpu, 4),
    }


def child_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="contention claimer")
    parser.add_argument("--url", required=True)
    parser.add_argument("--schema")
    parser.add_argument("--worker-id", required=True)
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--ttl", type=float, default=3600.0)
    parser.add_argument("--complete", action="store_true")
    args = parser.parse_args(argv)
    print(json.dumps(asyncio.run(_claim(args))), flush=True)
    return 0


if __name__ == "__main__":
    main()
