"""A client or runtime started in a process that then forks (a preforking server that imported
the app first, gunicorn ``--preload``): in the child its loop's thread does not exist, so its
blocking calls are refused at once with an error that says what to do, instead of waiting for
that loop for ever; and the child's use leaves the parent's connections working."""

from __future__ import annotations

import asyncio
import subprocess
import sys
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


_EXITING_CHILD = """
import os, sys, threading
import durable

client = durable.Client(sys.argv[1])
client.start_sync()
client.enqueue_sync("forks.noop.v1", 1)
pid = os.fork()
if pid == 0:
    sys.exit(0)  # the child never uses the client, and exits normally: it finalizes it
os.waitpid(pid, 0)
done = []
call = threading.Thread(target=lambda: done.append(client.enqueue_sync("forks.noop.v1", 2)))
call.daemon = True
call.start()
call.join(30)
print("answered" if done else "hung", flush=True)
os._exit(0 if done else 3)
"""


@pytest.mark.parametrize(
    "kind",
    [
        "sqlite",
        pytest.param("postgres", marks=pytest.mark.postgres),
        pytest.param("mysql", marks=pytest.mark.mysql),
    ],
)
def test_a_child_that_exits_leaves_the_parents_client_working(
    kind: str, request: pytest.FixtureRequest
) -> None:
    """A child forked after a client started, that exits normally without touching it,
    finalized the connections it inherited: on MariaDB their transports removed the sockets
    from the epoll instance the child's copy of the loop shares with the parent, and the
    parent's next call never returned. A fork now gives the inherited loops selectors of
    their own."""
    url = str(
        request.getfixturevalue(
            {"sqlite": "sqlite_url", "postgres": "pg_url", "mysql": "mysql_url"}[kind]
        )
    )
    run = subprocess.run(
        [sys.executable, "-c", _EXITING_CHILD, url], capture_output=True, text=True, timeout=120
    )
    assert (run.returncode, run.stdout.strip()) == (0, "answered"), run.stderr[-2000:]
