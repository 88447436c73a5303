"""durable.Client: enqueue, wait, inspect and control executions without running any.

In this process (every backend kind): a client next to a runtime whose worker runs the work. In
another process (SQLite and PostgreSQL, async and sync): tests/clientprog.py, which imports no
workflow code, drives a pipeline that a worker process (tests/workerprog.py) serves by name.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

import durable

REG = durable.Registry()
WAIT = 60.0
CLIENTPROG = Path(__file__).with_name("clientprog.py")
WORKERPROG = Path(__file__).with_name("workerprog.py")
PIPELINE = "workerprog.pipeline.v1"


@durable.step
async def add_one(n: int) -> int:
    return n + 1


@durable.workflow(name="tests.client.double.v1", registry=REG, queue="doubles")
async def double(n: int) -> int:
    return 2 * await add_one(n - 1)


@durable.workflow(name="tests.client.fails.v1", registry=REG)
async def fails(message: str) -> None:
    raise durable.NonRetryableError(message)


@asynccontextmanager
async def served(url: str) -> AsyncIterator[tuple[durable.Runtime, durable.Client]]:
    """A runtime with a worker serving REG, and a client on the same database (on memory://,
    on the same backend object)."""
    backend = durable.connect(url)
    runtime = durable.Runtime(
        backend, registry=REG, recover=False, poll_interval=0.05, executor_id="served"
    )
    async with runtime:
        await runtime.start_worker(poll_interval=0.05)
        client = durable.Client(backend if url == "memory://" else url, poll_interval=0.05)
        async with client:
            yield runtime, client


async def test_a_client_enqueues_waits_lists_cancels_and_retries(backend_url: str) -> None:
    async with served(backend_url) as (runtime, client):
        by_name = await client.enqueue("tests.client.double.v1", 4, workflow_id="by-name")
        by_fn = await client.enqueue(double, n=5)
        assert await client.result(by_name, timeout=WAIT) == 8
        assert await client.result(by_fn, timeout=WAIT) == 10
        info = await client.get_workflow(by_fn)
        assert (info.status, info.queue, info.max_attempts) == (
            durable.WorkflowStatus.SUCCEEDED,
            "doubles",  # by function: the workflow's queue and retry policy
            double.retry.max_attempts,
        )
        assert (await client.get_workflow(by_name)).queue == "default"
        assert [s.name for s in await client.list_steps(by_name)] == [add_one.name]

        failed = await client.enqueue("tests.client.fails.v1", "no")
        with pytest.raises(durable.NonRetryableError, match="no"):
            await client.result(failed, timeout=WAIT)

        later = await client.enqueue(double, 6, delay=3600)
        assert (await client.cancel(later)).status is durable.WorkflowStatus.CANCELLED
        with pytest.raises(durable.WorkflowCancelledError):
            await client.result(later, timeout=WAIT)
        assert (await client.retry(later)).status is durable.WorkflowStatus.PENDING
        assert await client.result(later, timeout=WAIT) == 12

        first = await client.list_workflows(limit=2)
        rest = await client.list_workflows(limit=10, cursor=first.next_cursor)
        ids = [i.id for i in first.items + rest.items]
        assert sorted(ids) == sorted([by_name, by_fn, failed, later])
        done = await client.list_workflows(status="succeeded", name="tests.client.double.v1")
        assert sorted(i.id for i in done.items) == sorted([by_name, by_fn, later])

        names = {w.name: w.enabled for w in await client.registered_workflows()}
        assert names == {"tests.client.double.v1": True, "tests.client.fails.v1": True}
        off = await client.set_workflow_enabled("tests.client.fails.v1", False)
        assert not off.enabled
        assert [e.id for e in await client.list_executors()] == ["served"]
        # the runtime's own operations go through its client and see the same
        assert runtime.client.backend is runtime.backend
        assert [w.id for w in (await runtime.list_workflows()).items] == ids


async def test_a_client_starts_no_executor_and_needs_no_registered_name(
    backend_url: str,
) -> None:
    async with durable.Client(backend_url) as client:
        queued = await client.enqueue("served.elsewhere.v1", 1, idempotency_key="k")
        again = await client.enqueue("served.elsewhere.v1", 2, idempotency_key="k")
        assert queued == again
        info = await client.get_workflow(queued)
        assert (info.status, info.input, info.max_attempts) == (
            durable.WorkflowStatus.PENDING,
            {"args": [1], "kwargs": {}},
            3,
        )
        assert await client.list_executors() == []
        assert await client.registered_workflows() == []
        with pytest.raises(TimeoutError, match=f"workflow '{queued}' did not finish within 0.2 s"):
            await client.result(queued, timeout=0.2)
        # a timeout is a number of seconds or a timedelta, here as everywhere
        with pytest.raises(TimeoutError, match=r"did not finish within 0\.1 s"):
            await client.result(queued, timeout=timedelta(milliseconds=100))
        assert await client.get_event(queued, "k", timeout=timedelta(0), default="no") == "no"
        with pytest.raises(durable.InvalidArgumentError, match="timeout must not be negative"):
            await client.result(queued, timeout=timedelta(seconds=-1))


def test_a_sync_client_in_a_sync_program(sql_url: str) -> None:
    runtime = durable.Runtime(
        durable.connect(sql_url), registry=REG, recover=False, poll_interval=0.05
    )
    with runtime:
        runtime.blocking(runtime.start_worker(poll_interval=0.05))
        with durable.Client(sql_url, poll_interval=0.05) as client:
            with client:  # reference-counted: nested and per-thread entries are fine
                queued = client.enqueue_sync(double, 3)
            assert client.result_sync(queued, timeout=WAIT) == 6
            later = client.enqueue_sync("tests.client.double.v1", 8, delay=3600)
            assert client.cancel_sync(later).status is durable.WorkflowStatus.CANCELLED
            assert client.retry_sync(later).status is durable.WorkflowStatus.PENDING
            assert client.result_sync(later, timeout=WAIT) == 16
            assert client.get_workflow_sync(later).output == 16
            listed = client.list_workflows_sync(limit=1)
            assert len(listed.items) == 1 and listed.next_cursor is not None
            assert len(client.list_steps_sync(queued)) == 1
            assert {w.name for w in client.registered_workflows_sync()} >= {double.name}
            assert client.set_workflow_enabled_sync(double.name, True).enabled
            assert [e.id for e in client.list_executors_sync()] == [runtime.executor_id]
            # a runtime's own client: its _sync methods run on the runtime's loop
            assert runtime.client.get_workflow_sync(queued).output == 6
        with pytest.raises(durable.DurableError, match="client is not started"):
            client.get_workflow_sync(queued)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def sql_url(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url"))


async def test_a_client_refuses_what_it_cannot_do() -> None:
    with pytest.raises(durable.InvalidArgumentError, match="needs a database URL or a Persist"):
        durable.Client(42)  # type: ignore[arg-type]
    with pytest.raises(
        durable.InvalidArgumentError, match=r"options .*auto_migrate.* are for a URL"
    ):
        durable.Client(durable.InMemoryBackend(), auto_migrate=False)
    with pytest.raises(durable.ConfigurationError, match="unknown option"):
        durable.Client("sqlite:///x.db", no_such_option=1)
    with pytest.raises(durable.InvalidArgumentError, match="poll_interval"):
        durable.Client("memory://", poll_interval=0)
    client = durable.Client("memory://")
    with pytest.raises(durable.DurableError, match="the client is not started"):
        await client.enqueue("x.v1")
    with pytest.raises(durable.DurableError, match="client is not started"):
        client.enqueue_sync("x.v1")
    async with client:
        with pytest.raises(durable.InvalidArgumentError, match="is not a durable workflow"):
            await client.enqueue(len)  # type: ignore[arg-type]
        for options, message in [
            ({"priority": 2**31}, "priority must be at most 2147483647"),
            ({"max_attempts": 0}, "max_attempts must be at least 1, got 0"),
            ({"delay": 1, "run_after": datetime.now(UTC)}, "not both"),
            ({"queue": ""}, "queue must not be empty"),
        ]:
            with pytest.raises(durable.InvalidArgumentError, match=message):
                await client.enqueue("x.v1", **options)
        with pytest.raises(durable.InvalidArgumentError, match="the workflow name must not be"):
            await client.enqueue("")
        with pytest.raises(durable.SerializationError, match="cannot be serialized"):
            await client.enqueue("x.v1", object())
        with pytest.raises(durable.WorkflowNotFoundError):
            await client.result("nope", timeout=1)
        with pytest.raises(durable.InvalidArgumentError, match="timeout must not be negative"):
            await client.result("nope", timeout=-1)
        assert (await client.list_workflows()).items == []  # nothing was written
        with pytest.raises(durable.DurableError, match="started by async code"):
            await asyncio.to_thread(client.start_sync)


# -- a producer process without workflow code --------------------------------------------------


@contextmanager
def worker_process(url: str, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """tests/workerprog.py serving the pipeline on ``url`` until the block ends."""
    stderr = tmp_path / "worker-stderr.txt"
    with stderr.open("wb") as out:
        process = subprocess.Popen(
            [
                *(sys.executable, str(WORKERPROG), "serve", "--url", url, "--executor-id", "w-1"),
                *("--log", str(tmp_path / "steps.log"), "--no-pause", "--poll-interval", "0.05"),
            ],
            cwd=tmp_path,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
        )
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=WAIT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    assert process.returncode == 0, stderr.read_text()


@pytest.mark.parametrize("mode", ["async", "sync"])
def test_a_process_without_workflow_code_drives_workflows_served_elsewhere(
    sql_url: str, mode: str, tmp_path: Path
) -> None:
    with durable.Client(sql_url):  # migrated once, before two processes start on it
        pass
    with worker_process(sql_url, tmp_path):
        done = subprocess.run(
            [sys.executable, str(CLIENTPROG), "--url", sql_url, "--mode", mode, "--prefix", mode],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=WAIT * 4,
        )
        assert done.returncode == 0, done.stderr
        seen: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    assert seen == {
        "done": {"n": 5, "out": 9},
        "cancel": "cancelled",
        "cancelled_error": "WorkflowCancelledError",
        "retry": "pending",
        "retried": {"n": 7, "out": 13},
        "listed": [[f"{mode}-cancelled", "succeeded"], [f"{mode}-done", "succeeded"]],
        "steps": ["a", "b", "c"],
        "imported_before": [],
        "imported_after": [],
    }
    with durable.Client(sql_url) as client:  # the producer left no executor behind
        assert [e.id for e in client.list_executors_sync()] == ["w-1"]


def test_request_threads_share_one_sync_client(sqlite_url: str) -> None:
    client = durable.Client(sqlite_url)
    errors: list[BaseException] = []

    def request(n: int) -> None:
        try:
            with client:  # each request thread enters; the last one out closes
                client.enqueue_sync("served.elsewhere.v1", n, workflow_id=f"r-{n}")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=request, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=WAIT)
    assert not any(thread.is_alive() for thread in threads) and errors == []
    with pytest.raises(durable.DurableError, match="client is not started"):
        client.list_workflows_sync()
    with client:  # started again
        listed = client.list_workflows_sync()
    assert sorted(i.id for i in listed.items) == sorted(f"r-{n}" for n in range(8))


async def test_nested_async_with_closes_at_the_last_exit(sqlite_url: str) -> None:
    """``with client:`` was reference-counted and ``async with client:`` was not: the inner
    block's exit closed the client under the outer one ("the client is not started")."""
    client = durable.Client(sqlite_url)
    async with client:
        async with client:
            await client.list_workflows()
        assert (await client.list_workflows()).items == []  # still open
    with pytest.raises(durable.DurableError, match="not started"):
        await client.list_workflows()
    async with durable.Runtime(durable.connect(sqlite_url), recover=False) as rt:
        async with rt:
            pass
        await rt.list_workflows()  # the runtime too


def test_a_client_used_from_another_event_loop_says_so(sql_url: str) -> None:
    """A client started by ``asyncio.run(client.start())`` and then called from the next
    ``asyncio.run`` ran on connections of the closed loop: it worked by chance on some backends
    and raised a bare RuntimeError ("attached to a different loop") on MariaDB."""
    client = durable.Client(sql_url)
    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(client.start())
        with pytest.raises(durable.DurableError, match="started on another event loop"):
            asyncio.run(client.list_workflows())
        assert loop.run_until_complete(client.list_workflows()).items == []  # its own: fine
    finally:
        loop.run_until_complete(client.close())
        loop.close()


async def test_a_client_on_its_own_loop_is_not_refused(sql_url: str) -> None:
    async with durable.Client(sql_url) as client:
        assert (await client.list_workflows()).items == []
