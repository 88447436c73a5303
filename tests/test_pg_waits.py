"""The direct path's socket waits (durable/backends/sql/waits.py): a connection's socket stays
in the event loop's selector from one statement to the next, and leaves it whenever it could
go stale.

What must hold, on a real server: statements run and return their rows; the socket is watched
once, not once per statement, and an answer wakes its statement once (a second report of it
would find nothing waiting); a server that closes an idle connection takes the socket out of
the selector without a statement, and the next statement fails with psycopg's error; a
statement that fails, or is cancelled, takes it out; ``close`` takes it out, so a new
connection given the same descriptor number waits on it normally; the watched socket keeps
nothing of the task that registered it; and through the backend, a dropped direct connection
is replaced and none is left watched."""

from __future__ import annotations

import asyncio
import contextvars
import gc
import select
import weakref
from collections.abc import AsyncIterator, Generator
from typing import Any

import psycopg
import pytest
from support import eventually, pg_conninfo, terminate_other_sessions

from durable.backends import SQLAlchemyBackend
from durable.backends.sql.waits import SocketWaiter
from durable.models import TaskSpec, WorkflowSnapshot

pytestmark = pytest.mark.postgres


def _watched(fileno: int) -> bool:
    """Whether the running loop's selector holds ``fileno`` (asyncio's own selector loops)."""
    selector = getattr(asyncio.get_running_loop(), "_selector", None)
    if selector is None:
        pytest.skip("this event loop has no selector to look into")
    return fileno in selector.get_map()


@pytest.fixture
async def waited(pg_url: str) -> AsyncIterator[tuple[Any, SocketWaiter]]:
    """An autocommit connection whose waits go through a SocketWaiter."""
    conn = await psycopg.AsyncConnection.connect(pg_conninfo(pg_url), autocommit=True)
    waiter = SocketWaiter.install(conn, asyncio.get_running_loop())
    assert waiter is not None  # select.poll: this suite runs on Linux
    try:
        yield conn, waiter
    finally:
        waiter.close()
        await conn.close()


async def test_statements_run_and_the_socket_stays_watched_between_them(
    waited: tuple[Any, SocketWaiter],
) -> None:
    conn, _ = waited
    fileno = conn.pgconn.socket
    assert not _watched(fileno)  # nothing ran through the waiter yet
    cursor = conn.cursor()
    for i in range(5):
        await cursor.execute("SELECT %s::int + 1, repeat('x', %s)", (i, 100_000), prepare=True)
        rows = await cursor.fetchall()
        assert rows == [(i + 1, "x" * 100_000)]
        # the event that woke the statement is not reported again once the loop turns (the
        # waiter read the socket dry): a stale one would find nothing waiting and unwatch it
        await asyncio.sleep(0.01)
        assert _watched(fileno)
    # concurrent statements on one connection queue on psycopg's lock, each gets its answer
    answers = await asyncio.gather(*(conn.execute("SELECT %s::int", (i,)) for i in range(10)))
    assert [(await a.fetchone()) for a in answers] == [(i,) for i in range(10)]


async def test_an_answer_wakes_its_statement_once(waited: tuple[Any, SocketWaiter]) -> None:
    """The selector reports the socket again on the turn its woken statement reads the answer;
    that report must not wake the statement that follows (it would find nothing to read and
    wait again: a wasted turn a statement)."""
    conn, waiter = waited
    waits = 0

    def counted(gen: Generator[Any, Any, Any]) -> Generator[Any, Any, Any]:
        nonlocal waits
        ready = None
        try:
            state = next(gen)
            while True:
                waits += 1
                ready = yield state
                state = gen.send(ready)
        except StopIteration as done:
            return done.value

    install = waiter.wait
    conn.wait = lambda gen, *args, **kwargs: install(counted(gen), *args, **kwargs)
    cursor = conn.cursor()
    for i in range(50):  # back to back: each statement waits before the stale report runs
        await cursor.execute("SELECT %s::int", (i,), prepare=True)
        assert await cursor.fetchone() == (i,)
    assert waits <= 53  # one wait a statement (51: the first one prepares its statement)


async def test_a_server_closing_an_idle_connection_unwatches_it(
    waited: tuple[Any, SocketWaiter], pg_url: str
) -> None:
    conn, _ = waited
    fileno = conn.pgconn.socket
    await conn.execute("SELECT 1")
    assert _watched(fileno)
    await terminate_other_sessions(pg_url)

    async def unwatched() -> bool:  # the server's goodbye makes the socket readable: it leaves
        return not _watched(fileno)

    await eventually(unwatched, "the socket the server closed to leave the selector")
    assert not _watched(fileno)
    # the goodbye was left unread: the next statement reads it after its query, so libpq
    # reports the server's reason as that statement's error (read while libpq was idle, it
    # would be a notice, and the error "no connection to the server")
    with pytest.raises(psycopg.errors.AdminShutdown, match="terminating connection"):
        await conn.execute("SELECT 1")
    assert not _watched(fileno)


