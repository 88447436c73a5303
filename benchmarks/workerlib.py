"""Helpers shared by the worker benchmarks (not a benchmark itself): ``throughput.py``,
``latency.py``, ``contention.py``, ``memory.py`` and ``vs_dbos.py``.

* the workflows they run (:data:`REGISTRY`): a three-step pipeline, a one-step "trivial"
  workflow, a probe whose first step returns ``time.time()``, and workflows of ``n`` no-op
  steps that time themselves (async and sync);
* the databases they run on (:class:`Database`): a fresh SQLite file, or a fresh schema in a
  PostgreSQL database, with a few direct SQL queries (counts, timestamps) that do not go
  through durable;
* worker processes (:class:`WorkerProcesses`): each one imports everything and starts its
  backend, says ``ready``, waits for ``go`` on its stdin, and then runs
  :func:`durable.worker.serve` until SIGTERM, when it prints how many executions it ran.

A child process runs :func:`child_main` through :data:`CHILD` (``python -c``, see
:func:`child_command`), so this module is never ``__main__`` and its workflows are registered
once per process.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import selectors
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib as bl
import psycopg
from sqlalchemy.engine import make_url

import durable
import durable.worker

HERE = Path(__file__).resolve().parent


def child_command(module: str) -> list[str]:
    """``python -c`` program that runs ``<module>.child_main(<the arguments after it>)`` with
    this folder on ``sys.path`` (so the module is imported once, never as ``__main__``)."""
    return [
        sys.executable,
        "-c",
        f"import sys; sys.path.insert(0, {str(HERE)!r}); import {module}; "
        f"sys.exit({module}.child_main(sys.argv[1:]))",
    ]


#: runs :func:`child_main` of this module
CHILD = child_command("workerlib")

PIPELINE = "bench.workers.pipeline.v1"
TRIVIAL = "bench.workers.trivial.v1"
PROBE = "bench.workers.probe.v1"
REGISTRY = durable.Registry()


@durable.step(name="bench.workers.inc")
async def inc(x: int) -> int:
    return x + 1


@durable.step(name="bench.workers.double")
async def double(x: int) -> int:
    return x * 2


@durable.step(name="bench.workers.dec")
async def dec(x: int) -> int:
    return x - 3


@durable.step(name="bench.workers.clock")
async def clock() -> float:
    return time.time()


@durable.workflow(name=PIPELINE, registry=REGISTRY)
async def pipeline(n: int) -> int:
    """Three no-op steps."""
    return await dec(await double(await inc(n)))


@durable.workflow(name=TRIVIAL, registry=REGISTRY)
async def trivial(n: int) -> int:
    """One no-op step."""
    return await inc(n)


@durable.workflow(name=PROBE, registry=REGISTRY)
async def probe() -> float:
    """Its first step records when it started (``time.time()``, seconds since the epoch)."""
    return await clock()


OVERHEAD_ASYNC = "bench.workers.overhead.async.v1"
OVERHEAD_SYNC = "bench.workers.overhead.sync.v1"


@durable.step(name="bench.workers.noop")
async def noop(i: int) -> int:
    return i


@durable.step(name="bench.workers.noop_sync")
def noop_sync(i: int) -> int:
    return i


@durable.workflow(name=OVERHEAD_ASYNC, registry=REGISTRY)
async def overhead_async(n: int) -> list[float]:
    """``n`` no-op steps; returns the wall and CPU seconds from before the first step to after
    the last."""
    wall, cpu = time.perf_counter(), time.process_time()
    for i in range(n):
        await noop(i)
    return [time.perf_counter() - wall, time.process_time() - cpu]


@durable.workflow(name=OVERHEAD_SYNC, registry=REGISTRY)
def overhead_sync(n: int) -> list[float]:
    """:func:`overhead_async` with plain ``def`` steps in a plain ``def`` workflow."""
    wall, cpu = time.perf_counter(), time.process_time()
    for i in range(n):
        noop_sync(i)
    return [time.perf_counter() - wall, time.process_time() - cpu]


# -- the run ----------------------------------------------------------------------------------


def run_context(at_start: dict[str, Any], load_at_start: list[float]) -> dict[str, Any]:
    """What goes into a document's ``machine`` besides benchlib's machine info."""
    at_end = bl.git_state()
    return {
        "load_average_at_start": load_at_start,
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "git_at_start": at_start,
        "code_changed_during_run": at_start != at_end,
    }


async def run_per_backend(
    args: Any,
    name: str,
    config: dict[str, Any],
    bench_backend: Callable[[str, Any, Path], Awaitable[dict[str, Any]]],
    evaluate: Callable[[dict[str, dict[str, Any]]], list[dict[str, Any]]],
    *,
    machine: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run ``bench_backend(kind, args, sqlite_dir)`` for each backend ``args.backend`` names
    (SQLite files in ``args.sqlite_dir`` or a temporary directory, removed afterwards unless
    ``args.keep``) and return the benchmark's JSON document: its config, the machine, the
    results by backend and the targets ``evaluate`` judges from them."""
    backends = ["sqlite", "postgres"] if args.backend == "all" else [args.backend]
    load_at_start = [round(x, 2) for x in os.getloadavg()]
    git_at_start = bl.git_state()
    results: dict[str, dict[str, Any]] = {}
    sqlite_dir = args.sqlite_dir or Path(tempfile.mkdtemp(prefix="durable-bench-"))
    sqlite_dir.mkdir(parents=True, exist_ok=True)
    try:
        for kind in backends:
            results[kind] = await bench_backend(kind, args, sqlite_dir)
    finally:
        if args.sqlite_dir is None and not args.keep:
            shutil.rmtree(sqlite_dir, ignore_errors=True)
    return {
        "benchmark": name,
        "config": {"backends": backends, **config, "quick": args.quick},
        "machine": {
            **bl.machine_info(args.pg_url if "postgres" in backends else None),
            **(machine or {}),
            **run_context(git_at_start, load_at_start),
        },
        "results": results,
        "targets": evaluate(results),
    }


