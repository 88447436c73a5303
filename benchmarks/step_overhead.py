"""What one durable step costs, next to the cheapest possible durable write on the same database.

For each backend, in one run and interleaved (so that a noisy machine slows both sides alike):

* **durable steps**: a workflow of ``--steps`` no-op steps, timed inside its body (from before the
  first step to after the last), divided by the number of steps. Two shapes: ``async def`` steps
  in an ``async def`` workflow, and plain ``def`` steps in a plain ``def`` workflow (which runs
  in a worker thread and hands each checkpoint to the event loop). The end-to-end time of
  ``runtime.run`` (create, claim, begin, steps, finish) per step is reported as context.
* **the floor**: a loop of single-row INSERT + COMMIT into a table shaped like durable's steps
  table, with the same driver and settings and nothing else: PostgreSQL through psycopg 3's
  async connection (one connection, autocommit off, one transaction per row); SQLite through
  the standard-library ``sqlite3`` module with durable's pragmas (WAL, ``synchronous=NORMAL``,
  foreign keys, busy timeout) and ``BEGIN IMMEDIATE`` ... ``COMMIT`` per row.

* **the one-round-trip floor**: the same row as a single autocommitted ``INSERT`` (PostgreSQL:
  a second psycopg connection in autocommit mode, the statement prepared, one round trip, as a
  durable step's record is; SQLite: the bare ``INSERT`` in autocommit mode, its own implicit
  transaction).

Each figure is the median of ``--repeat`` runs after ``--warmup`` discarded ones. Targets:
PostgreSQL steps at most 1.5x the floor; SQLite steps at most 300 us each (the ratio to the
floor is reported as well). Issue #11's targets are judged too: PostgreSQL steps at most 1.25x
the one-round-trip floor, SQLite steps at most 4x its commit floor.

    python benchmarks/step_overhead.py [--backend sqlite|postgres|mysql|all] [--steps 500]
        [--repeat 5] [--pg-url postgresql+psycopg://...] [--mysql-url mysql://...]
        [--json out.json]

``--backend mysql`` (not part of ``all``) runs it on MySQL/MariaDB through aiomysql, against
the same floor through the same driver (``--mysql-url``, default
``mysql://root@127.0.0.1:3306/durable_bench``; the database is created anew and dropped).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib as bl
import psycopg

import durable

PG_TARGET_RATIO = 1.5
PG_ROUND_TRIP_TARGET_RATIO = 1.25
SQLITE_FLOOR_TARGET_RATIO = 4.0
SQLITE_TARGET_US = 300.0
PG_SCHEMA = "durable_bench_overhead"
FLOOR_TABLE = "bench_floor_steps"

REGISTRY = durable.Registry()
#: (wall seconds, process CPU seconds) spent in each workflow's body, from before its first step
#: to after its last, by workflow id.
BODY_SECONDS: dict[str, tuple[float, float]] = {}
#: For the paired workflow: the floor each workflow id writes to between its steps, and the
#: (step seconds, floor row seconds) samples it took.
PAIRED_FLOOR: dict[str, Floor] = {}
PAIRED_SAMPLES: dict[str, tuple[list[float], list[float]]] = {}


@durable.step(name="bench.overhead.noop")
async def noop(i: int) -> int:
    return i


@durable.step(name="bench.overhead.noop_sync")
def noop_sync(i: int) -> int:
    return i


@durable.workflow(name="bench.overhead.async.v1", registry=REGISTRY)
async def async_workflow(n: int) -> int:
    wall, cpu = time.perf_counter(), time.process_time()
    for i in range(n):
        await noop(i)
    BODY_SECONDS[durable.workflow_id()] = (time.perf_counter() - wall, time.process_time() - cpu)
    return n


@durable.workflow(name="bench.overhead.sync.v1", registry=REGISTRY)
def sync_workflow(n: int) -> int:
    wall, cpu = time.perf_counter(), time.process_time()
    for i in range(n):
        noop_sync(i)
    BODY_SECONDS[durable.workflow_id()] = (time.perf_counter() - wall, time.process_time() - cpu)
    return n


@durable.workflow(name="bench.overhead.paired.v1", registry=REGISTRY)
async def paired_workflow(n: int) -> int:
    """Each step is followed by one floor row, timed apart: both see the same machine."""
    wid = durable.workflow_id()
    floor = PAIRED_FLOOR[wid]
    steps, rows = PAIRED_SAMPLES.setdefault(wid, ([], []))
    for i in range(n):
        started = time.perf_counter()
        await noop(i)
        stepped = time.perf_counter()
        await floor.one(f"paired-{wid}", i)
        steps.append(stepped - started)
        rows.append(time.perf_counter() - stepped)
    return n


# -- the floor: the same table shape, one INSERT and one COMMIT per row --------------------------

_FLOOR_COLUMNS = (
    "workflow_id, position, name, status, output, error, child_workflow_id, attempts, "
    "executor_id, started_at, completed_at"
)
_PG_FLOOR_DDL = f"""
CREATE TABLE {FLOOR_TABLE} (
    workflow_id VARCHAR(255) NOT NULL,
    position INTEGER NOT NULL,
    name VARCHAR(255) NOT NULL,
    status VARCHAR(16) NOT NULL,
    output TEXT,
    error TEXT,
    child_workflow_id VARCHAR(255),
    attempts INTEGER NOT NULL,
    executor_id VARCHAR(255),
    started_at TIMESTAMP WITH TIME ZONE,
    completed_at TIMESTAMP WITH TIME ZONE,
    PRIMARY KEY (workflow_id, position)
)"""
_SQLITE_FLOOR_DDL = f"""
CREATE TABLE {FLOOR_TABLE} (
    workflow_id VARCHAR(255) NOT NULL,
    position INTEGER NOT NULL,
    name VARCHAR(255) NOT NULL,
    status VARCHAR(16) NOT NULL,
    output TEXT,
    error TEXT,
    child_workflow_id VARCHAR(255),
    attempts INTEGER NOT NULL,
    executor_id VARCHAR(255),
    started_at DATETIME,
    completed_at DATETIME,
    PRIMARY KEY (workflow_id, position)
)"""
_PG_FLOOR_INSERT = (
    f"INSERT INTO {FLOOR_TABLE} ({_FLOOR_COLUMNS}) "
    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
)
_SQLITE_FLOOR_INSERT = (
    f"INSERT INTO {FLOOR_TABLE} ({_FLOOR_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


class Floor(Protocol):
    async def run(self, label: str, rows: int) -> tuple[float, float]:
        """Insert ``rows`` rows, each in its own transaction: (wall, CPU) seconds per row."""
        ...

    async def one(self, label: str, i: int) -> None:
        """Insert one row in its own transaction."""
        ...

    async def run_autocommit(self, label: str, rows: int) -> tuple[float, float]:
        """Insert ``rows`` rows, each one autocommitted statement: (wall, CPU) s per row."""
        ...


class SQLiteFloor:
    """stdlib sqlite3, durable's pragmas, ``BEGIN IMMEDIATE; INSERT; COMMIT`` per row."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stack = contextlib.ExitStack()
        self.conn = self._stack.enter_context(bl.sqlite_raw(path))
        self.conn.execute(_SQLITE_FLOOR_DDL)

    def _insert(self, label: str, i: int) -> None:
        conn = self.conn
        now = bl.sqlite_timestamp(datetime.now(UTC))
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(
            _SQLITE_FLOOR_INSERT,
            (label, i, "bench.floor", "succeeded", str(i), None, None, 1, "bench", now, now),
        )
        conn.execute("COMMIT")

    async def run(self, label: str, rows: int) -> tuple[float, float]:
        wall, cpu = time.perf_counter(), time.process_time()
        for i in range(rows):
            self._insert(label, i)
        return (time.perf_counter() - wall) / rows, (time.process_time() - cpu) / rows

    async def one(self, label: str, i: int) -> None:
        self._insert(label, i)

    async def run_autocommit(self, label: str, rows: int) -> tuple[float, float]:
        conn = self.conn
        wall, cpu = time.perf_counter(), time.process_time()
        for i in range(rows):
            now = bl.sqlite_timestamp(datetime.now(UTC))
            conn.execute(
                _SQLITE_FLOOR_INSERT,
                (label, i, "bench.floor", "succeeded", str(i), None, None, 1, "bench", now, now),
            )
        return (time.perf_counter() - wall) / rows, (time.process_time() - cpu) / rows

    def close(self) -> None:
        self._stack.close()


