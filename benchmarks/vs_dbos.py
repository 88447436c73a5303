"""durable next to DBOS Transact, on the same database server and the same machine, in one run.

Two workloads, per backend (PostgreSQL; a SQLite file):

* **per-step overhead**: a workflow of ``--steps`` (500) no-op steps, timed inside its body
  (from before the first step to after the last) and divided by the number of steps; ``async
  def`` steps in an ``async def`` workflow, and plain ``def`` ones. durable runs in this process
  (``runtime.run``); DBOS in a child process (``DBOS.launch()``, ``@DBOS.workflow``,
  ``@DBOS.step``, listening to no queue). The runs alternate (durable async, DBOS async, durable
  sync, DBOS sync) for ``--warmup`` + ``--repeat`` rounds; medians of the measured ones.
* **queued-workflow throughput**: ``--workflows`` (2,000) three-step workflows enqueued one
  after the other by a producer, then drained by one worker process running ``--concurrency``
  (16) at a time, timed from "go" to the last completion. durable: ``runtime.enqueue`` and
  :func:`durable.worker.serve` (as ``throughput.py`` does). DBOS: ``queue.enqueue`` on a queue
  registered with ``worker_concurrency`` = ``--concurrency`` and each ``--dbos-polling``
  interval (1.0 s is DBOS's default; a DBOS worker dequeues at most once per interval), and a
  process that launches DBOS listening to that queue.

durable's tables go in the schema ``durable_bench_vs_dbos`` of ``--pg-url``'s database; DBOS's
system database is a separate database, ``<that database>_dbos``, created and dropped by the
run. On SQLite, each gets its own file.

Targets: DBOS's per-step time at least 5x durable's (both shapes), and durable's queued
throughput at least 10x DBOS's (at DBOS's default polling interval; other intervals are shown
as context).

    python benchmarks/vs_dbos.py [--backend sqlite|postgres|all] [--steps 500] [--repeat 3]
        [--workflows 2000] [--dbos-polling 1.0,0.1] [--json out.json] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib as bl
import psycopg
import throughput
import workerlib as wl
from psycopg import sql
from sqlalchemy.engine import make_url

import durable

STEP_RATIO_TARGET = 5.0
THROUGHPUT_RATIO_TARGET = 10.0
DBOS_DEFAULT_POLLING = 1.0
DBOS_CHILD = wl.child_command("dbosprog")


def dbos_version() -> str | None:
    from importlib import metadata

    try:
        return metadata.version("dbos")
    except metadata.PackageNotFoundError:
        return None


# -- DBOS's databases --------------------------------------------------------------------------


class DBOSDatabase:
    """DBOS's system database: a separate PostgreSQL database, or a SQLite file."""

    def __init__(self, kind: str, *, pg_url: str, sqlite_dir: Path, label: str) -> None:
        self.kind = kind
        if kind == "postgres":
            parsed = make_url(pg_url)
            self.name = f"{parsed.database}_dbos"
            self.url = parsed.set(drivername="postgresql", database=self.name).render_as_string(
                hide_password=False
            )
            self.admin = bl.pg_conninfo(parsed.set(database="postgres").render_as_string(False))
            self.table = "dbos.workflow_status"
        else:
            self.path = sqlite_dir / f"dbos-{label}.db"
            self.url = f"sqlite:///{self.path}"
            self.table = "workflow_status"

    _conn: Any = None

    def reset(self) -> None:
        self.close()
        if self.kind == "postgres":
            with psycopg.connect(self.admin, autocommit=True) as conn:
                name = sql.Identifier(self.name)
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(name))
                conn.execute(sql.SQL("CREATE DATABASE {}").format(name))
        else:
            bl.remove_sqlite(self.path)

    def finish(self, *, keep: bool) -> None:
        self.close()
        if not keep:
            self.drop()

    def drop(self) -> None:
        self.close()
        if self.kind == "postgres":
            with psycopg.connect(self.admin, autocommit=True) as conn:
                name = sql.Identifier(self.name)
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(name))
        else:
            bl.remove_sqlite(self.path)

    @contextmanager
    def sql(self) -> Iterator[Any]:
        """A connection kept open for polling."""
        if self._conn is None:
            if self.kind == "postgres":
                self._conn = psycopg.connect(self.url, autocommit=True)
            else:
                self._conn = sqlite3.connect(self.path, isolation_level=None, timeout=30)
        try:
            yield self._conn
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def queue_counts(self) -> dict[str, int]:
        with self.sql() as conn:
            rows = conn.execute(
                f"SELECT status, count(*) FROM {self.table} WHERE queue_name = 'bench' "
                "GROUP BY status"
            ).fetchall()
        return {str(status): int(n) for status, n in rows}

    def times(self) -> dict[str, float | None]:
        """First start and last completion of the queued workflows (epoch seconds)."""
        with self.sql() as conn:
            row = conn.execute(
                "SELECT min(started_at_epoch_ms), max(coalesce(completed_at, updated_at)) "
                f"FROM {self.table} WHERE queue_name = 'bench' AND status = 'SUCCESS'"
            ).fetchone()
        first, last = row if row else (None, None)
        return {
            "first_started": first / 1000 if first is not None else None,
            "last_completed": last / 1000 if last is not None else None,
        }


