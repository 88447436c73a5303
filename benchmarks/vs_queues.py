"""durable next to the PostgreSQL job queues PgQueuer and procrastinate, on plain jobs.

Side by side in one run, on the same PostgreSQL server, one worker process each (PostgreSQL
only: PgQueuer and procrastinate have no SQLite):

1. **enqueue**: on a fresh database, ``--single`` jobs enqueued one call at a time (each
   awaited), then the remaining ``--jobs`` minus ``--single`` in one bulk call: durable's
   ``Client.enqueue`` / ``Client.enqueue_many``, PgQueuer's ``Queries.enqueue`` with one job /
   with lists, procrastinate's ``defer_async`` / ``batch_defer_async``. Rates per second.
2. **drain**: one worker process (``queueprog.py``) is started and made ready, told to go, and
   the clock runs until the parent sees the queue empty (polled every 20 ms): durable's task
   table, PgQueuer's queue table (a finished job leaves it), procrastinate's jobs in ``todo``
   or ``doing``. Each job does nothing: durable's is a one-step workflow (one no-op step),
   PgQueuer's an entrypoint, procrastinate's a task. Workers: durable's ``serve()`` with
   ``--concurrency`` (16); PgQueuer's ``run()`` at its default batch size (10) and at
   ``--pgqueuer-batch`` (100); procrastinate's ``run_worker_async(concurrency=--concurrency)``.
3. **latency**: an idle worker, then ``--samples`` probes one at a time (10 to 30 ms apart):
   the time from just before the enqueue call to the moment the job's code starts (the worker
   prints it), p50 and p99.

durable's tables go in the schema ``durable_bench_queues`` of ``--pg-url``'s database;
PgQueuer's and procrastinate's in databases of their own on the same server,
``<database>_pgqueuer`` and ``<database>_procrastinate`` (dropped and created for each run,
dropped at the end; installed with ``Queries.install()`` and
``schema_manager.apply_schema_async()``).

Targets (issue #11): durable's drain at least PgQueuer's at its default batch size, durable's
bulk enqueue at least PgQueuer's bulk enqueue, durable's enqueue-to-start p50 at most
PgQueuer's (default batch size). PgQueuer and procrastinate are optional (the ``bench`` extra);
a system that is not installed is left out, and its targets with it.

    python benchmarks/vs_queues.py [--jobs 10000] [--single 2000] [--samples 200]
        [--systems durable,pgqueuer,procrastinate] [--only drain|latency] [--json out.json]
        [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import random
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib as bl
import psycopg
import queueprog as qp
import workerlib as wl
from psycopg import sql
from sqlalchemy.engine import make_url

import durable

QUEUEPROG = wl.child_command("queueprog")
SYSTEMS = ("durable", "pgqueuer", "procrastinate")


def installed(system: str) -> bool:
    """Whether a system's package (and PgQueuer's asyncpg driver) can be imported."""
    needs = {"durable": [], "pgqueuer": ["pgqueuer", "asyncpg"], "procrastinate": ["procrastinate"]}
    return all(importlib.util.find_spec(name) is not None for name in needs[system])


class Store:
    """Where one system keeps its jobs: durable's schema, or a database of the others' own."""

    def __init__(self, system: str, pg_url: str) -> None:
        self.system = system
        self.pg_url = pg_url
        self.db: wl.Database | None = None
        parsed = make_url(pg_url)
        self.name = f"{parsed.database}_{system}"
        self.dsn = bl.pg_conninfo(parsed.set(database=self.name).render_as_string(False))
        self._admin = bl.pg_conninfo(parsed.set(database="postgres").render_as_string(False))
        self._conn: Any = None

    async def fresh(self) -> None:
        self.close()
        if self.system == "durable":
            self.db = wl.Database.fresh("postgres", "queues", pg_url=self.pg_url, sqlite_dir=Path())
            return
        self._recreate()
        if self.system == "pgqueuer":
            import asyncpg
            from pgqueuer.db import AsyncpgDriver
            from pgqueuer.queries import Queries

            conn = await asyncpg.connect(self.dsn)
            try:
                await Queries(AsyncpgDriver(conn)).install()
            finally:
                await conn.close()
        else:
            app = qp.procrastinate_app(self.dsn)
            async with app.open_async():
                await app.schema_manager.apply_schema_async()

    def _recreate(self, *, create: bool = True) -> None:
        name = sql.Identifier(self.name)
        with psycopg.connect(self._admin, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(name))
            if create:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(name))

    def worker_args(self) -> list[str]:
        if self.system == "durable":
            assert self.db is not None and self.db.schema is not None
            return ["--url", self.db.url, "--schema", self.db.schema]
        return ["--dsn", self.dsn]

    def pending(self) -> int:
        """Jobs not yet finished."""
        if self.system == "durable":
            assert self.db is not None
            return int(self.db.scalar("SELECT count(*) FROM durable_tasks"))
        query = {
            "pgqueuer": "SELECT count(*) FROM pgqueuer",
            "procrastinate": "SELECT count(*) FROM procrastinate_jobs "
            "WHERE status IN ('todo', 'doing')",
        }[self.system]
        if self._conn is None:
            self._conn = psycopg.connect(self.dsn, autocommit=True)
        return int(self._conn.execute(query).fetchone()[0])

    def succeeded(self) -> int | None:
        """Jobs recorded as succeeded (None: the system keeps no such record by default)."""
        if self.system == "durable":
            assert self.db is not None
            return self.db.status_counts().get("succeeded", 0)
        if self.system == "procrastinate":
            with psycopg.connect(self.dsn, autocommit=True) as conn:
                row = conn.execute(
                    "SELECT count(*) FROM procrastinate_jobs WHERE status = 'succeeded'"
                ).fetchone()
                return int(row[0])
        return None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self.db is not None:
            self.db.close()

    def drop(self, *, keep: bool) -> None:
        self.close()
        if keep:
            return
        if self.db is not None:
            self.db.drop()
        elif self.system != "durable":
            self._recreate(create=False)


class Producer:
    """Enqueues jobs into one system from this process: one at a time, in bulk, or a probe."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._client: durable.Client | None = None
        self._conn: Any = None
        self._queries: Any = None
        self._app: Any = None

    async def __aenter__(self) -> Producer:
        if self.store.system == "durable":
            assert self.store.db is not None
            self._client = durable.Client(self.store.db.connect())
            await self._client.__aenter__()
        elif self.store.system == "pgqueuer":
            import asyncpg
            from pgqueuer.db import AsyncpgDriver
            from pgqueuer.queries import Queries

            self._conn = await asyncpg.connect(self.store.dsn)
            self._queries = Queries(AsyncpgDriver(self._conn))
        else:
            self._app = qp.procrastinate_app(self.store.dsn)
            await self._app.open_async()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._client is not None:
            await self._client.__aexit__(None, None, None)
        if self._conn is not None:
            await self._conn.close()
        if self._app is not None:
            await self._app.close_async()

    async def one(self, i: int) -> None:
        if self._client is not None:
            await self._client.enqueue(qp.NOOP, i)
        elif self._queries is not None:
            await self._queries.enqueue("noop", None)
        else:
            await self._app.configure_task(name="noop").defer_async(i=i)

    async def bulk(self, start: int, count: int) -> None:
        if self._client is not None:
            await self._client.enqueue_many(qp.NOOP, [(i,) for i in range(start, start + count)])
        elif self._queries is not None:
            await self._queries.enqueue(["noop"] * count, [None] * count, [0] * count)
        else:
            task = self._app.configure_task(name="noop")
            await task.batch_defer_async(*({"i": i} for i in range(start, start + count)))

    async def probe(self, key: str) -> None:
        if self._client is not None:
            await self._client.enqueue(qp.PROBE, key)
        elif self._queries is not None:
            await self._queries.enqueue("probe", key.encode())
        else:
            await self._app.configure_task(name="probe").defer_async(key=key)