class PostgresFloor:
    """psycopg 3 async, one connection, autocommit off, ``INSERT; COMMIT`` per row."""

    def __init__(
        self, conn: psycopg.AsyncConnection[Any], auto: psycopg.AsyncConnection[Any]
    ) -> None:
        self.conn = conn
        self.auto = auto  # autocommit: one statement, one round trip

    @classmethod
    async def open(cls, url: str, schema: str) -> PostgresFloor:
        conn = await psycopg.AsyncConnection.connect(
            bl.pg_conninfo(url), **bl.pg_search_path(schema)
        )
        await conn.execute(_PG_FLOOR_DDL)
        await conn.commit()
        auto = await psycopg.AsyncConnection.connect(
            bl.pg_conninfo(url), autocommit=True, **bl.pg_search_path(schema)
        )
        return cls(conn, auto)

    async def run_autocommit(self, label: str, rows: int) -> tuple[float, float]:
        wall, cpu = time.perf_counter(), time.process_time()
        async with self.auto.cursor() as cur:
            for i in range(rows):
                now = datetime.now(UTC)
                await cur.execute(
                    _PG_FLOOR_INSERT,
                    (
                        label,
                        i,
                        "bench.floor",
                        "succeeded",
                        str(i),
                        None,
                        None,
                        1,
                        "bench",
                        now,
                        now,
                    ),
                    prepare=True,
                )
        return (time.perf_counter() - wall) / rows, (time.process_time() - cpu) / rows

    async def _insert(self, cur: psycopg.AsyncCursor[Any], label: str, i: int) -> None:
        now = datetime.now(UTC)
        await cur.execute(
            _PG_FLOOR_INSERT,
            (label, i, "bench.floor", "succeeded", str(i), None, None, 1, "bench", now, now),
        )
        await self.conn.commit()

    async def run(self, label: str, rows: int) -> tuple[float, float]:
        wall, cpu = time.perf_counter(), time.process_time()
        async with self.conn.cursor() as cur:
            for i in range(rows):
                await self._insert(cur, label, i)
        return (time.perf_counter() - wall) / rows, (time.process_time() - cpu) / rows

    async def one(self, label: str, i: int) -> None:
        async with self.conn.cursor() as cur:
            await self._insert(cur, label, i)

    async def close(self) -> None:
        await self.conn.close()
        await self.auto.close()


