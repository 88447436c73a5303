"""A transaction the database rolls back to break a deadlock runs again
(``SQLAlchemyBackend._run``), on PostgreSQL (SQLSTATE 40P01) and MySQL/MariaDB (error 1213),
so that the caller never sees the deadlock. On PostgreSQL it used to reach the caller: producers
enqueueing the same idempotency keys at once, in different orders, failed with "deadlock
detected" (``test_enqueue_many``)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.util import await_

import durable
from durable import SQLAlchemyBackend
from durable.backends.sql.schema import workflows
from durable.testing.contract._support import create


@pytest.mark.parametrize(
    "url_fixture",
    [
        pytest.param("pg_url", marks=pytest.mark.postgres),
        pytest.param("mysql_backend_url", marks=pytest.mark.mysql),
    ],
)
async def test_a_deadlock_victim_runs_again(
    url_fixture: str, request: pytest.FixtureRequest
) -> None:
    """Two transactions lock two rows in opposite orders: the database rolls one back, and the
    backend runs it again, so both succeed."""
    url = request.getfixturevalue(url_fixture)
    async with durable.connect(url) as backend:
        assert isinstance(backend, SQLAlchemyBackend)
        for instance_id in ("a", "b"):
            await create(backend, instance_id)
        both_locked = asyncio.Barrier(2)
        runs: list[str] = []

        def locker(first: str, second: str) -> Any:
            def fn(conn: sa.Connection) -> None:
                runs.append(first)
                lock = sa.select(workflows.c.id).with_for_update()
                conn.execute(lock.where(workflows.c.id == first)).all()
                if runs.count(first) == 1:  # the first run waits for the other to lock too
                    await_(both_locked.wait())
                conn.execute(lock.where(workflows.c.id == second)).all()

            return fn

        await asyncio.gather(
            backend._run(locker("a", "b"), what="lock a then b"),
            backend._run(locker("b", "a"), what="lock b then a"),
        )
        assert sorted(runs) in (["a", "a", "b"], ["a", "b", "b"])  # one of them ran twice
