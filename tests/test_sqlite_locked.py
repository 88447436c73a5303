"""A SQLite file that another program keeps locked past the busy timeout (a backup, a long
transaction of its own) is a database unavailable for now, as a server that does not answer:
callers get ``BackendUnavailableError`` (which producers retry), and a worker hands its
attempt back uncounted and runs it again once the file is free, instead of counting a failed
attempt or leaving the execution to wait for its lease to expire."""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import timedelta
from pathlib import Path

import pytest
from support import LoopTicks

import durable
from durable.backends.sql import locking


@pytest.fixture(params=["sqlite", "sqlite+aiosqlite"])
def url_and_path(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[str, Path]:
    monkeypatch.setattr(locking, "BUSY_TIMEOUT_MS", 200)
    path = tmp_path / "locked.db"
    return f"{request.param}:///{path}", path


def hold_the_write_lock(path: Path) -> sqlite3.Connection:
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    return other


@durable.workflow
async def noop() -> None:
    return None


async def test_an_enqueue_into_a_locked_file_is_unavailable_and_writes_nothing(
    url_and_path: tuple[str, Path],
) -> None:
    url, path = url_and_path
    async with durable.Runtime(durable.connect(url)) as runtime:
        other = await asyncio.to_thread(hold_the_write_lock, path)
        try:
            with pytest.raises(durable.BackendUnavailableError, match="database is locked"):
                await runtime.enqueue(noop, workflow_id="while-locked")
        finally:
            other.execute("ROLLBACK")
            other.close()
        assert sum((await runtime.backend.count_workflows()).values()) == 0
        await runtime.enqueue(noop, workflow_id="while-locked")
        assert (await runtime.get_workflow("while-locked")).id == "while-locked"


class Body:
    started: asyncio.Event
    go: asyncio.Event


@durable.step
async def slow(n: int) -> int:
    Body.started.set()
    await Body.go.wait()  # the test locks the file while the body runs: its record waits
    return n


@durable.workflow(max_attempts=1)
async def one_attempt(n: int) -> int:
    return await slow(n) + 1


async def test_a_step_whose_record_meets_a_locked_file_runs_again_once_it_is_free(
    url_and_path: tuple[str, Path],
) -> None:
    url, path = url_and_path
    Body.started, Body.go = asyncio.Event(), asyncio.Event()
    async with durable.Runtime(durable.connect(url), claim_ttl=60) as runtime:
        await runtime.start_worker()
        wid = await runtime.enqueue(one_attempt, 1)
        await asyncio.wait_for(Body.started.wait(), 10)
        # from a thread: a transaction of the backend's may be between two statements, which
        # needs this loop to go on
        other = await asyncio.to_thread(hold_the_write_lock, path)
        Body.go.set()
        await asyncio.sleep(1.0)  # the record waits, fails, and the worker keeps trying
        other.execute("ROLLBACK")
        other.close()
        # one failed attempt would end it (max_attempts=1); a lease left to expire, 60 s
        assert await runtime.result(wid, timeout=15) == 2
        info = await runtime.get_workflow(wid)
        assert (info.status.value, info.attempts) == ("succeeded", 1)


async def test_reads_do_not_wait_for_the_write_lock(url_and_path: tuple[str, Path]) -> None:
    """A WAL file's readers do not wait for its writer: with the write lock held past the busy
    timeout, a client starts on the migrated file and reads (a status, a listing, steps,
    events, counts) instead of failing with "database is locked"."""
    url, path = url_and_path
    async with durable.Runtime(durable.connect(url)) as runtime:
        await runtime.enqueue(noop, workflow_id="before")
    other = await asyncio.to_thread(hold_the_write_lock, path)
    try:
        async with durable.Client(url) as client:
            assert (await client.get_workflow("before")).id == "before"
            listed = await client.list_workflows()
            assert [w.id for w in listed.items] == ["before"]
            assert await client.list_steps("before") == []
            assert sum((await client.backend.count_workflows()).values()) == 1
            assert await client.get_event("before", "k", timeout=0, default="none") == "none"
            assert await client.backend.schema_revision() is not None
            with pytest.raises(durable.BackendUnavailableError, match="database is locked"):
                await client.enqueue(noop, workflow_id="a-write")  # writes still wait for it
    finally:
        other.execute("ROLLBACK")
        other.close()


@pytest.mark.parametrize("url_and_path", ["sqlite"], indirect=True)
async def test_a_write_waiting_for_the_lock_does_not_stop_the_event_loop(
    url_and_path: tuple[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Behind another process's write lock, the standard-library driver's writes (which run on
    the event loop's thread) wait for it by awaiting: the loop's other coroutines (a worker's
    heartbeats) keep running, and each write goes through once the lock is free. (SQLite's own
    wait blocked the loop for as long as the lock was held, up to the busy timeout.)"""
    monkeypatch.setattr(locking, "BUSY_TIMEOUT_MS", 30_000)
    url, path = url_and_path
    async with durable.Runtime(durable.connect(url)) as runtime:
        await runtime.enqueue(noop, workflow_id="to-cancel")
        await runtime.enqueue(noop, workflow_id="to-claim", priority=-1)
        other = await asyncio.to_thread(hold_the_write_lock, path)
        async with LoopTicks() as ticks:
            try:
                writes = asyncio.gather(
                    runtime.enqueue(noop, workflow_id="behind-the-lock"),  # the group commit
                    runtime.cancel("to-cancel"),  # a transaction through SQLAlchemy
                    runtime.client.backend.claim_available_tasks("w", 1, timedelta(seconds=30)),
                )
                await asyncio.sleep(1.0)
                assert not writes.done()  # they wait for the lock...
                # ...and the loop runs (a loop blocked by the wait turns once or twice; a
                # loaded machine's, turning every 10 ms, about 30 to 100 times)
                assert ticks.count > 10, f"the loop ran {ticks.count} times in 1 s"
            finally:
                other.execute("ROLLBACK")
                other.close()
            _, cancelled, claimed = await writes
        assert cancelled.status is durable.WorkflowStatus.CANCELLED
        assert [c.instance_id for c in claimed] == ["to-claim"]


@durable.step
async def quick(i: int) -> int:
    return i


@durable.workflow
async def many_quick_steps(n: int) -> int:
    for i in range(n):
        await quick(i)
    return n


@durable.workflow
async def inbox() -> object:
    return await durable.recv("never")


async def test_awaited_calls_in_a_loop_let_the_event_loop_turn(tmp_path: Path) -> None:
    """The standard-library driver's operations run on the loop's thread without waiting on
    I/O: a status poll awaiting ``get_workflow`` in a loop, or a workflow of many quick steps,
    held the loop for as long as it went on, so a worker's heartbeats stopped, its leases
    lapsed, and another worker ran a step the first still ran."""
    async with durable.Runtime(durable.connect(f"sqlite:///{tmp_path / 'db'}")) as runtime:
        wid = await runtime.enqueue(noop)
        async with LoopTicks() as ticks:
            until = asyncio.get_running_loop().time() + 1.0
            while asyncio.get_running_loop().time() < until:
                await runtime.client.get_workflow(wid)
            # turning every 10 ms: about 30 ticks (a tick needs a few turns); held, one or two
            assert ticks.count > 10, f"the loop ran {ticks.count} times in 1 s of polling"
        async with LoopTicks() as ticks:
            started = asyncio.get_running_loop().time()
            await runtime.run(many_quick_steps, 5000)
            took = asyncio.get_running_loop().time() - started
            assert ticks.count > took / 0.1, f"{ticks.count} turns in {took:.2f} s of steps"
        waiting = await runtime.enqueue(inbox)
        async with LoopTicks() as ticks:
            started = asyncio.get_running_loop().time()
            for i in range(2000):
                await runtime.client.send(waiting, "go", i)
            took = asyncio.get_running_loop().time() - started
            assert ticks.count > took / 0.1, f"{ticks.count} turns in {took:.2f} s of sends"