_MYSQL_FLOOR_DDL = f"""
CREATE TABLE {FLOOR_TABLE} (
    workflow_id VARCHAR(255) NOT NULL,
    position INTEGER NOT NULL,
    name VARCHAR(255) NOT NULL,
    status VARCHAR(16) NOT NULL,
    output LONGTEXT,
    error LONGTEXT,
    child_workflow_id VARCHAR(255),
    attempts INTEGER NOT NULL,
    executor_id VARCHAR(255),
    started_at DATETIME(6),
    completed_at DATETIME(6),
    PRIMARY KEY (workflow_id, position)
)"""


class MySQLFloor:
    """aiomysql (durable's MySQL driver), one connection at READ COMMITTED, autocommit off,
    ``INSERT; COMMIT`` per row; the one-round-trip floor on a second, autocommit connection."""

    def __init__(self, conn: Any, auto: Any) -> None:
        self.conn = conn
        self.auto = auto

    @classmethod
    async def open(cls, url: str) -> MySQLFloor:
        import aiomysql

        params = bl.mysql_params(url)
        conn = await aiomysql.connect(**params, autocommit=False)
        async with conn.cursor() as cur:
            await cur.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
            await cur.execute(_MYSQL_FLOOR_DDL)
        await conn.commit()
        auto = await aiomysql.connect(**params, autocommit=True)
        return cls(conn, auto)

    @staticmethod
    def _row(label: str, i: int) -> tuple[Any, ...]:
        now = datetime.now(UTC).replace(tzinfo=None)
        return (label, i, "bench.floor", "succeeded", str(i), None, None, 1, "bench", now, now)

    async def run_autocommit(self, label: str, rows: int) -> tuple[float, float]:
        wall, cpu = time.perf_counter(), time.process_time()
        async with self.auto.cursor() as cur:
            for i in range(rows):
                await cur.execute(_PG_FLOOR_INSERT, self._row(f"{label}-1", i))
        return (time.perf_counter() - wall) / rows, (time.process_time() - cpu) / rows

    async def run(self, label: str, rows: int) -> tuple[float, float]:
        wall, cpu = time.perf_counter(), time.process_time()
        async with self.conn.cursor() as cur:
            for i in range(rows):
                await cur.execute(_PG_FLOOR_INSERT, self._row(label, i))
                await self.conn.commit()
        return (time.perf_counter() - wall) / rows, (time.process_time() - cpu) / rows

    async def one(self, label: str, i: int) -> None:
        async with self.conn.cursor() as cur:
            await cur.execute(_PG_FLOOR_INSERT, self._row(label, i))
            await self.conn.commit()

    async def close(self) -> None:
        self.conn.close()
        self.auto.close()


