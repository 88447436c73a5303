"""A SQLite file's write-ahead log is checkpointed by a thread of the backend's
(durable/backends/sql/checkpoints.py), not inside the writers' commits: the pages written reach
the database file while the writers never came near SQLite's own threshold, the writers'
connections checkpoint by themselves only far behind, the thread ends with the backend, an
in-memory database has none, and the checkpointer never creates a file that is not there."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
import time
from pathlib import Path

import pytest
from support import eventually

import durable
from durable.backends.sql import SQLAlchemyBackend
from durable.backends.sql.checkpoints import WRITER_AUTOCHECKPOINT, WalCheckpointer
from durable.testing.contract._support import LONG, W, create, step


def checkpoint_threads(path: Path) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == f"durable-wal-checkpoint:{path}"]


async def test_the_log_reaches_the_file_without_a_writer_checkpointing(tmp_path: Path) -> None:
    path = tmp_path / "durable.db"
    backend = SQLAlchemyBackend(f"sqlite:///{path}")
    await backend.start()
    try:
        assert len(checkpoint_threads(path)) == 1
        await create(backend, "wf")
        assert await backend.claim_task("wf", W, "w1", LONG) is not None
        await asyncio.sleep(0.3)  # what starting wrote is checkpointed, then it is quiet
        before = path.stat().st_size
        # about 100 pages of log, far below SQLite's own threshold (1,000) and the writers'
        big = "x" * 4000
        for position in range(100):
            await backend.record_step("wf", step(position, output=big), worker_id="w1")

        async def copied() -> bool:  # into the database file
            return path.stat().st_size >= before + 100 * 4000

        await eventually(copied, "the log's pages in the database file")
        assert backend._checkpointer is not None and backend._checkpointer.checkpoints >= 1
        # the writers' own connections checkpoint only far behind the thread
        with backend.engine.connect() as conn:
            pragma = conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar()
        assert pragma == WRITER_AUTOCHECKPOINT
        # and what was checkpointed reads back whole
        steps = await backend.list_steps("wf")
        assert [s.position for s in steps] == list(range(100))
        assert steps[-1].output == big
    finally:
        await backend.close()
    assert checkpoint_threads(path) == []  # ended with the backend


async def test_an_in_memory_database_has_no_checkpointer() -> None:
    before = {t.name for t in threading.enumerate()}
    async with SQLAlchemyBackend("sqlite://") as backend:
        assert backend._checkpointer is None
        started = {t.name for t in threading.enumerate()} - before
        assert not any(name.startswith("durable-wal-checkpoint") for name in started)


async def test_a_runtime_on_a_file_runs_its_steps_with_the_checkpointer(tmp_path: Path) -> None:
    """Sync and async workflows, each step recorded while the thread checkpoints: every step
    is there once, in order, after the runtime closed and a new one opened the file."""
    registry = durable.Registry()
    ran: list[int] = []

    @durable.step
    def sync_step(i: int) -> str:
        ran.append(i)
        return "y" * 2000

    @durable.workflow(name="ck.sync", registry=registry)
    def sync_flow(n: int) -> int:
        return sum(len(sync_step(i)) for i in range(n))

    url = f"sqlite:///{tmp_path / 'rt.db'}"
    async with durable.Runtime(durable.connect(url), registry=registry) as runtime:
        assert await runtime.run(sync_flow, 300) == 300 * 2000
    assert ran == list(range(300))
    async with SQLAlchemyBackend(url) as backend:
        (info,) = (await backend.list_snapshots()).items
        steps = await backend.list_steps(info.id)
        assert [s.position for s in steps] == list(range(300))


@durable.workflow(name="tests.checkpoints.echo.v1")
async def echo(x: int) -> int:
    return x


@pytest.mark.parametrize("driver", ["sqlite", "sqlite+aiosqlite"])
@pytest.mark.parametrize("how", ["deleted", "replaced"])
async def test_a_file_deleted_or_replaced_under_the_backend_is_refused_not_written(
    tmp_path: Path, driver: str, how: str, caplog: pytest.LogCaptureFixture
) -> None:
    """SQLite goes on writing to a file deleted (or replaced) under its open connections, and
    loses it all with that file: every enqueue and run was acknowledged, then gone, without a
    word. The backend now notices (within a second), logs it at ERROR, and refuses every
    operation, saying why."""
    path = tmp_path / "app.db"
    async with durable.Runtime(durable.connect(f"{driver}:///{path}"), recover=False) as rt:
        await rt.start_worker(poll_interval=0.05)
        assert await rt.run(echo, 1) == 1
        if how == "deleted":
            for name in ("app.db", "app.db-wal", "app.db-shm"):
                (tmp_path / name).unlink(missing_ok=True)
        else:
            other = tmp_path / "other.db"
            sqlite3.connect(other).close()
            os.replace(other, path)

        async def refused() -> bool:
            try:
                await rt.enqueue(echo, 2)
            except durable.BackendError as exc:
                assert f"{path} was {how}" in str(exc)
                return True
            return False

        await eventually(refused, "an enqueue refused")
        with pytest.raises(durable.BackendError, match="writes nothing more"):
            await rt.run(echo, 3)
    assert any(getattr(r, "action", "") == "backend.file_lost" for r in caplog.records)


def test_the_checkpointer_never_creates_a_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "gone.db"
    checkpointer = WalCheckpointer(str(path), busy_interval=0.01, idle_interval=0.02)
    checkpointer.start()
    try:
        time.sleep(0.2)  # several turns, each failing to open the file
        assert checkpointer.running
        assert not path.exists()
    finally:
        checkpointer.stop()
    assert not checkpointer.running


def test_a_checkpointer_on_a_plain_file_copies_its_log(tmp_path: Path) -> None:
    """Another program's writes to a WAL file with autocheckpoint off reach the file."""
    path = tmp_path / "plain.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA wal_autocheckpoint=0")
    conn.execute("CREATE TABLE t (v TEXT)")
    checkpointer = WalCheckpointer(str(path), busy_interval=0.01, idle_interval=0.05)
    try:
        before = os.path.getsize(path)
        for _ in range(50):
            conn.execute("INSERT INTO t VALUES (?)", ("z" * 4000,))
        assert os.path.getsize(path) == before  # all in the log, nothing checkpointed it
        checkpointer.start()
        deadline = time.monotonic() + 10
        while os.path.getsize(path) < before + 50 * 4000 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert os.path.getsize(path) >= before + 50 * 4000
    finally:
        checkpointer.stop()
        conn.close()


def test_stop_waits_for_the_thread_and_closes_its_connection(tmp_path: Path) -> None:
    path = tmp_path / "stop.db"
    sqlite3.connect(path).execute("PRAGMA journal_mode=WAL").close()
    checkpointer = WalCheckpointer(str(path), busy_interval=0.01, idle_interval=0.01)
    checkpointer.start()
    time.sleep(0.1)
    checkpointer.stop()
    assert not checkpointer.running
    assert checkpoint_threads(path) == []
    # its connection is closed: the file can be switched out of WAL mode (which needs to be
    # alone with it)
    conn = sqlite3.connect(path, isolation_level=None)
    assert conn.execute("PRAGMA journal_mode=DELETE").fetchone() == ("delete",)
    conn.close()
