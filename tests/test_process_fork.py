"""A client or runtime started in a process that then forks (a preforking server that imported
the app first, gunicorn ``--preload``): in the child its loop's thread does not exist, so its
blocking calls are refused at once with an error that says what to do, instead of waiting for
that loop for ever; and the child's use leaves the parent's connections working."""

from __future__ import annotations

import asyncio
import threading

import pytest
from support import in_a_fork

import durable

FORKED = "is a fork of it"


@durable.workflow(name="forks.noop.v1")
async def noop(n: int) -> int:
    return n


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def url(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url"))


def test_a_started_client_refuses_its_blocking_calls_in_a_fork(url: str) -> None:
    with durable.Client(url) as client:
        client.enqueue_sync(noop, 1, workflow_id="before")

        def child() -> None:
            assert client.started_elsewhere()
            with pytest.raises(durable.DurableError, match=FORKED):
                client.enqueue_sync(noop, 2, workflow_id="in-the-child")
            client.close_sync()  # marks it closed here; the parent's connections are its own
            with durable.Client(url) as own:  # what the child should do: a client of its own
                own.enqueue_sync(noop, 3, workflow_id="child-own")

        assert in_a_fork(child) == 0
        assert not client.started_elsewhere()
        # the parent's client, and its pooled connections, still work after the child's exit
        client.enqueue_sync(noop, 4, workflow_id="after")
        ids = {w.id for w in client.list_workflows_sync(name="forks.noop.v1").items}
        assert ids == {"before", "child-own", "after"}


def test_a_client_started_by_async_code_refuses_blocking_calls_in_a_fork(url: str) -> None:
    started, done = threading.Event(), threading.Event()
    client = durable.Client(url)

    async def serve() -> None:  # an async app's loop in a thread, as the blocking API allows
        async with client:
            started.set()
            await asyncio.to_thread(done.wait)

    thread = threading.Thread(target=asyncio.run, args=(serve(),))
    thread.start()
    try:
        assert started.wait(30)
        client.enqueue_sync(noop, 1, workflow_id="before")

        def child() -> None:
            assert client.started_elsewhere()
            with pytest.raises(durable.DurableError, match=FORKED):
                client.get_workflow_sync("before")

        assert in_a_fork(child) == 0
        assert client.get_workflow_sync("before").status is durable.WorkflowStatus.PENDING
    finally:
        done.set()
        thread.join()


def test_a_runtime_started_before_a_fork_is_refused_in_it(sqlite_url: str) -> None:
    with durable.Runtime(durable.connect(sqlite_url), recover=False) as runtime:

        def child() -> None:
            with pytest.raises(durable.DurableError, match=f"runtime was started in .*{FORKED}"):
                runtime.run_sync(noop, 5)

        assert in_a_fork(child) == 0
        assert runtime.run_sync(noop, 6) == 6