# -- one backend --------------------------------------------------------------------------------


async def _timed_workflow(
    rt: durable.Runtime, wf: durable.Workflow[Any, Any], steps: int, workflow_id: str
) -> tuple[float, float, float]:
    """Seconds per step: (wall inside the body, process CPU inside the body, wall of the whole
    ``runtime.run``)."""
    started = time.perf_counter()
    result = await rt.run(wf, steps, workflow_id=workflow_id)
    elapsed = time.perf_counter() - started
    if result != steps:
        raise RuntimeError(f"workflow {workflow_id} returned {result!r}, expected {steps}")
    wall, cpu = BODY_SECONDS.pop(workflow_id)
    return wall / steps, cpu / steps, elapsed / steps


async def _paired(
    rt: durable.Runtime, floor: Floor, steps: int, workflow_id: str
) -> tuple[list[float], list[float]]:
    PAIRED_FLOOR[workflow_id] = floor
    try:
        await rt.run(paired_workflow, steps, workflow_id=workflow_id)
    finally:
        del PAIRED_FLOOR[workflow_id]
    return PAIRED_SAMPLES.pop(workflow_id)


async def measure(
    backend: durable.SQLAlchemyBackend,
    floor: Floor,
    *,
    label: str,
    steps: int,
    repeat: int,
    warmup: int,
) -> dict[str, Any]:
    """Interleave floor runs and workflow runs; medians of the runs after the warm-up."""
    keys = ["floor", "floor_cpu", "floor1", "floor1_cpu", "async", "async_cpu", "async_e2e"]
    keys += ["sync", "sync_cpu", "sync_e2e", "paired_step", "paired_floor"]
    series: dict[str, list[float]] = {k: [] for k in keys}
    async with durable.Runtime(
        backend, executor_id="bench-overhead", recover=False, registry=REGISTRY
    ) as rt:
        for run in range(warmup + repeat):
            tag = f"{label}-{run}"
            figures: dict[str, float] = {}
            figures["floor"], figures["floor_cpu"] = await floor.run(f"floor-{tag}", steps)
            figures["floor1"], figures["floor1_cpu"] = await floor.run_autocommit(
                f"floor1-{tag}", steps
            )
            figures["async"], figures["async_cpu"], figures["async_e2e"] = await _timed_workflow(
                rt, async_workflow, steps, f"async-{tag}"
            )
            figures["sync"], figures["sync_cpu"], figures["sync_e2e"] = await _timed_workflow(
                rt, sync_workflow, steps, f"sync-{tag}"
            )
            paired_steps, paired_rows = await _paired(rt, floor, steps, f"paired-{tag}")
            kept = run >= warmup
            bl.log(
                f"{label} run {run + 1}/{warmup + repeat}{'' if kept else ' (warm-up)'}: "
                f"floor {figures['floor'] * 1e6:.0f} us, async step {figures['async'] * 1e6:.0f} "
                f"us, sync step {figures['sync'] * 1e6:.0f} us, paired step/floor "
                f"{bl.ratio(statistics.median(paired_steps), statistics.median(paired_rows)):.2f}x"
            )
            if kept:
                for key, seconds in figures.items():
                    series[key].append(seconds * 1e6)
                series["paired_step"] += [s * 1e6 for s in paired_steps]
                series["paired_floor"] += [s * 1e6 for s in paired_rows]
    stats = {key: bl.summary(values) for key, values in series.items()}
    floor_us = stats["floor"]["median"]
    return {
        "steps": steps,
        "repeat": repeat,
        "warmup": warmup,
        "floor_us": stats["floor"],
        "floor_cpu_us": stats["floor_cpu"],
        "round_trip_floor_us": stats["floor1"],
        "round_trip_floor_cpu_us": stats["floor1_cpu"],
        "async_round_trip_ratio": bl.ratio(stats["async"]["median"], stats["floor1"]["median"]),
        "sync_round_trip_ratio": bl.ratio(stats["sync"]["median"], stats["floor1"]["median"]),
        "async_step_us": stats["async"],
        "async_step_cpu_us": stats["async_cpu"],
        "async_step_end_to_end_us": stats["async_e2e"],
        "sync_step_us": stats["sync"],
        "sync_step_cpu_us": stats["sync_cpu"],
        "sync_step_end_to_end_us": stats["sync_e2e"],
        "async_ratio": bl.ratio(stats["async"]["median"], floor_us),
        "sync_ratio": bl.ratio(stats["sync"]["median"], floor_us),
        "paired": {
            "step_us": stats["paired_step"],
            "floor_us": stats["paired_floor"],
            "ratio": bl.ratio(stats["paired_step"]["median"], stats["paired_floor"]["median"]),
        },
        "runs_us": {
            key: [round(v, 1) for v in values]
            for key, values in series.items()
            if not key.startswith("paired")
        },
    }


