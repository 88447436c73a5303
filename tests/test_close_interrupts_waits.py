"""Closing a client or a runtime interrupts the waits still running on it, however it was
started and wherever they wait from: ``result``, ``get_event`` and ``read_stream`` awaited in
another task, and the ``_sync`` calls of other threads on an object started by ``async with``.
They raise ``DurableError`` and look at the database no more.

Before, an async wait went on polling the closed backend (on PostgreSQL it opened a new
connection after the close), and a blocking call from another thread waited until the event
loop ended, then raised ``concurrent.futures.CancelledError``.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

import durable

WAIT = 10.0  # a safety net, never reached when green
NOBODY = "tests.close_interrupts.nobody.v1"  # a name no worker serves: it never finishes


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def url(request: pytest.FixtureRequest) -> str:
    if request.param == "memory":
        return "memory://"
    return str(request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url"))


def connections(url: str) -> int:
    """The sessions open on the PostgreSQL database of ``url``, but the one asking."""
    plain = url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(plain, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchone()
    assert row is not None
    return int(row[0])


def count_looks(client: durable.Client) -> list[str]:
    """The backend's reads of executions, events and streams from now on, by name."""
    looks: list[str] = []
    backend = client.backend
    for name in ("get_workflow", "get_event", "read_stream"):
        original = getattr(backend, name)

        def counted(*args: Any, _original: Any = original, _name: str = name, **kw: Any) -> Any:
            looks.append(_name)
            return _original(*args, **kw)

        setattr(backend, name, counted)
    return looks


async def drain(iterator: Any) -> list[Any]:
    return [value async for value in iterator]


WAITS: dict[str, Callable[[durable.Client, str], Any]] = {
    "result": lambda client, wid: client.result(wid),
    "get_event": lambda client, wid: client.get_event(wid, "ready", timeout=None),
    "read_stream": lambda client, wid: drain(client.read_stream(wid, "tokens")),
}


@pytest.mark.parametrize("wait", list(WAITS))
async def test_closing_a_client_interrupts_its_waits_in_other_tasks(url: str, wait: str) -> None:
    baseline = connections(url) if url.startswith("postgresql") else 0
    client = durable.Client(url, poll_interval=0.05)
    await client.start()
    wid = await client.enqueue(NOBODY)
    looks = count_looks(client)
    waiting = asyncio.ensure_future(WAITS[wait](client, wid))
    await asyncio.sleep(0.3)
    assert not waiting.done() and looks, "the wait did not start looking"
    await client.close()
    done, _ = await asyncio.wait({waiting}, timeout=WAIT)
    assert done, f"{wait}() still waits after the client closed"
    error = waiting.exception()
    assert isinstance(error, durable.DurableError), repr(error)
    assert "the client was closed while this call was running" in str(error)
    seen = len(looks)
    await asyncio.sleep(0.5)  # many poll intervals: nothing looks at the closed backend
    assert len(looks) == seen
    if url.startswith("postgresql"):
        assert connections(url) == baseline, "a connection was opened after the close"


async def test_closing_a_runtime_interrupts_the_waits_on_it(url: str) -> None:
    async with durable.Runtime(
        durable.connect(url), registry=durable.Registry(), recover=False, poll_interval=0.05
    ) as runtime:
        wid = await runtime.client.enqueue(NOBODY)
        waits = [
            asyncio.ensure_future(runtime.result(wid)),
            asyncio.ensure_future(runtime.client.result(wid)),
            asyncio.ensure_future(runtime.get_event(wid, "ready", timeout=None)),
        ]
        await asyncio.sleep(0.3)
    done, _ = await asyncio.wait(waits, timeout=WAIT)
    assert len(done) == len(waits), "a wait goes on after the runtime closed"
    for waiting in waits:
        error = waiting.exception()
        assert isinstance(error, durable.DurableError), repr(error)
        assert "the runtime was closed while this call was running" in str(error)


def in_thread(call: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    """``call()`` in a daemon thread; the list gets what it returned or raised."""
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append(call())
        except BaseException as exc:  # what it raised is the outcome
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


@pytest.mark.parametrize("owner", ["client", "runtime"])
def test_closing_interrupts_blocking_calls_of_other_threads_on_an_async_started_object(
    url: str, owner: str
) -> None:
    """``result_sync`` from another thread on a client or runtime that ``async with`` started:
    the end of the block interrupts it (it raises DurableError at once, while the loop still
    runs), instead of leaving it waiting until the loop ends."""
    seen: list[Any] = []

    async def main() -> None:
        obj: durable.Client | durable.Runtime
        if owner == "client":
            obj = durable.Client(url, poll_interval=0.05)
        else:
            obj = durable.Runtime(
                durable.connect(url), registry=durable.Registry(), recover=False, poll_interval=0.05
            )
        async with obj:
            client = obj if isinstance(obj, durable.Client) else obj.client
            wid = await client.enqueue(NOBODY)
            thread, outcome = in_thread(lambda: client.result_sync(wid))
            await asyncio.sleep(0.3)
            assert thread.is_alive(), f"result_sync ended before the close: {outcome}"
        await asyncio.to_thread(thread.join, WAIT)  # the loop still runs meanwhile
        seen.extend(outcome)
        with pytest.raises(durable.DurableError, match="not started"):  # and after the close
            client.result_sync(wid)

    asyncio.run(main())
    assert seen, "result_sync still waits after the `async with` block closed"
    [error] = seen
    assert isinstance(error, durable.DurableError), repr(error)
    assert f"the {owner} was closed while this call was running" in str(error)


def test_a_blocking_call_running_when_the_loop_ends_raises_durable_error(
    sqlite_url: str,
) -> None:
    """A client started by ``await client.start()`` and never closed (on SQLite: a server's
    connections would be left open): ``asyncio.run`` ending cancels what runs on its loop,
    and a blocking call of another thread in flight raises DurableError (it was
    ``concurrent.futures.CancelledError``)."""
    waiting: list[tuple[threading.Thread, list[Any]]] = []

    async def main() -> None:
        client = durable.Client(sqlite_url, poll_interval=0.05)
        await client.start()
        wid = await client.enqueue(NOBODY)
        waiting.append(in_thread(lambda: client.result_sync(wid)))
        await asyncio.sleep(0.3)

    asyncio.run(main())
    [(thread, outcome)] = waiting
    thread.join(WAIT)
    assert not thread.is_alive(), "result_sync still waits after the loop ended"
    [error] = outcome
    assert isinstance(error, durable.DurableError), repr(error)
    assert "closed while this call was running" in str(error)
