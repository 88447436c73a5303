"""What a transactional step (``@durable.transaction``) costs, next to the floor: one
transaction holding the user's write and a checkpoint row, and nothing else.

For each backend, interleaved run by run (so that a noisy machine slows both sides alike):

* **transactional steps**: a workflow of ``--steps`` transactional steps, each inserting one
  row into the application's ``bench_ledger`` table, timed inside the workflow's body (from
  before the first step to after the last), divided by the number of steps. SQLite: ``def``
  steps in a ``def`` workflow (each step's transaction runs in the workflow's thread);
  PostgreSQL: ``async def`` steps on an ``AsyncConnection`` in an ``async def`` workflow.
* **the floor**: a loop of transactions, each the same ledger INSERT plus one INSERT of a
  checkpoint row into a table shaped like durable's steps table, then COMMIT, through
  SQLAlchemy Core on the same engine durable uses (the same driver, pool and settings).

Each figure is the median of ``--repeat`` runs. **Paired**: a workflow that alternates one
transactional step and one floor transaction, step by step, each timed alone (the median of
every pair of every run): both sides of a pair meet the same machine, so the commit latency's
drift between runs (large on a shared machine) cancels out. The issue's target: a
transactional step costs at most the floor (the ratio is reported; above 1 is the price of the
lease fence and the step's bookkeeping).

    python benchmarks/transactional_step.py [--backend sqlite|postgres|all] [--steps 300]
        [--repeat 5] [--pg-url postgresql+psycopg://...] [--json out.json] [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib as bl
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

import durable
from durable.backends.sql.schema import steps

META = sa.MetaData()
LEDGER = sa.Table(
    "bench_ledger",
    META,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("entry", sa.String(100), nullable=False),
)
FLOOR_STEPS = sa.Table(  # durable's steps table's columns, without its foreign key
    "bench_floor_steps",
    META,
    *[sa.Column(c.name, c.type, primary_key=c.primary_key) for c in steps.columns],
)
TIMINGS: list[float] = []
#: Per-step pairs of the paired flows: (transactional step, floor transaction), in microseconds.
PAIRS: list[tuple[float, float]] = []
#: The engine the paired flows run their floor transactions on (set by :func:`measure`).
ENGINE: list[Any] = []


@durable.transaction(name="bench.tx.write")
def write(conn: sa.Connection, n: int) -> int:
    conn.execute(LEDGER.insert().values(entry=f"step {n}"))
    return n


@durable.transaction(name="bench.tx.write_async")
async def write_async(conn: AsyncConnection, n: int) -> int:
    await conn.execute(LEDGER.insert().values(entry=f"step {n}"))
    return n


@durable.workflow(name="bench.tx.sync")
def sync_flow(count: int) -> int:
    started = time.perf_counter()
    for n in range(count):
        write(n)
    TIMINGS.append((time.perf_counter() - started) / count * 1e6)
    return count


@durable.workflow(name="bench.tx.async")
async def async_flow(count: int) -> int:
    started = time.perf_counter()
    for n in range(count):
        await write_async(n)
    TIMINGS.append((time.perf_counter() - started) / count * 1e6)
    return count


@durable.workflow(name="bench.tx.paired_sync")
def paired_sync(count: int, run: int) -> int:
    engine = ENGINE[0]
    for n in range(count):
        t0 = time.perf_counter()
        write(n)
        t1 = time.perf_counter()
        with engine.begin() as conn:
            conn.execute(LEDGER.insert().values(entry=f"floor {n}"))
            conn.execute(FLOOR_STEPS.insert().values(_checkpoint(PAIRED_BASE + run * count + n)))
        PAIRS.append(((t1 - t0) * 1e6, (time.perf_counter() - t1) * 1e6))
    return count


@durable.workflow(name="bench.tx.paired_async")
async def paired_async(count: int, run: int) -> int:
    engine = ENGINE[0]
    for n in range(count):
        t0 = time.perf_counter()
        await write_async(n)
        t1 = time.perf_counter()
        async with engine.begin() as conn:
            await conn.execute(LEDGER.insert().values(entry=f"floor {n}"))
            await conn.execute(
                FLOOR_STEPS.insert().values(_checkpoint(PAIRED_BASE + run * count + n))
            )
        PAIRS.append(((t1 - t0) * 1e6, (time.perf_counter() - t1) * 1e6))
    return count


#: Floor rows of the paired flows are numbered from here (apart from the loop's).
PAIRED_BASE = 10_000_000


def _checkpoint(n: int) -> dict[str, Any]:
    now = datetime.now(UTC)
    return {
        "workflow_id": "floor",
        "position": n,
        "name": "bench.tx.write",
        "status": "succeeded",
        "input": None,
        "output": str(n),
        "error": None,
        "child_workflow_id": None,
        "attempts": 1,
        "executor_id": "bench",
        "started_at": now,
        "completed_at": now,
        "rerun": False,
    }


def floor_sync(engine: sa.Engine, count: int, run: int) -> float:
    started = time.perf_counter()
    for n in range(count):
        with engine.begin() as conn:
            conn.execute(LEDGER.insert().values(entry=f"floor {n}"))
            conn.execute(FLOOR_STEPS.insert().values(_checkpoint(run * count + n)))
    return (time.perf_counter() - started) / count * 1e6


async def floor_async(engine: AsyncEngine, count: int, run: int) -> float:
    started = time.perf_counter()
    for n in range(count):
        async with engine.begin() as conn:
            await conn.execute(LEDGER.insert().values(entry=f"floor {n}"))
            await conn.execute(FLOOR_STEPS.insert().values(_checkpoint(run * count + n)))
    return (time.perf_counter() - started) / count * 1e6


async def measure(backend: durable.SQLAlchemyBackend, count: int, repeat: int) -> dict[str, Any]:
    engine = backend.engine
    is_async = isinstance(engine, AsyncEngine)
    step_us: list[float] = []
    floor_us: list[float] = []
    ENGINE[:] = [engine]
    PAIRS.clear()
    async with durable.Runtime(backend, recover=False) as rt:
        if isinstance(engine, AsyncEngine):
            async with engine.begin() as conn:
                await conn.run_sync(META.create_all)
        else:
            META.create_all(engine)
        for run in range(repeat + 1):  # the first run of each warms up, discarded
            TIMINGS.clear()
            if is_async:
                assert isinstance(engine, AsyncEngine)
                await rt.run(async_flow, count, workflow_id=f"tx-{uuid.uuid4()}")
                floor = await floor_async(engine, count, run)
            else:
                assert isinstance(engine, sa.Engine)
                await rt.run(sync_flow, count, workflow_id=f"tx-{uuid.uuid4()}")
                floor = floor_sync(engine, count, run)
            if not run:
                continue
            step_us.append(TIMINGS[-1])
            floor_us.append(floor)
            flow = paired_async if is_async else paired_sync
            await rt.run(flow, count, run, workflow_id=f"tx-paired-{uuid.uuid4()}")
    step, base = statistics.median(step_us), statistics.median(floor_us)
    paired_step = statistics.median(p[0] for p in PAIRS)
    paired_floor = statistics.median(p[1] for p in PAIRS)
    return {
        "shape": "async def steps, AsyncConnection" if is_async else "def steps, Connection",
        "step_us": bl.summary(step_us),
        "floor_us": bl.summary(floor_us),
        "ratio": bl.ratio(step, base),
        "paired_step_us": paired_step,
        "paired_floor_us": paired_floor,
        "paired_ratio": bl.ratio(paired_step, paired_floor),
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    count = 5 if args.quick else args.steps
    repeat = 2 if args.quick else args.repeat
    results: dict[str, Any] = {}
    if args.backend in ("sqlite", "all"):
        with tempfile.TemporaryDirectory(dir=args.sqlite_dir) as folder:
            backend = durable.connect(bl.sqlite_url(Path(folder) / "tx.db"))
            assert isinstance(backend, durable.SQLAlchemyBackend)
            results["sqlite"] = await measure(backend, count, repeat)
    if args.backend in ("postgres", "all"):
        bl.ensure_pg_database(args.pg_url)
        schema = f"bench_tx_{uuid.uuid4().hex[:8]}"
        bl.reset_pg_schema(args.pg_url, schema)
        try:
            results["postgres"] = await measure(
                bl.pg_connect_backend(args.pg_url, schema), count, repeat
            )
        finally:
            if not args.keep:
                bl.drop_pg_schema(args.pg_url, schema)
    return {
        "benchmark": "transactional_step",
        "steps": count,
        "repeat": repeat,
        "machine": bl.machine_info(args.pg_url if args.backend != "sqlite" else None),
        "results": results,
    }


def report(document: dict[str, Any]) -> None:
    rows = [
        [
            name,
            r["shape"],
            f"{r['step_us']['median']:.0f}",
            f"{r['floor_us']['median']:.0f}",
            f"{r['ratio']:.2f}x",
            f"{r['paired_step_us']:.0f} / {r['paired_floor_us']:.0f}",
            f"{r['paired_ratio']:.2f}x",
        ]
        for name, r in document["results"].items()
    ]
    bl.print_table(
        f"a transactional step vs one transaction with the write and a checkpoint row "
        f"({document['steps']} steps, median of {document['repeat']})",
        ["backend", "shape", "step (us)", "floor (us)", "ratio", "paired (us)", "paired ratio"],
        rows,
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = bl.parser(__doc__)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--repeat", type=int, default=5)
    bl.add_run_options(p)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print its table, write the JSON file; return the results."""
    return bl.main(argv, parse_args, run, report)


if __name__ == "__main__":
    main()
