"""A caller cancelled in the middle of a call to the store (``result(timeout=...)`` running
out, a task cancelled) leaves no transaction open behind it: another connection writes at once.

CI saw it on aiosqlite: a ``result`` whose timeout ran out in the middle of its read left that
connection inside ``BEGIN IMMEDIATE``, holding the file's write lock, and every other writer
waited out its 30 s busy timeout. Several impatient callers at once, against a worker that runs
short workflows, interrupt the store's calls at every point of their transactions.
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
import time

import pytest
import sqlalchemy as sa

import durable
from durable.backends.sql import SQLAlchemyBackend
from durable.backends.sql.schema import workflows

ROUNDS_FOR = 2.0  # seconds of impatient callers


@durable.workflow(name="cancelled_calls.naps.v1")
async def naps() -> int:
    await durable.sleep(0.01)
    return 1


@pytest.fixture(
    params=["sqlite", "aiosqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def url(request: pytest.FixtureRequest) -> str:
    name = {"sqlite": "sqlite_url", "aiosqlite": "aiosqlite_url", "postgres": "pg_url"}
    return str(request.getfixturevalue(name[request.param]))


def _writes_at_once(url: str) -> bool:
    """Whether another connection takes the write lock (SQLite) or an exclusive lock on the
    workflows table (PostgreSQL) within a few seconds: nothing was left holding it."""
    parsed = sa.make_url(url)
    if parsed.get_backend_name() == "sqlite":
        assert parsed.database is not None
        con = sqlite3.connect(parsed.database, timeout=5)
        try:
            con.execute("BEGIN IMMEDIATE")
            con.execute("ROLLBACK")
            return True
        except sqlite3.OperationalError:
            return False
        finally:
            con.close()
    engine = sa.create_engine(parsed.set(drivername="postgresql+psycopg"))
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql("SET LOCAL lock_timeout = '5s'")
            conn.exec_driver_sql(f"LOCK TABLE {workflows.name} IN ACCESS EXCLUSIVE MODE")
        return True
    except sa.exc.OperationalError:
        return False
    finally:
        engine.dispose()


async def test_an_interrupted_call_leaves_no_transaction_open(url: str) -> None:
    runtime = durable.Runtime(SQLAlchemyBackend(url), poll_interval=0.01)
    async with runtime:
        await runtime.start_worker(poll_interval=0.01)
        rounds = 0
        deadline = time.monotonic() + ROUNDS_FOR
        while time.monotonic() < deadline:
            workflow_id = await runtime.client.enqueue(naps)

            async def impatient(workflow_id: str = workflow_id) -> None:
                for _ in range(10):
                    try:  # cut off anywhere in its polls, most often in the middle of one
                        await runtime.client.result(workflow_id, timeout=random.uniform(0, 0.01))
                        return
                    except TimeoutError:
                        pass

            await asyncio.gather(*(impatient() for _ in range(3)))
            rounds += 1
            assert await asyncio.to_thread(_writes_at_once, url), (
                f"a cancelled call left a transaction open (round {rounds})"
            )
        assert await runtime.client.result(workflow_id, timeout=30) == 1  # the store still works
