"""``durable_enqueue()``, the SQL contract of an enqueue on PostgreSQL (migration 0013), called
from ``psql`` (a client that is not Python): the rows, the idempotency and the wake-up are
those of ``Client.enqueue``, and a worker runs what it recorded."""

from __future__ import annotations

import asyncio
import shutil
import subprocess

import pytest
import sqlalchemy as sa
from support import pg_conninfo

import durable
from durable.backends.sql.schema import tasks, workflows

pytestmark = pytest.mark.postgres

psql_missing = pytest.mark.skipif(shutil.which("psql") is None, reason="psql is not installed")


@durable.workflow(name="test.sql.add.v1")
async def add(a: int, b: int, *, times: int = 1) -> int:
    return (a + b) * times


def psql(url: str, sql: str) -> str:
    done = subprocess.run(
        ["psql", pg_conninfo(url), "-v", "ON_ERROR_STOP=1", "-qAtX", "-c", sql],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if done.returncode != 0:
        raise AssertionError(done.stderr)
    return done.stdout.strip()


@psql_missing
async def test_psql_enqueues_what_enqueue_would_and_a_worker_runs_it(pg_url: str) -> None:
    async with durable.Runtime(durable.connect(pg_url), recover=False) as rt:
        reference = await rt.client.enqueue("test.sql.add.v1", 1, 2, idempotency_key="py")
        await rt.start_worker(poll_interval=30)  # no polling: only a NOTIFY wakes it in time
        await asyncio.sleep(0.2)  # the worker is listening
        wid = await asyncio.to_thread(
            psql,
            pg_url,
            "SELECT durable_enqueue('test.sql.add.v1', '[2, 3]', idempotency_key => 'sql-1', "
            "kwargs => '{\"times\": 10}')",
        )
        assert await rt.client.result(wid, timeout=10) == 50
        assert await rt.client.result(reference, timeout=10) == 3
        # the same key again: the same id, nothing new
        again = await asyncio.to_thread(
            psql, pg_url, "SELECT durable_enqueue('test.sql.add.v1', '[9, 9]', 'sql-1')"
        )
        assert again == wid
        # in a transaction that rolls back: nothing
        await asyncio.to_thread(
            psql,
            pg_url,
            "BEGIN; SELECT durable_enqueue('test.sql.add.v1', '[1, 1]', 'sql-2'); ROLLBACK;",
        )
        ref, sql = await rt.client.get_workflow(reference), await rt.client.get_workflow(wid)
    engine = sa.create_engine(pg_url)
    with engine.connect() as conn:
        keys = [r[0] for r in conn.execute(sa.select(workflows.c.idempotency_key))]
        assert sorted(keys) == ["py", "sql-1"]
        assert conn.execute(sa.select(sa.func.count()).select_from(tasks)).scalar_one() == 0
    engine.dispose()
    # the same header as enqueue's, field by field (but the arguments and ids)
    for field in ("name", "queue", "priority", "max_attempts", "parent_id", "deadline"):
        assert getattr(sql, field) == getattr(ref, field), field
    assert sql.input == {"args": [2, 3], "kwargs": {"times": 10}}


@psql_missing
def test_psql_errors_are_clear(pg_url: str) -> None:
    with durable.Client(pg_url) as client:
        client.enqueue_sync("test.sql.add.v1", 1, 2, idempotency_key="taken")
    with pytest.raises(AssertionError, match="belongs to workflow"):
        psql(pg_url, "SELECT durable_enqueue('test.other.v1', '[]', 'taken')")
    with pytest.raises(AssertionError, match="args must be a JSON array"):
        psql(pg_url, "SELECT durable_enqueue('test.sql.add.v1', '{\"a\": 1}')")
    with pytest.raises(AssertionError, match="max_attempts"):
        psql(pg_url, "SELECT durable_enqueue('test.sql.add.v1', max_attempts => 0)")


@psql_missing
def test_downgrade_drops_the_function(pg_url: str) -> None:
    with durable.Client(pg_url) as client:
        client.blocking(client.backend.downgrade("0010"))  # type: ignore[attr-defined]
        assert psql(pg_url, "SELECT count(*) FROM pg_proc WHERE proname = 'durable_enqueue'") == "0"
        client.blocking(client.backend.migrate())  # type: ignore[attr-defined]
    assert psql(pg_url, "SELECT count(*) FROM pg_proc WHERE proname = 'durable_enqueue'") == "1"
