"""Sync workflows record their sync steps from their own thread where the backend allows it
(SQLite files on the standard-library driver, the in-memory backend), and hop to the event loop
elsewhere. Either way the record is fenced by the claim and its errors reach the workflow."""

from __future__ import annotations

import sqlite3
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

import durable
from durable.backends import SQLAlchemyBackend
from durable.models import StepStatus, WorkflowStatus

registry = durable.Registry()


@durable.step(name="tests.sync_records.double")
def double(x: int) -> int:
    return 2 * x


@durable.step(name="tests.sync_records.steal")
def steal(path: str) -> str:
    """Another executor takes the workflow's claim over while this step runs."""
    with sqlite3.connect(path) as db:
        db.execute(
            "UPDATE durable_tasks SET claimed_by = 'exec-B', claim_expires_at = ?",
            ((datetime.now(UTC) + timedelta(hours=1)).replace(tzinfo=None).isoformat(" "),),
        )
    return "stolen"


@durable.workflow(name="tests.sync_records.chain.v1", registry=registry)
def chain(x: int) -> int:
    return double(double(double(x)))


@durable.workflow(name="tests.sync_records.lose.v1", registry=registry)
def lose(path: str) -> str:
    double(1)
    steal(path)
    return double(3)  # never reached: the record of steal is refused


def _step_insert_threads(backend: SQLAlchemyBackend) -> tuple[list[int], Any]:
    """The threads that insert step rows, seen by sqlite3 itself (a trace callback on every
    connection checked out of the pool), whether the statement goes through SQLAlchemy's
    execution layer or straight to sqlite3."""
    threads: list[int] = []

    def trace(statement: str) -> None:
        if statement.startswith("INSERT INTO durable_steps"):
            threads.append(threading.get_ident())

    def on_checkout(dbapi_connection: Any, *args: Any) -> None:
        dbapi_connection.set_trace_callback(trace)

    engine = backend.engine
    assert isinstance(engine, sa.Engine)
    sa.event.listen(engine, "checkout", on_checkout)
    return threads, lambda: sa.event.remove(engine, "checkout", on_checkout)


async def test_a_sqlite_file_records_sync_steps_from_the_workflow_thread(
    sqlite_url: str,
) -> None:
    backend = durable.connect(sqlite_url)
    assert isinstance(backend, SQLAlchemyBackend) and backend.records_steps_blocking
    threads, stop = _step_insert_threads(backend)
    try:
        async with durable.Runtime(backend, recover=False, registry=registry) as rt:
            assert await rt.run(chain, 1, workflow_id="c") == 8
            steps = await rt.list_steps("c")
    finally:
        stop()
    assert [(s.output, s.status) for s in steps] == [
        (2, StepStatus.SUCCEEDED),
        (4, StepStatus.SUCCEEDED),
        (8, StepStatus.SUCCEEDED),
    ]
    assert len(threads) == 3 and threading.get_ident() not in threads


async def test_an_in_memory_sqlite_database_records_on_the_loop() -> None:
    backend = durable.connect("sqlite:///:memory:")  # one shared connection: no second thread
    assert isinstance(backend, SQLAlchemyBackend) and not backend.records_steps_blocking
    with pytest.raises(NotImplementedError):
        backend.record_step_blocking("c", None, worker_id="w")  # type: ignore[arg-type]
    threads, stop = _step_insert_threads(backend)
    try:
        async with durable.Runtime(backend, recover=False, registry=registry) as rt:
            assert await rt.run(chain, 1, workflow_id="c") == 8
    finally:
        stop()
    assert threads == [threading.get_ident()] * 3


async def test_a_sync_step_that_lost_its_claim_records_nothing(tmp_path: Path) -> None:
    path = tmp_path / "lose.db"
    async with durable.Runtime(
        durable.connect(f"sqlite:///{path}"), executor_id="exec-A", recover=False, registry=registry
    ) as rt:
        with pytest.raises(durable.ClaimLostError) as lost:
            await rt.run(lose, str(path), workflow_id="l")
        assert (lost.value.worker_id, lost.value.holder) == ("exec-A", "exec-B")
        steps = await rt.list_steps("l")
        assert [(s.name, s.output) for s in steps] == [("tests.sync_records.double", 2)]
        assert (await rt.get_workflow("l")).status is WorkflowStatus.RUNNING  # B's now


async def test_the_memory_backend_records_sync_steps_from_the_thread_too() -> None:
    backend = durable.connect("memory://")
    assert backend.records_steps_blocking
    async with durable.Runtime(backend, recover=False, registry=registry) as rt:
        assert await rt.run(chain, 2, workflow_id="m") == 16
        assert [s.output for s in await rt.list_steps("m")] == [4, 8, 16]
