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

#: The databases whose transactions wait for each other's row locks.
LOCKING_DATABASES = pytest.mark.parametrize(
    "url_fixture",
    [
        pytest.param("pg_url", marks=pytest.mark.postgres),
        pytest.param("mysql_backend_url", marks=pytest.mark.mysql),
    ],
)


@LOCKING_DATABASES
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


@LOCKING_DATABASES
async def test_a_cancel_takes_the_tasks_before_the_workflow_as_a_claim_does(
    url_fixture: str, request: pytest.FixtureRequest
) -> None:
    """A claim locks a task, then updates its workflow's row (to start it); a cancel updated the
    workflow's row, then deleted its tasks: the two deadlocked, and the claim (on PostgreSQL's
    direct path, which is not run again) failed with "deadlock detected"."""
    url = request.getfixturevalue(url_fixture)
    driver = {"postgresql": "postgresql+psycopg", "mysql": "mysql+pymysql"}
    parsed = sa.make_url(url)
    engine = sa.create_engine(parsed.set(drivername=driver[parsed.get_backend_name()]))
    try:
        async with durable.connect(url) as backend:
            await create(backend, "wf")
            with engine.connect() as claim:
                claim.exec_driver_sql(
                    "SELECT instance_id FROM durable_tasks WHERE instance_id = 'wf' FOR UPDATE"
                ).all()
                cancel = asyncio.ensure_future(backend.cancel_workflow("wf"))
                await asyncio.sleep(0.5)  # the cancel waits for the task's lock
                assert not cancel.done()
                # the claim starts the workflow: the cancel holds no lock on its row yet
                await asyncio.to_thread(
                    claim.exec_driver_sql,
                    "UPDATE durable_workflows SET status = 'running' WHERE id = 'wf'",
                )
                claim.commit()
            info = await cancel
            assert info.status.value == "cancelled"
            with pytest.raises(durable.TaskNotFoundError):
                await backend.get_task("wf", "workflow")
    finally:
        engine.dispose()