class Worker:
    """One ``queueprog.py work`` process."""

    def __init__(
        self, store: Store, *, concurrency: int, batch_size: int, print_starts: bool
    ) -> None:
        args = [
            "work",
            "--system",
            store.system,
            *store.worker_args(),
            "--concurrency",
            str(concurrency),
            "--batch-size",
            str(batch_size),
        ]
        if print_starts:
            args.append("--print-starts")
        self.proc = subprocess.Popen(
            [*QUEUEPROG, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        wl.expect_line(self.proc, "ready", timeout=120)

    def say(self, line: str) -> float:
        assert self.proc.stdin is not None
        now = time.time()
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return now

    def read_start(self, key: str, *, timeout: float = 30.0) -> float:
        """The time the job ``key`` started (its ``start`` line)."""
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"worker {self.proc.pid} exited")
            parts = line.split()
            if parts[:2] == ["start", key]:
                return float(parts[2])
        raise TimeoutError(f"probe {key} did not start in {timeout:g}s")

    def stop(self) -> dict[str, Any]:
        self.say("stop")
        assert self.proc.stdout is not None
        out = self.proc.stdout.read()
        self.proc.wait(timeout=60)
        wl.close_pipes(self.proc)
        if self.proc.returncode != 0:
            raise RuntimeError(f"worker {self.proc.pid} exited with {self.proc.returncode}")
        lines = [line for line in out.strip().splitlines() if line.startswith("{")]
        return dict(json.loads(lines[-1]))

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        wl.close_pipes(self.proc)
        self.proc.wait(timeout=10)


def configurations(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The worker configurations compared: (label, system, batch size)."""
    out = []
    for system in args.systems:
        if system == "pgqueuer":
            out.append({"label": "PgQueuer, batch 10 (default)", "system": system, "batch": 10})
            if args.pgqueuer_batch != 10:
                out.append(
                    {
                        "label": f"PgQueuer, batch {args.pgqueuer_batch}",
                        "system": system,
                        "batch": args.pgqueuer_batch,
                    }
                )
        else:
            label = {"durable": "durable (one-step workflow)", "procrastinate": "procrastinate"}
            out.append({"label": label[system], "system": system, "batch": 10})
    return out


async def drain_run(config: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    store = Store(config["system"], args.pg_url)
    await store.fresh()
    try:
        single = min(args.single, args.jobs)
        async with Producer(store) as producer:
            started = time.perf_counter()
            for i in range(single):
                await producer.one(i)
            single_seconds = time.perf_counter() - started
            bulk_count = args.jobs - single
            started = time.perf_counter()
            if bulk_count:
                await producer.bulk(single, bulk_count)
            bulk_seconds = time.perf_counter() - started
        worker = Worker(
            store, concurrency=args.concurrency, batch_size=config["batch"], print_starts=False
        )
        try:
            go = worker.say("go")
            seen_empty = await wl.wait_until(
                lambda: store.pending() == 0,
                timeout=max(600.0, args.jobs / 2),
                what=f"{args.jobs} {config['label']} jobs",
            )
            report = worker.stop()
        finally:
            worker.kill()
        succeeded = store.succeeded()
    finally:
        store.drop(keep=args.keep)
    drain = seen_empty - go
    first, last = report["first_start"], report["last_end"]
    active = (last - first) if first is not None and last is not None else None
    return {
        **config,
        "jobs": args.jobs,
        "enqueue_single": _rate(single, single_seconds),
        "enqueue_bulk": _rate(bulk_count, bulk_seconds),
        "drain_seconds": round(drain, 4),
        "drain_per_second": round(args.jobs / drain, 1),
        "active_per_second": round(args.jobs / active, 1) if active else None,
        "startup_seconds": round(first - go, 4) if first is not None else None,
        "completed": report["completed"],
        "succeeded": succeeded,
        "worker_cpu_ms_per_job": round(report["cpu_seconds"] / args.jobs * 1000, 3),
    }


def _rate(count: int, seconds: float) -> dict[str, Any]:
    per_second = round(count / seconds, 1) if count and seconds > 0 else None
    return {"count": count, "seconds": round(seconds, 4), "per_second": per_second}


async def latency_run(config: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    store = Store(config["system"], args.pg_url)
    await store.fresh()
    rng = random.Random(7)
    samples, calls = [], []
    try:
        async with Producer(store) as producer:
            worker = Worker(
                store, concurrency=args.concurrency, batch_size=config["batch"], print_starts=True
            )
            try:
                worker.say("go")
                await asyncio.sleep(0.5)  # the worker connects and listens
                for n in range(args.warmup + args.samples):
                    await asyncio.sleep(rng.uniform(0.01, 0.03))
                    key = f"p{n}"
                    before = time.time()
                    await producer.probe(key)
                    returned = time.time()
                    started = await asyncio.to_thread(worker.read_start, key)
                    if n >= args.warmup:
                        samples.append((started - before) * 1000)
                        calls.append((returned - before) * 1000)
                worker.stop()
            finally:
                worker.kill()
    finally:
        store.drop(keep=args.keep)
    return {
        **config,
        "latency_ms": wl.distribution(samples),
        "enqueue_call_ms": wl.distribution(calls),
        "samples_ms": [round(s, 3) for s in samples],
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    load_at_start = [round(x, 2) for x in __import__("os").getloadavg()]
    git_at_start = bl.git_state()
    bl.ensure_pg_database(args.pg_url)
    drains, latencies = [], []
    for config in configurations(args):
        if args.only in (None, "drain"):
            bl.log(f"drain: {config['label']}, {args.jobs} jobs")
            result = await drain_run(config, args)
            bl.log(
                f"  enqueue {result['enqueue_single']['per_second']}/s one by one, "
                f"{result['enqueue_bulk']['per_second']}/s in bulk; "
                f"drain {result['drain_per_second']:,.0f}/s"
            )
            drains.append(result)
        if args.only in (None, "latency"):
            bl.log(f"latency: {config['label']}, {args.samples} probes")
            result = await latency_run(config, args)
            bl.log(f"  p50 {result['latency_ms']['p50']:.2f} ms")
            latencies.append(result)
    versions = {}
    for package in ("pgqueuer", "procrastinate", "asyncpg"):
        try:
            versions[package] = bl.metadata.version(package)
        except bl.metadata.PackageNotFoundError:
            versions[package] = None
    results = {"postgres": {"drain": drains, "latency": latencies}}
    return {
        "benchmark": "vs_queues",
        "config": {
            "backends": ["postgres"],
            "jobs": args.jobs,
            "single": args.single,
            "samples": args.samples,
            "concurrency": args.concurrency,
            "pgqueuer_batch": args.pgqueuer_batch,
            "systems": args.systems,
            "quick": args.quick,
        },
        "machine": {
            **bl.machine_info(args.pg_url),
            **versions,
            **wl.run_context(git_at_start, load_at_start),
        },
        "results": results,
        "targets": evaluate(results),
    }


def _find(rows: list[dict[str, Any]], label_start: str) -> dict[str, Any] | None:
    return next((r for r in rows if r["label"].startswith(label_start)), None)


def evaluate(results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    targets = []
    drains, latencies = results["postgres"]["drain"], results["postgres"]["latency"]
    for r in drains:
        if r["system"] != "pgqueuer":  # PgQueuer keeps no per-job success record by default
            targets.append(
                bl.target(
                    f"{r['label']}: jobs not succeeded = 0",
                    r["jobs"] - (r["succeeded"] or 0),
                    0,
                    "jobs",
                    backend="postgres",
                )
            )
    ours, theirs = _find(drains, "durable"), _find(drains, "PgQueuer, batch 10")
    if ours and theirs:
        targets.append(
            wl.at_least(
                "durable drain / PgQueuer drain (its default batch size)",
                ours["drain_per_second"] / theirs["drain_per_second"],
                1.0,
                "x",
                backend="postgres",
            )
        )
        if ours["enqueue_bulk"]["per_second"] and theirs["enqueue_bulk"]["per_second"]:
            targets.append(
                wl.at_least(
                    "durable bulk enqueue / PgQueuer bulk enqueue",
                    ours["enqueue_bulk"]["per_second"] / theirs["enqueue_bulk"]["per_second"],
                    1.0,
                    "x",
                    backend="postgres",
                )
            )
    ours, theirs = _find(latencies, "durable"), _find(latencies, "PgQueuer, batch 10")
    if ours and theirs:
        targets.append(
            bl.target(
                "durable enqueue-to-start p50 / PgQueuer's (its default batch size)",
                ours["latency_ms"]["p50"] / theirs["latency_ms"]["p50"],
                1.0,
                "x",
                backend="postgres",
            )
        )
    return targets


def report(document: dict[str, Any]) -> None:
    result = document["results"]["postgres"]
    if result["drain"]:
        bl.print_table(
            f"Plain jobs on PostgreSQL: {document['config']['jobs']:,} no-op jobs, one worker "
            "process (rates per second)",
            [
                "system",
                "enqueue 1 by 1",
                "enqueue bulk",
                "drain",
                "active",
                "start-up s",
                "cpu ms/job",
                "succeeded",
            ],
            [
                (
                    r["label"],
                    r["enqueue_single"]["per_second"],
                    r["enqueue_bulk"]["per_second"],
                    r["drain_per_second"],
                    r["active_per_second"],
                    r["startup_seconds"],
                    r["worker_cpu_ms_per_job"],
                    "-" if r["succeeded"] is None else r["succeeded"],
                )
                for r in result["drain"]
            ],
        )
    if result["latency"]:
        bl.print_table(
            "Enqueue to start, idle worker (ms)",
            ["system", "p50", "p90", "p99", "max", "enqueue call p50"],
            [
                (
                    r["label"],
                    r["latency_ms"]["p50"],
                    r["latency_ms"]["p90"],
                    r["latency_ms"]["p99"],
                    r["latency_ms"]["max"],
                    r["enqueue_call_ms"]["p50"],
                )
                for r in result["latency"]
            ],
        )
    bl.print_targets(document["targets"])


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = bl.parser(__doc__)
    parser.add_argument("--jobs", type=int, help="jobs per drain (10000)")
    parser.add_argument("--single", type=int, help="of which enqueued one at a time (2000)")
    parser.add_argument("--samples", type=int, help="latency probes per system (200)")
    parser.add_argument("--warmup", type=int, default=5, help="probes not counted (5)")
    parser.add_argument("--concurrency", type=int, default=16, help="durable, procrastinate (16)")
    parser.add_argument("--pgqueuer-batch", type=int, default=100, help="PgQueuer's tuned batch")
    parser.add_argument("--systems", help="comma-separated (durable,pgqueuer,procrastinate)")
    parser.add_argument("--only", choices=["drain", "latency"])
    bl.add_run_options(parser, keep_help="keep the databases")
    args = parser.parse_args(argv)
    if args.backend == "sqlite":
        parser.error("vs_queues runs on PostgreSQL only (the other queues need it)")
    if args.jobs is None:
        args.jobs = 40 if args.quick else 10_000
    if args.single is None:
        args.single = 10 if args.quick else 2000
    if args.samples is None:
        args.samples = 5 if args.quick else 200
    if args.quick:
        args.warmup = min(args.warmup, 1)
    wanted = (args.systems or ",".join(SYSTEMS)).split(",")
    unknown = set(wanted) - set(SYSTEMS)
    if unknown:
        parser.error(f"unknown systems {sorted(unknown)}")
    missing = [s for s in wanted if not installed(s)]
    for system in missing:
        bl.log(f"{system} is not installed (pip install -e '.[bench]'): left out")
    args.systems = [s for s in wanted if s not in missing]
    if args.jobs < 1 or args.samples < 1 or args.single < 0:
        parser.error("--jobs and --samples must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print its tables, write the JSON file; return the results."""
    return bl.main(argv, parse_args, run, report)


if __name__ == "__main__":
    main()