# -- statistics --------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) by linear interpolation between closest ranks."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("no values")
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def distribution(values_ms: Sequence[float]) -> dict[str, Any]:
    """p50, p90, p99, min, max and mean of samples in milliseconds."""
    return {
        "p50": round(percentile(values_ms, 50), 3),
        "p90": round(percentile(values_ms, 90), 3),
        "p99": round(percentile(values_ms, 99), 3),
        "min": round(min(values_ms), 3),
        "max": round(max(values_ms), 3),
        "mean": round(sum(values_ms) / len(values_ms), 3),
        "n": len(values_ms),
    }


def at_least(name: str, value: float, limit: float, unit: str, *, backend: str) -> dict[str, Any]:
    """A target met when ``value >= limit`` (benchlib's :func:`~benchlib.target` is ``<=``)."""
    return {
        "backend": backend,
        "name": name,
        "value": round(value, 3),
        "limit": limit,
        "unit": unit,
        "pass": value >= limit,
        "headline": True,
    }


# -- databases ---------------------------------------------------------------------------------


@dataclass
class Database:
    """A database a benchmark run uses: a SQLite file, or a schema in a PostgreSQL database."""

    kind: str  # "sqlite" or "postgres"
    url: str
    schema: str | None = None
    path: Path | None = None
    _conn: Any = field(default=None, repr=False, compare=False)

    @classmethod
    def fresh(
        cls, kind: str, name: str, *, pg_url: str, sqlite_dir: Path, mysql_url: str | None = None
    ) -> Database:
        """An empty database named after ``name``: ``<sqlite_dir>/<name>.db`` (deleted first),
        the schema ``durable_bench_<name>`` in ``pg_url``'s database (dropped first), or the
        MySQL/MariaDB database ``<mysql_url's database>_<name>`` (dropped first)."""
        if kind == "mysql":
            assert mysql_url is not None
            parsed = make_url(mysql_url)
            url = parsed.set(database=f"{parsed.database}_{name}").render_as_string(False)
            bl.recreate_mysql_database(url)
            return cls(kind, url)
        if kind == "sqlite":
            path = sqlite_dir / f"{name}.db"
            bl.remove_sqlite(path)
            return cls(kind, bl.sqlite_url(path), path=path)
        schema = f"durable_bench_{name}"
        bl.ensure_pg_database(pg_url)
        bl.reset_pg_schema(pg_url, schema)
        return cls(kind, pg_url, schema=schema)

    def finish(self, *, keep: bool) -> None:
        """Close the polling connection, and drop the database unless ``keep``."""
        self.close()
        if not keep:
            self.drop()

    def drop(self) -> None:
        self.close()
        if self.kind == "sqlite":
            assert self.path is not None
            bl.remove_sqlite(self.path)
        elif self.kind == "mysql":
            bl.recreate_mysql_database(self.url, drop_only=True)
        else:
            assert self.schema is not None
            bl.drop_pg_schema(self.url, self.schema)

    def connect(self, *, pool_size: int | None = None) -> durable.SQLAlchemyBackend:
        """durable's backend on this database (durable's default pool on PostgreSQL, 20
        connections plus 10 overflow, unless ``pool_size`` is given)."""
        if self.kind == "sqlite":
            backend = durable.connect(self.url)
        elif self.kind == "mysql":
            mysql_options = {} if pool_size is None else {"pool_size": pool_size}
            backend = durable.connect(self.url, engine_options=mysql_options)
        else:
            assert self.schema is not None
            options: dict[str, Any] = {"connect_args": bl.pg_search_path(self.schema)}
            if pool_size is not None:
                options["pool_size"] = pool_size
            backend = durable.connect(self.url, engine_options=options)
        assert isinstance(backend, durable.SQLAlchemyBackend)
        return backend

    def child_args(self) -> list[str]:
        """How a child process finds this database (see :func:`child_database`)."""
        args = ["--url", self.url]
        if self.schema is not None:
            args += ["--schema", self.schema]
        return args

    def _open(self) -> Any:
        if self.kind == "sqlite":
            assert self.path is not None
            return sqlite3.connect(self.path, isolation_level=None, timeout=30)
        if self.kind == "mysql":
            return _MySQLConnection(self.url)
        assert self.schema is not None
        return psycopg.connect(
            bl.pg_conninfo(self.url), autocommit=True, **bl.pg_search_path(self.schema)
        )

    @contextlib.contextmanager
    def sql(self) -> Iterator[Any]:
        """A plain DB-API connection (autocommit), outside durable: one kept open for polling
        (a new PostgreSQL connection per poll would cost the server a process each time)."""
        if self._conn is None:
            self._conn = self._open()
        try:
            yield self._conn
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def scalar(self, query: str) -> Any:
        with self.sql() as conn:
            row = conn.execute(query).fetchone()
            return row[0] if row else None

    def rows(self, query: str) -> list[tuple[Any, ...]]:
        with self.sql() as conn:
            return [tuple(r) for r in conn.execute(query).fetchall()]

    def status_counts(self) -> dict[str, int]:
        rows = self.rows("SELECT status, count(*) FROM durable_workflows GROUP BY status")
        return {str(status): int(n) for status, n in rows}

    def workflow_times(self) -> dict[str, float | None]:
        """Earliest ``started_at`` and latest ``completed_at`` of all workflows (epoch seconds;
        durable writes both from the worker's clock)."""
        row = self.rows("SELECT min(started_at), max(completed_at) FROM durable_workflows")[0]
        return {"first_started": epoch(row[0]), "last_completed": epoch(row[1])}

    def size_bytes(self) -> int:
        if self.kind == "sqlite":
            assert self.path is not None
            return sum(
                p.stat().st_size for p in (self.path, Path(f"{self.path}-wal")) if p.exists()
            )
        if self.kind == "mysql":
            return int(
                self.scalar(
                    "SELECT coalesce(sum(data_length + index_length), 0) FROM "
                    "information_schema.tables WHERE table_schema = DATABASE()"
                )
            )
        return int(
            self.scalar(
                "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
                "JOIN pg_namespace n ON n.oid = c.relnamespace "
                f"WHERE n.nspname = '{self.schema}' AND c.relkind = 'r'"
            )
        )