async def test_a_statement_that_fails_midway_unwatches_the_socket(
    waited: tuple[Any, SocketWaiter], pg_url: str
) -> None:
    conn, _ = waited
    fileno = conn.pgconn.socket
    sleeping = asyncio.create_task(conn.execute("SELECT pg_sleep(30)"))
    await asyncio.sleep(0.3)
    assert _watched(fileno) and not sleeping.done()
    await terminate_other_sessions(pg_url)
    with pytest.raises(psycopg.errors.AdminShutdown, match="terminating connection"):
        await sleeping  # the reason, read by the statement's own generator
    assert not _watched(fileno)


async def test_a_cancelled_statement_unwatches_the_socket(
    waited: tuple[Any, SocketWaiter],
) -> None:
    conn, _ = waited
    fileno = conn.pgconn.socket
    sleeping = asyncio.create_task(conn.execute("SELECT pg_sleep(30)"))
    await asyncio.sleep(0.3)
    assert _watched(fileno)
    sleeping.cancel()
    with pytest.raises(asyncio.CancelledError):
        await sleeping
    assert not _watched(fileno)


async def test_close_unwatches_so_a_reused_descriptor_waits_normally(pg_url: str) -> None:
    loop = asyncio.get_running_loop()
    first = await psycopg.AsyncConnection.connect(pg_conninfo(pg_url), autocommit=True)
    waiter = SocketWaiter.install(first, loop)
    assert waiter is not None
    await first.execute("SELECT 1")
    fileno = first.pgconn.socket
    assert _watched(fileno)
    waiter.close()
    await first.close()
    assert not _watched(fileno)
    # the lowest free descriptor: most likely the same number, now another socket; psycopg's
    # own wait adds and removes it around each statement (a stale entry would break that)
    async with await psycopg.AsyncConnection.connect(pg_conninfo(pg_url), autocommit=True) as other:
        cur = await other.execute("SELECT 2")
        assert await cur.fetchone() == (2,)
        assert not _watched(other.pgconn.socket)


async def test_the_backend_replaces_a_dropped_direct_connection_and_leaves_none_watched(
    pg_url: str,
) -> None:
    def enqueue(backend: SQLAlchemyBackend, instance_id: str) -> Any:
        return backend.create_workflow(
            WorkflowSnapshot(id=instance_id, name="wf"),
            task=TaskSpec(instance_id=instance_id, name="wf"),
        )

    async with SQLAlchemyBackend(pg_url) as backend:
        await enqueue(backend, "a")
        sockets = _direct_sockets(backend)
        assert sockets and all(_watched(s) for s in sockets)
        await terminate_other_sessions(pg_url)

        async def unwatched() -> bool:
            return not any(_watched(s) for s in sockets)

        await eventually(unwatched, "the sockets the server closed to leave the selector")
        assert not any(_watched(s) for s in sockets)
        await enqueue(backend, "c")  # on a new connection: the closed ones were found first
        assert (await backend.get_workflow("c")).id == "c"
        sockets = _direct_sockets(backend)
        assert sockets and all(_watched(s) for s in sockets)
    assert not any(_watched(s) for s in sockets)  # closing the backend took them out


def _direct_sockets(backend: SQLAlchemyBackend) -> list[int]:
    """The sockets of the backend's idle direct connections."""
    return [session.conn.pgconn.socket for session in backend._runner._direct._idle]  # type: ignore[attr-defined]


_held: contextvars.ContextVar[Any] = contextvars.ContextVar("held")


async def test_the_watched_socket_keeps_nothing_of_the_task_that_registered_it(
    waited: tuple[Any, SocketWaiter],
) -> None:
    """The loop keeps the context a callback was registered in; the socket's outlives the task
    of its first statement, whose context holds (in durable) the execution and its history."""
    conn, _ = waited

    class Execution:
        pass

    async def statement(execution: Execution) -> None:
        _held.set(execution)
        await conn.execute("SELECT 1")

    execution = Execution()
    gone = weakref.ref(execution)
    await asyncio.create_task(statement(execution))
    assert _watched(conn.pgconn.socket)
    del execution
    await asyncio.sleep(0)  # the handle that woke this test holds the finished task until then
    gc.collect()
    assert gone() is None


async def test_a_state_with_nothing_to_wait_for_is_refused_not_waited_on(
    waited: tuple[Any, SocketWaiter],
) -> None:
    """As psycopg's own wait: a generator that asks to wait for neither reading nor writing
    would never be woken."""
    _, waiter = waited

    def asks_nothing() -> Any:
        yield 0

    with pytest.raises(psycopg.errors.InternalError, match="bad poll status"):
        await asyncio.wait_for(waiter.wait(asks_nothing()), timeout=5)


async def test_without_poll_the_direct_path_keeps_psycopgs_own_wait(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where ``select.poll`` does not exist (Windows), no waiter is installed: statements run
    with psycopg's wait, which adds and removes the socket around each one."""
    monkeypatch.delattr(select, "poll")
    async with SQLAlchemyBackend(pg_url) as backend:
        for instance_id in ("a", "b"):
            await backend.create_workflow(
                WorkflowSnapshot(id=instance_id, name="wf"),
                task=TaskSpec(instance_id=instance_id, name="wf"),
            )
        idle = backend._runner._direct._idle  # type: ignore[attr-defined]
        assert idle and all(session.waiter is None for session in idle)
        assert not any(_watched(session.conn.pgconn.socket) for session in idle)
        assert [w.id for w in (await backend.list_snapshots()).items] == ["b", "a"]
