"""The claims next to finished work: what claiming costs once many workflows have run to the end.

A workflow that ran to the end leaves its header and its steps, and its task row deleted (the
finish deletes it). A deleted row is not gone at once: InnoDB keeps it, delete-marked, in every
index until its purge removes it, and purge waits for the oldest open read view on the server (a
long report, a backup, any transaction left open anywhere); PostgreSQL keeps dead tuples until
vacuum, likewise held back by the oldest snapshot. The claims walk the tasks table's
``(priority, run_after, id)`` index from its head, where those rows are.

Per size in ``--finished`` (plus 0, the baseline), on a new database: that many finished
workflows (header, one step, and a task row inserted then deleted, as the finish does), five
pending tasks in a queue with a concurrency limit, then the medians of:

* ``claim``: ``claim_available_tasks`` (limit 1) of one task just created (then finished, as
  the backend kit does);
* ``claim 10``: ``claim_available_tasks`` (limit 10) of ten tasks just created;
* ``claim queue``: ``claim_queue_tasks`` of one task of the limited queue (claimed, then released);
* ``find``: ``find_available_tasks`` (limit 10; what ``recover`` runs);
* ``deadlines``: ``cancel_expired_workflows`` (the sweep every worker runs every second).

With ``--hold-purge`` another connection holds a read view open from before the load to the
end (``START TRANSACTION WITH CONSISTENT SNAPSHOT`` on MySQL/MariaDB, a ``REPEATABLE READ``
transaction on PostgreSQL), as a long transaction elsewhere on the server would: the deleted
task rows then stay in the index for the whole measurement.

    python benchmarks/claim_backlog.py [--backend mysql|postgres|all] [--finished 2000,20000]
        [--samples 30] [--hold-purge] [--mysql-url URL] [--pg-url URL] [--json FILE]

Each database is ``<URL's database>_backlog``, created empty and dropped afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import backend_kit
import benchlib as bl
import sqlalchemy as sa
from sqlalchemy.engine import make_url

import durable
from durable.models import QueueInfo, TaskSpec, WorkflowSnapshot, WorkflowStatus
from durable.testing import benchkit

TTL = timedelta(minutes=5)
OPERATIONS = ("claim", "claim 10", "claim queue", "find", "deadlines")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--backend", choices=["mysql", "postgres", "all"], default="mysql")
    p.add_argument("--finished", default="2000,20000", help="sizes, comma-separated")
    p.add_argument("--samples", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--hold-purge", action="store_true", help="hold a read view open meanwhile")
    p.add_argument("--mysql-url", default=bl.DEFAULT_MYSQL_URL)
    p.add_argument("--pg-url", default=bl.DEFAULT_PG_URL)
    p.add_argument("--json", help="write the results here")
    return p.parse_args(argv)


def _database(url: str) -> str:
    parsed = make_url(url)
    return parsed.set(database=f"{parsed.database}_backlog").render_as_string(hide_password=False)


class _ReadView:
    """A transaction holding a snapshot open on another connection (``--hold-purge``)."""

    def __init__(self, kind: str, url: str) -> None:
        self.kind, self.url = kind, url
        self.conn: Any = None

    def open(self) -> None:
        if self.kind == "mysql":
            import pymysql

            self.conn = pymysql.connect(**bl.mysql_params(self.url))
            with self.conn.cursor() as cursor:
                cursor.execute("START TRANSACTION WITH CONSISTENT SNAPSHOT")
                cursor.execute("SELECT COUNT(*) FROM durable_workflows")
                cursor.fetchall()
        else:
            import psycopg

            self.conn = psycopg.connect(bl.pg_conninfo(self.url), autocommit=True)
            self.conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
            self.conn.execute("SELECT COUNT(*) FROM durable_workflows").fetchall()

    def close(self) -> None:
        if self.conn is not None:
            if self.kind == "mysql":
                self.conn.rollback()
            else:
                self.conn.execute("ROLLBACK")
            self.conn.close()
            self.conn = None


async def _load(backend: Any, count: int) -> None:
    """``count`` finished workflows (the kit's rows), and their task rows, inserted and then
    deleted as their finishes would have."""
    from durable.backends.sql import schema

    await benchkit.load_finished(backend, benchkit.KitSizes(finished=count))
    now = datetime.now(UTC)

    def tasks_of(first: int, last: int) -> Callable[[sa.Connection], None]:
        def run(conn: sa.Connection) -> None:
            conn.execute(
                sa.insert(schema.tasks),
                [
                    {
                        "instance_id": f"kit-done-{i:07d}",
                        "task_id": "workflow",
                        "name": "kit",
                        "queue": "default",
                        "priority": 0,
                        "run_after": now - timedelta(seconds=count - i),
                        "claimed_by": "kit-loader",
                        "claim_expires_at": now + TTL,
                        "attempts": 1,
                        "created_at": now,
                    }
                    for i in range(first, last)
                ],
            )

        return run

    for first in range(0, count, 5_000):
        await backend._run(tasks_of(first, min(count, first + 5_000)), what="load tasks")
    await backend._run(
        lambda conn: conn.execute(sa.delete(schema.tasks).where(schema.tasks.c.name == "kit")),
        what="finish the loaded tasks",
    )


async def _median(samples: int, warmup: int, one: Callable[[int], Awaitable[float]]) -> float:
    spent = [await one(n) for n in range(warmup + samples)]
    return statistics.median(spent[warmup:]) * 1e6


async def measure(backend: Any, prefix: str, samples: int, warmup: int) -> dict[str, float]:
    """The median µs of each operation in :data:`OPERATIONS`."""
    worker = "backlog-worker"

    async def create(instance_id: str, queue: str = "default") -> None:
        snapshot = WorkflowSnapshot(id=instance_id, name="backlog", queue=queue)
        spec = TaskSpec(instance_id=instance_id, name="backlog", queue=queue)
        await backend.create_workflow(snapshot, task=spec)

    async def finish(instance_id: str) -> None:
        await backend.finish_workflow(
            instance_id, worker_id=worker, status=WorkflowStatus.SUCCEEDED
        )

    async def claim_one(n: int) -> float:
        instance_id = f"{prefix}-one-{n}"
        await create(instance_id)
        started = time.perf_counter()
        claims = await backend.claim_available_tasks(worker, 1, TTL)
        spent = time.perf_counter() - started
        if [c.instance_id for c in claims] != [instance_id]:
            raise RuntimeError(f"claimed {claims!r}, expected {instance_id!r}")
        await finish(instance_id)
        return spent

    async def claim_ten(n: int) -> float:
        ids = [f"{prefix}-ten-{n}-{i}" for i in range(10)]
        for instance_id in ids:
            await create(instance_id)
        started = time.perf_counter()
        claims = await backend.claim_available_tasks(worker, 10, TTL)
        spent = time.perf_counter() - started
        if sorted(c.instance_id for c in claims) != sorted(ids):
            raise RuntimeError(f"claimed {claims!r}, expected {ids!r}")
        for instance_id in ids:
            await finish(instance_id)
        return spent

    async def claim_queue(n: int) -> float:
        started = time.perf_counter()
        claims = await backend.claim_queue_tasks(worker, "backlog-limited", 1, TTL)
        spent = time.perf_counter() - started
        if len(claims) != 1:
            raise RuntimeError(f"claimed {claims!r} from the limited queue, expected one")
        await backend.release_task_claim(claims[0].instance_id, claims[0].task_id, worker)
        return spent

    async def find(n: int) -> float:
        started = time.perf_counter()
        found = await backend.find_available_tasks(worker, 10)
        spent = time.perf_counter() - started
        if not found:
            raise RuntimeError("found no available task (the limited queue's are)")
        return spent

    async def deadlines(n: int) -> float:
        started = time.perf_counter()
        await backend.cancel_expired_workflows(limit=100)
        return time.perf_counter() - started

    await backend.put_queue(QueueInfo(name="backlog-limited", concurrency=5))
    for i in range(5):
        await create(f"{prefix}-queued-{i}", queue="backlog-limited")
    figures = {}
    operations = (claim_one, claim_ten, claim_queue, find, deadlines)
    for name, one in zip(OPERATIONS, operations, strict=True):
        figures[name] = await _median(samples, warmup, one)
    return figures


async def run_backend(kind: str, args: argparse.Namespace) -> dict[str, dict[str, float]]:
    url = _database(args.mysql_url if kind == "mysql" else args.pg_url)
    sizes = [0] + [int(s) for s in args.finished.split(",") if s.strip()]
    results: dict[str, dict[str, float]] = {}
    for size in sizes:
        if kind == "mysql":
            bl.recreate_mysql_database(url)
        else:
            backend_kit.recreate_pg_database(url)
        view = _ReadView(kind, url)
        try:
            async with durable.connect(url) as backend:
                if args.hold_purge:
                    view.open()
                bl.log(f"{kind}: {size:,} finished workflows")
                await _load(backend, size)
                results[str(size)] = await measure(backend, f"m{size}", args.samples, args.warmup)
        finally:
            view.close()
            if kind == "mysql":
                bl.recreate_mysql_database(url, drop_only=True)
            else:
                backend_kit.recreate_pg_database(url, drop_only=True)
    return results


async def run(args: argparse.Namespace) -> dict[str, Any]:
    kinds = ("mysql", "postgres") if args.backend == "all" else (args.backend,)
    results = {kind: await run_backend(kind, args) for kind in kinds}
    return {"hold_purge": args.hold_purge, "results": results, "machine": bl.machine_info()}


def report(document: dict[str, Any]) -> None:
    held = " (a read view held open)" if document["hold_purge"] else ""
    for kind, by_size in document["results"].items():
        base = by_size["0"]
        rows = []
        for size, figures in by_size.items():
            rows.append(
                [
                    f"{int(size):,}",
                    *(f"{figures[op]:,.0f} ({figures[op] / base[op]:.2f}x)" for op in OPERATIONS),
                ]
            )
        bl.print_table(
            f"{kind}: median µs (ratio to 0 finished){held}", ["finished", *OPERATIONS], rows
        )


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    document = asyncio.run(run(args))
    report(document)
    bl.write_json(args.json, document)
    return document


if __name__ == "__main__":
    main()