async def bench_sqlite(directory: Path, *, steps: int, repeat: int, warmup: int) -> dict[str, Any]:
    db, floor_db = directory / "overhead.db", directory / "overhead-floor.db"
    bl.remove_sqlite(db)
    bl.remove_sqlite(floor_db)
    backend = durable.connect(bl.sqlite_url(db))
    assert isinstance(backend, durable.SQLAlchemyBackend)
    floor = SQLiteFloor(floor_db)
    try:
        result = await measure(
            backend, floor, label="sqlite", steps=steps, repeat=repeat, warmup=warmup
        )
    finally:
        floor.close()
    result["driver"] = "sqlite3 (stdlib), run inline; WAL, synchronous=NORMAL, BEGIN IMMEDIATE"
    result["database"] = str(db)
    return result


async def bench_postgres(
    url: str, *, steps: int, repeat: int, warmup: int, keep: bool
) -> dict[str, Any]:
    bl.ensure_pg_database(url)
    bl.reset_pg_schema(url, PG_SCHEMA)
    backend = bl.pg_connect_backend(url, PG_SCHEMA)
    floor = await PostgresFloor.open(url, PG_SCHEMA)
    try:
        result = await measure(
            backend, floor, label="postgres", steps=steps, repeat=repeat, warmup=warmup
        )
    finally:
        await floor.close()
        if not keep:
            bl.drop_pg_schema(url, PG_SCHEMA)
    result["driver"] = f"psycopg {psycopg.__version__} async (SQLAlchemy AsyncEngine + run_sync)"
    result["database"] = f"{backend.url.render_as_string(hide_password=True)} schema {PG_SCHEMA}"
    return result


async def bench_mysql(
    url: str, *, steps: int, repeat: int, warmup: int, keep: bool
) -> dict[str, Any]:
    import aiomysql

    bl.recreate_mysql_database(url)
    backend = durable.connect(url, engine_options={"pool_size": 5})
    assert isinstance(backend, durable.SQLAlchemyBackend)
    floor = await MySQLFloor.open(url)
    try:
        result = await measure(
            backend, floor, label="mysql", steps=steps, repeat=repeat, warmup=warmup
        )
    finally:
        await floor.close()
        if not keep:
            bl.recreate_mysql_database(url, drop_only=True)
    result["driver"] = f"aiomysql {aiomysql.__version__} (SQLAlchemy AsyncEngine), READ COMMITTED"
    result["database"] = backend.url.render_as_string(hide_password=True)
    return result


# -- the command --------------------------------------------------------------------------------