class _MySQLConnection:
    """A PyMySQL connection (autocommit) with sqlite3's and psycopg's ``execute(query)``."""

    def __init__(self, url: str) -> None:
        import pymysql

        self._conn = pymysql.connect(**bl.mysql_params(url), autocommit=True)

    def execute(self, query: str) -> Any:
        cursor = self._conn.cursor()
        cursor.execute(query)
        return cursor

    def close(self) -> None:
        self._conn.close()


def epoch(value: Any) -> float | None:
    """A database timestamp (an aware datetime, or SQLite's naive UTC text) in epoch seconds."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return float(value.timestamp())


async def wait_until(
    done: Callable[[], bool], *, interval: float = 0.02, timeout: float = 600.0, what: str = ""
) -> float:
    """Poll ``done()`` every ``interval`` seconds; return ``time.time()`` when it is true."""
    deadline = time.monotonic() + timeout
    while True:
        if done():
            return time.time()
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up after {timeout:g}s waiting for {what or 'a condition'}")
        await asyncio.sleep(interval)


def producer(db: Database, *, pool_size: int | None = None) -> durable.Runtime:
    """A runtime that enqueues (and recovers nothing, and runs nothing unless asked)."""
    return durable.Runtime(
        db.connect(pool_size=pool_size),
        executor_id=f"bench-producer-{os.getpid()}",
        recover=False,
        registry=REGISTRY,
        poll_interval=0.01,
    )


async def enqueue_many(runtime: durable.Runtime, name: str, n: int) -> dict[str, Any]:
    """Enqueue ``n`` executions of ``name`` one after the other (each awaited: one producer,
    one transaction at a time) and time it."""
    started = time.perf_counter()
    for i in range(n):
        await runtime.enqueue(name, i)
    seconds = time.perf_counter() - started
    return {"count": n, "seconds": round(seconds, 4), "per_second": round(n / seconds, 1)}


async def enqueue_concurrently(
    runtime: durable.Runtime, name: str, n: int, *, concurrency: int = 8
) -> dict[str, Any]:
    """Enqueue ``n`` executions of ``name``, ``concurrency`` calls at a time (a PostgreSQL
    producer needs that many pooled connections; SQLite's standard-library driver runs each
    call to its end anyway), and time it."""
    gate = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with gate:
            await runtime.enqueue(name, i)

    started = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    seconds = time.perf_counter() - started
    return {
        "count": n,
        "concurrency": concurrency,
        "seconds": round(seconds, 4),
        "per_second": round(n / seconds, 1),
    }


# -- worker processes --------------------------------------------------------------------------


class WorkerProcesses:
    """``count`` worker processes on ``db``, each running :func:`durable.worker.serve`.

    ``start()`` returns when every one has imported everything, started its backend and said
    ``ready``; ``go()`` lets them all start serving at once and returns that moment
    (``time.time()``); ``stop()`` sends SIGTERM and returns what each printed.
    """

    def __init__(
        self,
        db: Database,
        count: int,
        *,
        concurrency: int,
        poll_interval: float = 1.0,
        pool_size: int | None = None,
        label: str = "bench-worker",
    ) -> None:
        self.db = db
        self.count = count
        self.concurrency = concurrency
        self.poll_interval = poll_interval
        self.pool_size = pool_size
        self.label = label
        self.procs: list[subprocess.Popen[str]] = []

    def __enter__(self) -> WorkerProcesses:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()

    def start(self, *, timeout: float = 60.0) -> None:
        for i in range(self.count):
            args = [
                "serve",
                *self.db.child_args(),
                "--executor-id",
                f"{self.label}-{i}",
                "--concurrency",
                str(self.concurrency),
                "--poll-interval",
                str(self.poll_interval),
            ]
            if self.pool_size is not None:
                args += ["--pool-size", str(self.pool_size)]
            self.procs.append(
                subprocess.Popen(
                    [*CHILD, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
                )
            )
        for proc in self.procs:
            expect_line(proc, "ready", timeout=timeout)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def go(self) -> float:
        now = time.time()
        for proc in self.procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        return now

    def stop(self, *, timeout: float = 60.0) -> list[dict[str, Any]]:
        """SIGTERM every worker, wait for it, and return the JSON each printed last."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            assert proc.stdin is not None
            with contextlib.suppress(OSError):
                proc.stdin.close()  # a worker still waiting for "go" gives up
        reports = []
        for proc in self.procs:
            assert proc.stdout is not None
            out = proc.stdout.read()
            close_pipes(proc)
            proc.wait(timeout=timeout)
            if proc.returncode != 0:
                raise RuntimeError(f"worker {proc.pid} exited with {proc.returncode}")
            reports.append(json.loads(out.strip().splitlines()[-1]))
        self.procs = []
        return reports

    def kill(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            close_pipes(proc)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
        self.procs = []


def close_pipes(proc: subprocess.Popen[str]) -> None:
    """Close whichever of the child's stdin and stdout are still open."""
    for pipe in (proc.stdin, proc.stdout):
        if pipe is not None:
            with contextlib.suppress(OSError):
                pipe.close()


def expect_line(proc: subprocess.Popen[str], expected: str, *, timeout: float) -> None:
    """Read one line from the child's stdout; it must be ``expected``."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while not sel.select(timeout=0.1):
            if proc.poll() is not None:
                raise RuntimeError(
                    f"child {proc.pid} exited with {proc.returncode} before saying {expected!r}"
                )
            if time.monotonic() > deadline:
                raise TimeoutError(f"child {proc.pid} did not say {expected!r} in {timeout:g}s")
    line = proc.stdout.readline().strip()
    if line != expected:
        raise RuntimeError(f"child {proc.pid} said {line!r}, expected {expected!r}")


# -- the child process -------------------------------------------------------------------------


def child_database(url: str, schema: str | None) -> Database:
    if url.startswith(("mysql", "mariadb")):
        return Database("mysql", url)
    if schema is None:
        return Database("sqlite", url, path=Path(url.removeprefix("sqlite:///")))
    return Database("postgres", url, schema=schema)


async def _serve(args: Any) -> dict[str, Any]:
    db = child_database(args.url, args.schema)
    runtime = durable.Runtime(
        db.connect(pool_size=args.pool_size), executor_id=args.executor_id, registry=REGISTRY
    )
    # SIGTERM before serve() installs its own handler (a short run can be over before a worker
    # has started) must still stop the worker gracefully, once it exists
    loop = asyncio.get_running_loop()
    early_stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, early_stop.set)
    await runtime.backend.start()  # connect and check the schema before saying ready
    print("ready", flush=True)
    line = await asyncio.to_thread(sys.stdin.readline)
    if line.strip() != "go":
        await runtime.backend.close()
        return {"completed": 0, "pid": os.getpid(), "aborted": True}
    go, cpu = time.time(), time.process_time()
    serving = asyncio.ensure_future(
        durable.worker.serve(
            runtime, concurrency=args.concurrency, poll_interval=args.poll_interval, grace=10.0
        )
    )
    stopper = asyncio.ensure_future(early_stop.wait())
    await asyncio.wait({serving, stopper}, return_when=asyncio.FIRST_COMPLETED)
    if not serving.done():  # the SIGTERM came before serve() was listening for it
        while not runtime._workers:  # noqa: ASYNC110 (private: serve() hands out no worker)
            await asyncio.sleep(0.01)
        for worker in runtime._workers:
            worker.request_stop()
    stopper.cancel()
    completed = await serving
    return {
        "completed": completed,
        "pid": os.getpid(),
        "go": go,
        "stopped": time.time(),
        "cpu_seconds": round(time.process_time() - cpu, 4),
        "max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }


def child_main(argv: Sequence[str]) -> int:
    import argparse
    import logging

    parser = argparse.ArgumentParser(prog="workerlib child")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve")
    serve.add_argument("--url", required=True)
    serve.add_argument("--schema")
    serve.add_argument("--executor-id", required=True)
    serve.add_argument("--concurrency", type=int, default=16)
    serve.add_argument("--poll-interval", type=float, default=1.0)
    serve.add_argument("--pool-size", type=int)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="worker %(process)d: %(message)s")
    report = asyncio.run(_serve(args))
    print(json.dumps(report), flush=True)
    return 0
