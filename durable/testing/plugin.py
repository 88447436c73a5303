"""durable's pytest plugin: fixtures for testing your workflows, on as soon as durable is
installed (a ``pytest11`` entry point; nothing to configure).

Fixtures (see :mod:`durable.testing.fixtures` for each one's contract):

* ``durable_url``: the backend the tests run on: ``--durable-url URL`` on the command line, else
  ``durable_url = URL`` in the ini file, else ``memory://``;
* ``durable_runtime``: a started :class:`~durable.Runtime` on it, closed after the test;
* ``durable_client``: a :class:`~durable.Client` on the same backend;
* ``durable_worker``: a worker of the runtime, serving its registered workflows, stopped
  after the test;
* ``durable_app_runtime``: a runtime on it, not started, for an app that starts it on its own
  event loop (``durable_lifespan(durable_app_runtime)`` under Starlette's ``TestClient``);
* ``durable_clock``: the :class:`~durable.testing.clock.TimeSkippingClock` of the runtime (the
  in-memory backend, SQLite and PostgreSQL): durable sleeps, timeouts and backoffs complete in
  milliseconds. In memory the runtime always runs on it; on a database, in the tests that use
  it (the others keep the database's clock, which other processes can share).

Sync tests use the blocking API (``durable_runtime.run_sync(...)``); async tests
(pytest-asyncio) await (``await durable_runtime.run(...)``), on the test's event loop.

This module imports nothing of durable's runtime until a fixture is used: loading the plugin
costs nothing at collection.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from durable.testing.clock import TimeSkippingClock

#: The backend the fixtures use when neither ``--durable-url`` nor the ini says.
DEFAULT_URL = "memory://"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("durable", "durable workflows")
    group.addoption(
        "--durable-url",
        dest="durable_url",
        default=None,
        metavar="URL",
        help="the backend durable's fixtures run on (default: the ini's durable_url, else "
        f"{DEFAULT_URL})",
    )
    parser.addini(
        "durable_url", help=f"the backend durable's fixtures run on (default {DEFAULT_URL})"
    )


@pytest.fixture
def durable_url(request: pytest.FixtureRequest) -> str:
    """The URL of the backend durable's fixtures use (``--durable-url``, the ini's
    ``durable_url``, else ``memory://``). Override it in a conftest.py to compute one (a fresh
    database per test)."""
    chosen = request.config.getoption("durable_url") or request.config.getini("durable_url")
    return str(chosen or DEFAULT_URL)


@pytest.fixture
def durable_clock(durable_url: str) -> TimeSkippingClock:
    """The time-skipping clock of ``durable_runtime`` (it judges every lease, due time and
    deadline of the test's backend: in memory, SQLite or PostgreSQL). Skips the test on
    MySQL/MariaDB, whose statements read the server's clock."""
    from durable.testing.fixtures import has_clock

    if not has_clock(durable_url):
        pytest.skip(
            "durable_clock needs the in-memory backend, SQLite or PostgreSQL; durable_url is "
            f"{durable_url!r}"
        )
    from durable.testing.clock import TimeSkippingClock

    return TimeSkippingClock()


@pytest.fixture
def durable_runtime(request: pytest.FixtureRequest, durable_url: str) -> Iterator[Any]:
    """A started :class:`~durable.Runtime` on ``durable_url`` (registering every workflow
    imported so far), closed after the test; it runs on ``durable_clock`` in memory, and on
    SQLite and PostgreSQL in a test that uses ``durable_clock``."""
    from durable.testing.fixtures import runtime_for

    yield from runtime_for(request, durable_url)


@pytest.fixture
def durable_app_runtime(request: pytest.FixtureRequest, durable_url: str) -> Any:
    """A :class:`~durable.Runtime` on ``durable_url``, not started, for an app under test that
    starts it on an event loop of its own: give it to the app's
    ``durable_lifespan(durable_app_runtime)`` (Starlette's ``TestClient`` runs the app on its
    own loop), which starts it, runs its worker and closes it. It runs on ``durable_clock`` as
    ``durable_runtime`` does (always in memory; on SQLite and PostgreSQL in a test that uses
    ``durable_clock``), and while the app runs, ``durable_app_runtime.client`` reads what the
    app did, in memory too. Not with ``durable_runtime`` in the same test (a usage error)."""
    from durable.testing.fixtures import app_runtime_for

    return app_runtime_for(request, durable_url)


@pytest.fixture
def durable_client(durable_runtime: Any) -> Any:
    """A :class:`~durable.Client` on ``durable_runtime``'s backend (``durable_runtime.client``):
    enqueue, result, inspection and control, sync (``_sync`` methods) or async."""
    return durable_runtime.client


@pytest.fixture
def durable_worker(request: pytest.FixtureRequest, durable_runtime: Any) -> Iterator[Any]:
    """A :class:`~durable.worker.Worker` of ``durable_runtime``, serving its registered
    workflows while the test runs; stopped after it."""
    from durable.testing.fixtures import worker_for

    yield from worker_for(request, durable_runtime)


try:  # the async tests' fixtures, run by pytest-asyncio on the test's loop
    import pytest_asyncio

    _HAVE_PYTEST_ASYNCIO = True
except ImportError:  # pragma: no cover - without pytest-asyncio, async tests get a clear error
    _HAVE_PYTEST_ASYNCIO = False

if _HAVE_PYTEST_ASYNCIO:

    @pytest_asyncio.fixture(loop_scope="function")
    async def _durable_async_runtime(
        request: pytest.FixtureRequest, durable_url: str
    ) -> AsyncIterator[Any]:
        from durable.testing.fixtures import async_runtime

        async for runtime in async_runtime(request, durable_url):
            yield runtime

    @pytest_asyncio.fixture(loop_scope="function")
    async def _durable_async_worker(_durable_async_runtime: Any) -> AsyncIterator[Any]:
        from durable.testing.fixtures import async_worker

        async for worker in async_worker(_durable_async_runtime):
            yield worker