def evaluate(results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    targets = []
    if "sqlite" in results:
        r = results["sqlite"]
        for case, key, headline in (
            ("async step", "async_step_us", True),
            ("sync step (sync workflow)", "sync_step_us", False),
        ):
            targets.append(
                bl.target(
                    f"{case} <= {SQLITE_TARGET_US:g} us",
                    r[key]["median"],
                    SQLITE_TARGET_US,
                    "us",
                    backend="sqlite",
                    headline=headline,
                )
            )
        targets.append(
            bl.target(
                f"async step <= {SQLITE_FLOOR_TARGET_RATIO:g}x commit floor (issue #11)",
                r["async_ratio"],
                SQLITE_FLOOR_TARGET_RATIO,
                "x",
                backend="sqlite",
                headline=False,
            )
        )
    if "postgres" in results:
        r = results["postgres"]
        for case, value, headline in (
            ("async step", r["async_ratio"], True),
            ("async step, paired", r["paired"]["ratio"], False),
            ("sync step (sync workflow)", r["sync_ratio"], False),
        ):
            targets.append(
                bl.target(
                    f"{case} <= {PG_TARGET_RATIO:g}x floor",
                    value,
                    PG_TARGET_RATIO,
                    "x",
                    backend="postgres",
                    headline=headline,
                )
            )
        targets.append(
            bl.target(
                f"async step <= {PG_ROUND_TRIP_TARGET_RATIO:g}x one-round-trip floor (issue #11)",
                r["async_round_trip_ratio"],
                PG_ROUND_TRIP_TARGET_RATIO,
                "x",
                backend="postgres",
                headline=False,
            )
        )
    return targets


def report(document: dict[str, Any]) -> None:
    rows = []
    for name, r in document["results"].items():
        floor, floor_cpu = r["floor_us"]["median"], r["floor_cpu_us"]["median"]
        floor1 = r["round_trip_floor_us"]["median"]
        for case, key, ratio_key in (
            ("async steps", "async_step", "async_ratio"),
            ("sync steps, sync workflow", "sync_step", "sync_ratio"),
        ):
            one_trip = r[ratio_key.replace("_ratio", "_round_trip_ratio")]
            rows.append(
                (
                    name,
                    case,
                    r[f"{key}_us"]["median"],
                    r[f"{key}_cpu_us"]["median"],
                    r[f"{key}_end_to_end_us"]["median"],
                    floor,
                    floor_cpu,
                    f"{r[ratio_key]:.2f}x",
                    floor1,
                    f"{one_trip:.2f}x",
                )
            )
        p = r["paired"]
        rows.append(
            (
                name,
                "async steps, paired with floor rows",
                p["step_us"]["median"],
                None,
                None,
                p["floor_us"]["median"],
                None,
                f"{p['ratio']:.2f}x",
                None,
                None,
            )
        )
    config = document["config"]
    bl.print_table(
        f"Per-step cost: {config['steps']} no-op steps, median of {config['repeat']} runs "
        "(microseconds; cpu = this process's CPU time)",
        [
            "backend",
            "case",
            "step",
            "step cpu",
            "whole run",
            "floor",
            "floor cpu",
            "step/floor",
            "1-trip floor",
            "step/1-trip",
        ],
        rows,
    )
    bl.print_targets(document["targets"])


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = bl.parser(__doc__)
    parser.add_argument("--steps", type=int, default=500, help="steps per workflow (500)")
    parser.add_argument("--repeat", type=int, default=5, help="measured runs (5)")
    parser.add_argument("--warmup", type=int, default=1, help="discarded first runs (1)")
    bl.add_run_options(parser, quick=False)
    bl.add_mysql_backend(parser)
    args = parser.parse_args(argv)
    if args.steps < 1 or args.repeat < 1 or args.warmup < 0:
        parser.error("--steps and --repeat must be positive, --warmup not negative")
    return args


async def run(args: argparse.Namespace) -> dict[str, Any]:
    backends = ["sqlite", "postgres"] if args.backend == "all" else [args.backend]
    load_at_start = [round(x, 2) for x in os.getloadavg()]
    results: dict[str, dict[str, Any]] = {}
    if "sqlite" in backends:
        directory = args.sqlite_dir or Path(tempfile.mkdtemp(prefix="durable-bench-"))
        directory.mkdir(parents=True, exist_ok=True)
        try:
            results["sqlite"] = await bench_sqlite(
                directory, steps=args.steps, repeat=args.repeat, warmup=args.warmup
            )
        finally:
            if args.sqlite_dir is None and not args.keep:
                shutil.rmtree(directory, ignore_errors=True)
    if "postgres" in backends:
        results["postgres"] = await bench_postgres(
            args.pg_url, steps=args.steps, repeat=args.repeat, warmup=args.warmup, keep=args.keep
        )
    if "mysql" in backends:
        results["mysql"] = await bench_mysql(
            args.mysql_url, steps=args.steps, repeat=args.repeat, warmup=args.warmup, keep=args.keep
        )
    return {
        "benchmark": "step_overhead",
        "config": {
            "backends": backends,
            "steps": args.steps,
            "repeat": args.repeat,
            "warmup": args.warmup,
        },
        "machine": {
            **bl.machine_info(args.pg_url if "postgres" in backends else None),
            "load_average_at_start": load_at_start,
        },
        "results": results,
        "targets": evaluate(results),
    }


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print its tables, write the JSON file; return the results."""
    return bl.main(argv, parse_args, run, report)


if __name__ == "__main__":
    main()
