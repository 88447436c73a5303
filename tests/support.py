"""What many test modules share: the upper bound of a wait, waiting for a state, a quick runtime,
a backend holding a claim, and reaching a test's PostgreSQL database with psycopg."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

import psycopg
import sqlalchemy as sa

import durable
from durable.backends import SQLAlchemyBackend
from durable.models import WORKFLOW_TASK, TaskSpec, WorkflowSnapshot

#: ``processes(program, *args, name=...)``, the conftest fixture: starts a real process.
Processes = Callable[..., "subprocess.Popen[bytes]"]

#: Seconds: an upper bound for anything a test waits for, never reached when green.
WAIT = 60.0


@asynccontextmanager
async def claimed_backend(
    url: str, worker: str, *, input: Any = None
) -> AsyncIterator[SQLAlchemyBackend]:
    """A started backend on ``url`` with workflow "wf" (its ``input``) created and its task
    claimed by ``worker``, closed on the way out. Created through ``create_workflows`` (a
    transaction, the bulk path), not the direct statement ``create_workflow`` uses on
    PostgreSQL: the direct path's connections are as the claim left them."""
    backend = durable.connect(url)
    assert isinstance(backend, SQLAlchemyBackend)
    await backend.start()
    try:
        await backend.create_workflows(
            [
                (
                    WorkflowSnapshot(id="wf", name="wf", input=input),
                    TaskSpec(instance_id="wf", name="wf"),
                )
            ]
        )
        assert await backend.claim_task("wf", WORKFLOW_TASK, worker, timedelta(minutes=5))
        yield backend
    finally:
        await backend.close()


def quick_runtime(
    backend: durable.PersistentBackend,
    *,
    registry: durable.Registry,
    executor_id: str,
    recover: bool = True,
) -> durable.Runtime:
    """A runtime that polls every 10 ms and holds leases for 5 s. ``recover=False`` for a test
    that runs executions itself (``execute_claimed``): the recovery the runtime starts with may
    otherwise, late on a busy machine, drive the same execution, and the test's run is then left
    to that drive."""
    return durable.Runtime(
        backend,
        executor_id=executor_id,
        registry=registry,
        poll_interval=0.01,
        claim_ttl=5.0,
        recover=recover,
    )


async def eventually(check: Callable[[], Awaitable[bool]], what: str) -> None:
    """Poll ``check`` every 10 ms until it returns true; fail naming ``what`` after WAIT."""
    deadline = time.monotonic() + WAIT
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


class LoopTicks:
    """While entered, counts the event loop's turns of a coroutine that sleeps 10 ms at a time
    (:attr:`count`): a test that a wait left the loop running reads it."""

    def __init__(self) -> None:
        self.count = 0
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> LoopTicks:
        self._task = asyncio.create_task(self._tick())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(0.01)
            self.count += 1


def pg_conninfo(url: str) -> str:
    """A SQLAlchemy PostgreSQL URL as libpq takes it (psycopg's connection string)."""
    return sa.make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


async def terminate_other_sessions(url: str) -> None:
    """Terminate every other session on ``url``'s database (what a server restart does to a
    client's connections), and wait until each is gone (its goodbye sent, its socket closed)."""
    async with await psycopg.AsyncConnection.connect(pg_conninfo(url), autocommit=True) as admin:
        await admin.execute(
            "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity"
            " WHERE datname = %s AND pid <> pg_backend_pid()",
            (sa.make_url(url).database,),
        )


def in_a_fork(body: Callable[[], object], *, within: float = 20.0) -> int:
    """Run ``body`` in a child process forked from this one, as a preforking server (gunicorn
    ``--preload``) runs its workers; returns the child's exit status: 0 if ``body`` returned, 1
    if it raised (its traceback on stderr), or -SIGALRM if it still ran after ``within``
    seconds."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child's outcome is its exit status
        status = 1
        try:
            signal.signal(signal.SIGALRM, signal.SIG_DFL)  # not pytest-timeout's: it ends
            signal.alarm(max(1, round(within)))
            body()
            status = 0
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stderr.flush()
            os._exit(status)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)
