"""What the fixtures of durable's pytest plugin (:mod:`durable.testing.plugin`) do, imported
when a test first uses one of them.

* ``durable_runtime``: a :class:`~durable.Runtime` on ``durable_url`` with an executor id of its
  own, started for the test and closed after it. A sync test gets it started on a background
  event loop (``runtime.start_sync()``: call ``run_sync``, ``enqueue_sync``...); an async test
  (a coroutine function, run by pytest-asyncio) gets it started on the test's own loop (``await
  runtime.run(...)``). Its backend and its waits run on the test's ``durable_clock``
  (:class:`~durable.testing.clock.TimeSkippingClock`): always on the in-memory backend; on
  SQLite and PostgreSQL when the test uses ``durable_clock`` (else on the database's clock, so
  that other processes, a worker started as a subprocess, can share the database).
* ``durable_worker``: ``runtime.start_worker()`` on the same loop, stopped after the test.
"""

from __future__ import annotations

import inspect
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from durable.connect import connect
from durable.runtime import Runtime
from durable.worker import Worker

#: Seconds between a worker's looks for work when nothing wakes it (tests want it prompt).
WORKER_POLL = 0.05

#: Seconds between a run's looks at an execution that another executor holds.
RUN_POLL = 0.05


def is_memory(url: str) -> bool:
    """Whether ``url`` names the in-memory backend."""
    return url.split("://", 1)[0] == "memory"


#: The URL schemes (before any ``+driver``) whose backends run on a time-skipping clock.
CLOCK_SCHEMES = frozenset({"memory", "sqlite", "postgresql", "postgres"})


def has_clock(url: str) -> bool:
    """Whether the backend ``url`` names runs on the time-skipping clock (the in-memory
    backend, SQLite, PostgreSQL; not MySQL/MariaDB, whose statements read the server's
    clock)."""
    return url.split("://", 1)[0].split("+", 1)[0].lower() in CLOCK_SCHEMES


def is_async_test(request: pytest.FixtureRequest) -> bool:
    """Whether the requesting test is a coroutine function (run on an event loop)."""
    function = getattr(request, "function", None)
    return function is not None and inspect.iscoroutinefunction(function)


def make_runtime(request: pytest.FixtureRequest, url: str) -> Runtime:
    """A runtime on ``url`` (not started), on the test's clock: always in memory; on a
    database that supports it (:func:`has_clock`) when the test uses ``durable_clock`` (without
    it, on the database's clock, which other processes of the test share)."""
    runtime = Runtime(
        connect(url),
        executor_id=f"pytest-{uuid.uuid4().hex[:12]}",
        poll_interval=RUN_POLL,
    )
    if is_memory(url) or (has_clock(url) and "durable_clock" in request.fixturenames):
        request.getfixturevalue("durable_clock").install(runtime)
    return runtime


def runtime_for(request: pytest.FixtureRequest, url: str) -> Iterator[Runtime]:
    """The ``durable_runtime`` fixture's body."""
    if is_async_test(request):
        yield _async_fixture(request, "_durable_async_runtime")
        return
    runtime = make_runtime(request, url)
    runtime.start_sync()
    try:
        yield runtime
    finally:
        runtime.close_sync()


def app_runtime_for(request: pytest.FixtureRequest, url: str) -> Runtime:
    """The ``durable_app_runtime`` fixture's body: :func:`make_runtime`, not started.

    :raises pytest.UsageError: the test also uses ``durable_runtime`` (or a fixture built on
        it): two runtimes, two stores in memory, and one clock that follows only one of them.
    """
    if "durable_runtime" in request.fixturenames:
        raise pytest.UsageError(
            "durable_app_runtime and durable_runtime (or durable_client, durable_worker) are two "
            "runtimes: in memory, two separate stores, and durable_clock follows only one. In a "
            "test of an app, read what it did through durable_app_runtime.client"
        )
    return make_runtime(request, url)


def worker_for(request: pytest.FixtureRequest, runtime: Runtime) -> Iterator[Worker]:
    """The ``durable_worker`` fixture's body."""
    if is_async_test(request):
        yield _async_fixture(request, "_durable_async_worker")
        return
    worker = runtime.blocking(runtime.start_worker(poll_interval=WORKER_POLL))
    try:
        yield worker
    finally:
        runtime.blocking(worker.stop())


async def async_runtime(request: pytest.FixtureRequest, url: str) -> AsyncIterator[Runtime]:
    """The runtime of an async test, started on its loop."""
    runtime = make_runtime(request, url)
    async with runtime:
        yield runtime


async def async_worker(runtime: Runtime) -> AsyncIterator[Worker]:
    """The worker of an async test, on its loop."""
    worker = await runtime.start_worker(poll_interval=WORKER_POLL)
    try:
        yield worker
    finally:
        await worker.stop()


def _async_fixture(request: pytest.FixtureRequest, name: str) -> Any:
    needs = (
        "durable's fixtures in an async test need pytest-asyncio (pip install pytest-asyncio, "
        "and not -p no:asyncio): the runtime must start on the test's event loop"
    )
    if not request.config.pluginmanager.has_plugin("asyncio"):  # missing, or turned off
        raise pytest.UsageError(needs)
    try:
        return request.getfixturevalue(name)
    except pytest.FixtureLookupError:
        raise pytest.UsageError(needs) from None


__all__ = [
    "app_runtime_for",
    "async_runtime",
    "async_worker",
    "has_clock",
    "is_async_test",
    "is_memory",
    "make_runtime",
    "runtime_for",
    "worker_for",
]
