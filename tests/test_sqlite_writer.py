"""SQLite's group commit runs its batches on a connection of its own (InlineRunner, in
durable/backends/sql/runners.py), kept between batches instead of a pool checkout per batch:
it holds no pool slot, is replaced after an error, is closed with the backend, and a forked
child never uses or closes its parent's."""

from __future__ import annotations

import asyncio
import os
import sqlite3
from pathlib import Path

import pytest

from durable.backends.sql import SQLAlchemyBackend
from durable.backends.sql.runners import InlineRunner
from durable.errors import BackendError
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
        writer.execute("PRAGMA busy_timeout = 50")
        # another process's write transaction holds the file past the busy timeout
        other = sqlite3.connect(tmp_path / "durable.db", isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        with pytest.raises(BackendError):
            await backend.record_step("wf", step(1), worker_id="w1")
        assert runner._writer is None
        other.execute("ROLLBACK")
        other.close()
        await backend.record_step("wf", step(1), worker_id="w1")
        assert runner._writer is not None and runner._writer is not writer
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
