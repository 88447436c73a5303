"""SQLite's group commit runs its batches on a connection of its own (InlineRunner, in
durable/backends/sql/runners.py), kept between batches instead of a pool checkout per batch:
it holds no pool slot, is replaced after an error, is closed with the backend, and a forked
child never uses or closes its parent's. A statement with the chains made of its result (a
claim, then the starts of what it claimed) runs in one transaction, each chain undone alone."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import sqlite3
from pathlib import Path

import pytest
import sqlalchemy as sa
from support import LoopTicks

from durable.backends.sql import SQLAlchemyBackend, locking
from durable.backends.sql.direct import CompiledStatement
from durable.backends.sql.runners import InlineRunner
from durable.errors import BackendError, BackendUnavailableError
from durable.testing.contract._support import LONG, W, create, step


def runner_of(backend: SQLAlchemyBackend) -> InlineRunner:
    runner = backend._runner
    assert isinstance(runner, InlineRunner)
    return runner


async def started(backend: SQLAlchemyBackend, *ids: str) -> None:
    for wid in ids:
        await create(backend, wid)
        assert await backend.claim_task(wid, W, "w1", LONG) is not None


async def test_batches_share_one_connection_that_holds_no_pool_slot(sqlite_url: str) -> None:
    backend = SQLAlchemyBackend(sqlite_url)
    await backend.start()
    await started(backend, "wf")
    runner = runner_of(backend)
    await backend.record_step("wf", step(0), worker_id="w1")
    writer = runner._writer
    assert writer is not None
    await asyncio.gather(*(backend.record_step("wf", step(p), worker_id="w1") for p in (1, 2)))
    assert runner._writer is writer
    assert runner.checked_out() == 0
    assert [s.position for s in await backend.list_steps("wf")] == [0, 1, 2]
    await backend.close()
    assert runner._writer is None
    with pytest.raises(sqlite3.ProgrammingError):  # closed, not left open on the file
        writer.execute("SELECT 1")


async def test_a_failed_batch_replaces_the_connection(sqlite_url: str, tmp_path: Path) -> None:
    async with SQLAlchemyBackend(sqlite_url) as backend:
        await started(backend, "wf")
        runner = runner_of(backend)
        await backend.record_step("wf", step(0), worker_id="w1")
        writer = runner._writer
        assert writer is not None
        writer.close()  # the connection broke: the batch fails, and the next opens another
        with pytest.raises(BackendError):
            await backend.record_step("wf", step(1), worker_id="w1")
        assert runner._writer is None
        await backend.record_step("wf", step(1), worker_id="w1")
        assert runner._writer is not None and runner._writer is not writer
        assert [s.position for s in await backend.list_steps("wf")] == [0, 1]


async def test_a_batch_behind_the_write_lock_keeps_its_connection(
    sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process's write transaction holds the file past the busy timeout: the batch
    fails as unavailable, but its connection is sound (nothing began) and is kept."""
    monkeypatch.setattr(locking, "BUSY_TIMEOUT_MS", 300)
    async with SQLAlchemyBackend(sqlite_url) as backend:
        await started(backend, "wf")
        runner = runner_of(backend)
        await backend.record_step("wf", step(0), worker_id="w1")
        writer = runner._writer
        other = sqlite3.connect(tmp_path / "durable.db", isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        with pytest.raises(BackendUnavailableError, match="database is locked"):
            await backend.record_step("wf", step(1), worker_id="w1")
        other.execute("ROLLBACK")
        other.close()
        await backend.record_step("wf", step(1), worker_id="w1")
        assert runner._writer is writer
        assert [s.position for s in await backend.list_steps("wf")] == [0, 1]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
async def test_a_forked_child_forgets_the_parents_connection(sqlite_url: str) -> None:
    async with SQLAlchemyBackend(sqlite_url) as backend:
        await started(backend, "wf")
        runner = runner_of(backend)
        await backend.record_step("wf", step(0), worker_id="w1")
        assert runner._writer is not None
        pid = os.fork()
        if pid == 0:  # the child: exit at once, reporting what it holds
            os._exit(0 if runner._writer is None else 1)
        _, status = await asyncio.to_thread(os.waitpid, pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        # the parent's connection is still open and still its own
        await backend.record_step("wf", step(1), worker_id="w1")
        assert [s.position for s in await backend.list_steps("wf")] == [0, 1]


async def test_a_statement_then_chains_in_one_transaction_each_chain_undone_alone(
    sqlite_url: str,
) -> None:
    """InlineRunner.run_alone_then (SQLite's claim, then the starts of what it claimed): the
    chains made of the statement's result run in its transaction; one that fails after its
    first statement ran is undone alone (the transaction runs again with savepoints), the
    statement and the other chains are committed, and nothing else is written twice."""
    scratch = sa.Table(
        "scratch",
        sa.MetaData(),
        sa.Column("k", sa.String, primary_key=True),
        sa.Column("v", sa.String, nullable=False),
    )
    async with SQLAlchemyBackend(sqlite_url) as backend:
        engine = backend.engine
        assert isinstance(engine, sa.Engine)
        scratch.create(engine)
        runner, dialect = runner_of(backend), engine.dialect
        head = CompiledStatement(
            sa.insert(scratch).values(k=sa.bindparam("k0"), v="head").returning(scratch.c.k),
            dialect,
        )
        pair = tuple(
            CompiledStatement(
                sa.insert(scratch).values(k=sa.bindparam(k), v=sa.bindparam(v)), dialect
            )
            for k, v in (("k1", "v1"), ("k2", "v2"))
        )
        calls: list[str] = []

        def follow(result: object) -> list[tuple[tuple[CompiledStatement, ...], dict[str, object]]]:
            calls.append("follow")
            return [
                (pair, {"k1": "a1", "v1": "x", "k2": "a2", "v2": "x"}),
                (pair, {"k1": "b1", "v1": "x", "k2": "b2", "v2": None}),  # NOT NULL, midway
                (pair, {"k1": "c1", "v1": "x", "k2": "c2", "v2": "x"}),
            ]

        result, outcomes = runner.run_alone_then(head, {"k0": "h"}, follow)
        assert result.rows == [{"k": "h"}]
        assert calls == ["follow", "follow"]  # run again, with savepoints
        assert [len(o.result()) for o in (outcomes[0], outcomes[2])] == [2, 2]
        with pytest.raises(sa.exc.IntegrityError, match="NOT NULL"):
            outcomes[1].result()
        with engine.connect() as conn:
            keys = sorted(conn.execute(sa.select(scratch.c.k)).scalars())
        assert keys == ["a1", "a2", "c1", "c2", "h"]
        assert runner.checked_out() == 0


async def test_a_lone_record_is_one_statement_that_waits_for_the_write_lock(
    sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A record written while nothing else is pending (a lone workflow's step) is one
    statement of its own on the batches' connection, with no BEGIN and COMMIT around it (its
    implicit transaction commits it). Behind another connection's write lock it waits, the
    loop running, and lands once the lock is free; the connection is kept."""
    monkeypatch.setattr(locking, "BUSY_TIMEOUT_MS", 30_000)
    async with SQLAlchemyBackend(sqlite_url) as backend:
        await started(backend, "wf")
        runner = runner_of(backend)
        await backend.record_step("wf", step(0), worker_id="w1")
        writer = runner._writer
        assert writer is not None
        seen: list[str] = []
        writer.set_trace_callback(seen.append)
        await backend.record_step("wf", step(1), worker_id="w1")
        assert len(seen) == 1 and seen[0].startswith("INSERT INTO durable_steps"), seen
        assert not writer.in_transaction

        other = sqlite3.connect(tmp_path / "durable.db", isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        async with LoopTicks() as ticks:
            recording = asyncio.create_task(backend.record_step("wf", step(2), worker_id="w1"))
            await asyncio.sleep(0.3)
            assert not recording.done()
            assert ticks.count >= 5  # the loop ran while the record waited
            other.execute("ROLLBACK")
            other.close()
            await asyncio.wait_for(recording, 10)
        assert runner._writer is writer
        assert [s.position for s in await backend.list_steps("wf")] == [0, 1, 2]


async def test_a_threads_records_go_on_a_connection_of_its_own(sqlite_url: str) -> None:
    """A sync workflow's thread records its steps on a connection of its own, opened once
    (not a pool checkout per step), holding no pool slot, closed with the backend."""
    async with SQLAlchemyBackend(sqlite_url) as backend:
        await started(backend, "wf")
        runner = runner_of(backend)
        engine = backend.engine
        assert isinstance(engine, sa.Engine)
        checkouts: list[object] = []
        sa.event.listen(engine, "checkout", lambda *args: checkouts.append(args))

        def record_three() -> sqlite3.Connection:
            for position in (0, 1, 2):
                backend.record_step_blocking("wf", step(position), worker_id="w1")
                assert runner.checked_out() == 0
            conn = runner._thread_writer().conn
            assert isinstance(conn, sqlite3.Connection)
            return conn

        conn = await asyncio.to_thread(record_three)
        assert len(checkouts) == 1  # opened once, then kept
        assert [s.position for s in await backend.list_steps("wf")] == [0, 1, 2]
    with pytest.raises(sqlite3.ProgrammingError):  # closed with the backend
        conn.execute("SELECT 1")


async def test_closing_never_closes_a_threads_connection_under_its_statement(
    sqlite_url: str,
) -> None:
    """The backend closed while a thread's record runs (a sync workflow's thread outliving its
    runtime): its connection is closed by that thread once the statement ended, not under it
    (a ``sqlite3`` connection closed from another thread is freed under its statement)."""
    async with SQLAlchemyBackend(sqlite_url) as backend:
        await started(backend, "wf")
        runner = runner_of(backend)
        executor = concurrent.futures.ThreadPoolExecutor(1)  # one thread: one connection
        loop = asyncio.get_running_loop()

        def record(position: int) -> None:
            backend.record_step_blocking("wf", step(position), worker_id="w1")

        await loop.run_in_executor(executor, record, 0)
        writer = await loop.run_in_executor(executor, runner._thread_writer)
        conn = writer.conn
        assert conn is not None
        with writer.lock:  # as its thread holds it while a statement runs
            runner._close_threads_own()
            assert writer.conn is conn and writer.retired
            conn.execute("SELECT 1")  # still open
        await loop.run_in_executor(executor, record, 1)  # runs, then its thread closes it
        assert writer.conn is None and not writer.retired
        with pytest.raises(sqlite3.ProgrammingError):
            conn.execute("SELECT 1")
        await loop.run_in_executor(executor, record, 2)  # another connection
        assert writer.conn is not None and writer.conn is not conn
        runner._close_threads_own()  # idle: closed at once
        assert writer.conn is None
        executor.shutdown()
        assert [s.position for s in await backend.list_steps("wf")] == [0, 1, 2]