def dbos_run(args: Sequence[str], *, timeout: float = 600.0) -> dict[str, Any]:
    """Run a dbosprog command to its end; the JSON it printed last."""
    done = subprocess.run(
        [*DBOS_CHILD, *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"dbosprog {args[0]} failed ({done.returncode}):\n{done.stderr}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def spawn(args: Sequence[str]) -> subprocess.Popen[str]:
    """Start a dbosprog command, talking to it through its stdin and stdout."""
    return subprocess.Popen(
        [*DBOS_CHILD, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )


class DBOSAgent:
    """A DBOS process that runs step-overhead workflows on request."""

    def __init__(self, url: str) -> None:
        self.proc = spawn(["agent", "--url", url])
        wl.expect_line(self.proc, "ready", timeout=120)

    def run(self, shape: str, steps: int) -> dict[str, float]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"{shape} {steps}\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the DBOS agent exited with {self.proc.wait()}")
        return dict(json.loads(line))

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.write("quit\n")
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        wl.close_pipes(self.proc)


# -- per-step overhead -------------------------------------------------------------------------


async def durable_steps(runtime: durable.Runtime, shape: str, steps: int) -> dict[str, float]:
    name = wl.OVERHEAD_ASYNC if shape == "async" else wl.OVERHEAD_SYNC
    started = time.perf_counter()
    wall, cpu = await runtime.run(name, steps)
    return {"wall": wall, "cpu": cpu, "whole": time.perf_counter() - started}


async def overhead(kind: str, args: argparse.Namespace, sqlite_dir: Path) -> dict[str, Any]:
    db = wl.Database.fresh(kind, "vs_dbos", pg_url=args.pg_url, sqlite_dir=sqlite_dir)
    dbos_db = DBOSDatabase(kind, pg_url=args.pg_url, sqlite_dir=sqlite_dir, label="overhead")
    dbos_db.reset()
    samples: dict[str, dict[str, list[dict[str, float]]]] = {
        "durable": {"async": [], "sync": []},
        "dbos": {"async": [], "sync": []},
    }
    agent = DBOSAgent(dbos_db.url)
    try:
        runtime = durable.Runtime(
            db.connect(), registry=wl.REGISTRY, recover=False, executor_id="bench-vs-dbos"
        )
        async with runtime:
            for round_ in range(args.warmup + args.repeat):
                measured = round_ >= args.warmup
                for shape in ("async", "sync"):
                    mine = await durable_steps(runtime, shape, args.steps)
                    theirs = await asyncio.to_thread(agent.run, shape, args.steps)
                    if measured:
                        samples["durable"][shape].append(mine)
                        samples["dbos"][shape].append(theirs)
                bl.log(f"  {kind} overhead round {round_ + 1}/{args.warmup + args.repeat} done")
    finally:
        agent.close()
        db.finish(keep=args.keep)
        dbos_db.finish(keep=args.keep)
    result: dict[str, Any] = {}
    for system, shapes in samples.items():
        for shape, runs in shapes.items():
            result[f"{system}_{shape}_step_us"] = bl.summary(
                [r["wall"] / args.steps * 1e6 for r in runs]
            )
            result[f"{system}_{shape}_step_cpu_us"] = bl.summary(
                [r["cpu"] / args.steps * 1e6 for r in runs]
            )
            result[f"{system}_{shape}_end_to_end_us"] = bl.summary(
                [r["whole"] / args.steps * 1e6 for r in runs]
            )
    for shape in ("async", "sync"):
        result[f"{shape}_ratio"] = bl.ratio(
            result[f"dbos_{shape}_step_us"]["median"], result[f"durable_{shape}_step_us"]["median"]
        )
    return result


# -- queued throughput -------------------------------------------------------------------------


async def dbos_throughput(
    kind: str, args: argparse.Namespace, sqlite_dir: Path, polling: float
) -> dict[str, Any]:
    dbos_db = DBOSDatabase(kind, pg_url=args.pg_url, sqlite_dir=sqlite_dir, label="throughput")
    dbos_db.reset()
    count = args.workflows
    common = ["--url", dbos_db.url, "--concurrency", str(args.concurrency)]
    try:
        enqueue = await asyncio.to_thread(
            dbos_run,
            ["enqueue", *common, "--count", str(count), "--polling", str(polling)],
        )
        proc = spawn(["work", *common])
        try:
            wl.expect_line(proc, "ready", timeout=120)
            assert proc.stdin is not None and proc.stdout is not None
            go = time.time()
            proc.stdin.write("go\n")
            proc.stdin.flush()
            seen_done = await wl.wait_until(
                lambda: (
                    sum(dbos_db.queue_counts().get(s, 0) for s in ("SUCCESS", "ERROR")) >= count
                ),
                interval=0.05,
                timeout=max(600.0, count / args.concurrency * polling * 3),
                what=f"{count} DBOS workflows",
            )
            proc.stdin.write("stop\n")
            proc.stdin.close()
            out = proc.stdout.read()
            wl.close_pipes(proc)
            proc.wait(timeout=120)
            worker = json.loads(out.strip().splitlines()[-1])
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            wl.close_pipes(proc)
        counts = dbos_db.queue_counts()
        times = dbos_db.times()
    finally:
        dbos_db.finish(keep=args.keep)
    last = times["last_completed"] or seen_done
    first = times["first_started"] or go
    drain, active = last - go, last - first
    return {
        "polling_interval": polling,
        "workflows": count,
        "enqueue": {
            "count": count,
            "seconds": enqueue["seconds"],
            "per_second": round(enqueue["per_second"], 1),
        },
        "drain_seconds": round(drain, 4),
        "workflows_per_second": round(count / drain, 2),
        "steps_per_second": round(count * 3 / drain, 2),
        "active_seconds": round(active, 4),
        "active_workflows_per_second": round(count / active, 2),
        "startup_seconds": round(first - go, 4),
        "poll_detected_seconds": round(seen_done - go, 4),
        "statuses": counts,
        "not_succeeded": count - counts.get("SUCCESS", 0),
        "worker_cpu_seconds": worker.get("cpu_seconds"),
    }


async def queued(kind: str, args: argparse.Namespace, sqlite_dir: Path) -> dict[str, Any]:
    db = wl.Database.fresh(kind, "vs_dbos", pg_url=args.pg_url, sqlite_dir=sqlite_dir)
    bl.log(f"{kind}: durable, {args.workflows} queued three-step workflows, one worker")
    try:
        mine = await throughput.run_once(
            db,
            "three-step",
            args.workflows,
            processes=1,
            concurrency=args.concurrency,
            poll_interval=1.0,
            pool_size=args.pool_size,
        )
    finally:
        db.finish(keep=args.keep)
    bl.log(f"  {mine['workflows_per_second']:,.1f} workflows/s")
    theirs = []
    for polling in args.dbos_polling:
        bl.log(f"{kind}: DBOS, the same, queue polling every {polling:g}s")
        r = await dbos_throughput(kind, args, sqlite_dir, polling)
        bl.log(f"  {r['workflows_per_second']:,.1f} workflows/s")
        r["ratio"] = bl.ratio(mine["active_workflows_per_second"], r["active_workflows_per_second"])
        r["drain_ratio"] = bl.ratio(mine["workflows_per_second"], r["workflows_per_second"])
        r["enqueue_ratio"] = bl.ratio(mine["enqueue"]["per_second"], r["enqueue"]["per_second"])
        theirs.append(r)
    return {"durable": mine, "dbos": theirs}


# -- the run -----------------------------------------------------------------------------------


async def bench_backend(kind: str, args: argparse.Namespace, sqlite_dir: Path) -> dict[str, Any]:
    result = {}
    if "overhead" in args.only:
        bl.log(f"{kind}: per-step overhead, {args.steps} steps")
        result["overhead"] = await overhead(kind, args, sqlite_dir)
    if "throughput" in args.only:
        result["throughput"] = await queued(kind, args, sqlite_dir)
    return result


def evaluate(results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    targets = []
    for backend, r in results.items():
        for shape in ("async", "sync") if "overhead" in r else ():
            targets.append(
                wl.at_least(
                    f"DBOS step / durable step >= {STEP_RATIO_TARGET:g}x ({shape})",
                    r["overhead"][f"{shape}_ratio"],
                    STEP_RATIO_TARGET,
                    "x",
                    backend=backend,
                )
            )
        for dbos in r["throughput"]["dbos"] if "throughput" in r else ():
            default = dbos["polling_interval"] == DBOS_DEFAULT_POLLING
            t = wl.at_least(
                f"durable / DBOS queued workflows/s >= {THROUGHPUT_RATIO_TARGET:g}x "
                f"(DBOS polling {dbos['polling_interval']:g}s"
                + (", its default)" if default else ")"),
                dbos["ratio"],
                THROUGHPUT_RATIO_TARGET,
                "x",
                backend=backend,
            )
            t["headline"] = default
            targets.append(t)
    return targets


def report(document: dict[str, Any]) -> None:
    rows = []
    for backend, r in document["results"].items():
        if "overhead" not in r:
            continue
        o = r["overhead"]
        for shape in ("async", "sync"):
            rows.append(
                (
                    backend,
                    f"{shape} steps",
                    o[f"durable_{shape}_step_us"]["median"],
                    o[f"durable_{shape}_step_cpu_us"]["median"],
                    o[f"dbos_{shape}_step_us"]["median"],
                    o[f"dbos_{shape}_step_cpu_us"]["median"],
                    f"{o[f'{shape}_ratio']:.1f}x",
                )
            )
    config = document["config"]
    if rows:
        bl.print_table(
            f"Per-step time, {config['steps']} no-op steps, median of {config['repeat']} runs "
            "(microseconds; cpu = CPU time of the process running the workflow)",
            ["backend", "case", "durable", "durable cpu", "DBOS", "DBOS cpu", "DBOS/durable"],
            rows,
        )
    rows = []
    for backend, r in document["results"].items():
        if "throughput" not in r:
            continue
        mine = r["throughput"]["durable"]
        rows.append(
            (
                backend,
                "durable",
                mine["enqueue"]["per_second"],
                mine["workflows_per_second"],
                mine["active_workflows_per_second"],
                mine["active_workflows_per_second"] * 3,
                None,
            )
        )
        for dbos in r["throughput"]["dbos"]:
            rows.append(
                (
                    backend,
                    f"DBOS, polling {dbos['polling_interval']:g}s",
                    dbos["enqueue"]["per_second"],
                    dbos["workflows_per_second"],
                    dbos["active_workflows_per_second"],
                    dbos["active_workflows_per_second"] * 3,
                    f"{dbos['ratio']:.1f}x",
                )
            )
    if rows:
        bl.print_table(
            f"Queued throughput: {config['workflows']} three-step workflows, one worker process "
            f"x {config['concurrency']} (per second; 'active' = first start to last completion, "
            "without start-up; the ratio is of active rates)",
            [
                "backend",
                "system",
                "enqueue/s",
                "wf/s from go",
                "active wf/s",
                "active steps/s",
                "durable/DBOS",
            ],
            rows,
        )
    bl.print_targets(document["targets"])


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = bl.parser(__doc__)
    parser.add_argument("--steps", type=int, help="steps per overhead workflow (500)")
    parser.add_argument("--repeat", type=int, help="measured overhead rounds (3)")
    parser.add_argument("--warmup", type=int, help="discarded first rounds (1)")
    parser.add_argument("--workflows", type=int, help="queued three-step workflows (2000)")
    parser.add_argument("--concurrency", type=int, help="worker concurrency, both systems (16)")
    parser.add_argument("--dbos-polling", help="DBOS queue polling intervals, s (1.0,0.1)")
    parser.add_argument(
        "--pool-size",
        type=int,
        help="durable worker's PostgreSQL pool size (default durable's: 20 + 10 overflow)",
    )
    parser.add_argument(
        "--only", choices=["overhead", "throughput"], help="run one of the two workloads"
    )
    bl.add_run_options(parser)
    args = parser.parse_args(argv)
    args.only = [args.only] if args.only else ["overhead", "throughput"]
    quick = args.quick
    if args.steps is None:
        args.steps = 5 if quick else 500
    if args.repeat is None:
        args.repeat = 1 if quick else 3
    if args.warmup is None:
        args.warmup = 0 if quick else 1
    if args.workflows is None:
        args.workflows = 10 if quick else 2000
    if args.concurrency is None:
        args.concurrency = 4 if quick else 16
    polls = args.dbos_polling or ("1.0" if quick else "1.0,0.1")
    args.dbos_polling = [float(p) for p in polls.split(",")]
    if min(args.steps, args.repeat, args.workflows, args.concurrency) < 1 or args.warmup < 0:
        parser.error("sizes must be positive")
    return args


async def run(args: argparse.Namespace) -> dict[str, Any]:
    if dbos_version() is None:
        raise SystemExit("vs_dbos needs DBOS Transact: pip install -e '.[bench]' (or dbos)")
    return await wl.run_per_backend(
        args,
        "vs_dbos",
        {
            "steps": args.steps,
            "repeat": args.repeat,
            "warmup": args.warmup,
            "workflows": args.workflows,
            "concurrency": args.concurrency,
            "dbos_polling": args.dbos_polling,
            "pool_size": args.pool_size,
            "only": args.only,
        },
        bench_backend,
        evaluate,
        machine={"dbos": dbos_version()},
    )


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print its tables, write the JSON file; return the results."""
    return bl.main(argv, parse_args, run, report)


if __name__ == "__main__":
    main()
