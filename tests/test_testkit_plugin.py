"""durable's pytest plugin, as a user's project sees it: a test file using ``durable_runtime``,
``durable_client``, ``durable_worker`` and ``durable_clock``, sync and async (pytest-asyncio's
strict mode, the default), run in-process by ``pytester`` with no configuration: the plugin is
on through its entry point. Also: ``--durable-url`` and the ini's ``durable_url`` choose the
backend (a SQLite file, both drivers, and PostgreSQL here, where ``durable_clock`` skips time
too; it skips the test on MySQL/MariaDB, saying why), each test gets a fresh in-memory backend,
and the plugin's fixture names do not clash with durable's own conftest.
"""

from __future__ import annotations

from importlib.metadata import entry_points

import pytest

# The dialects the in-process runs below use, imported here first: pytester drops the modules a
# run imported when it ends, and a dialect imported again later registers its SQL functions in
# SQLAlchemy's registry (which stays) a second time, a warning that fails every later test of
# this process (SAWarning: The GenericFunction '_regconfig_fn' is already registered)
import sqlalchemy.dialects.mysql
import sqlalchemy.dialects.postgresql
import sqlalchemy.dialects.sqlite  # noqa: F401

pytest_plugins = ["pytester"]

USER_TESTS = """
from datetime import timedelta

import pytest

import durable


@durable.step(name="user.add")
def add(a: int, b: int) -> int:
    return a + b


@durable.workflow(name="user.remind.v1")
async def remind(a: int) -> int:
    await durable.sleep(timedelta(days=3))
    return await add.aio(a, 1)


@durable.workflow(name="user.remind_sync.v1")
def remind_sync(a: int) -> int:
    durable.sleep_sync(timedelta(days=3))
    return add(a, 2)


def test_sync_run(durable_runtime, durable_clock):
    before = durable_clock.now()
    assert durable_runtime.run_sync(remind_sync, 1, workflow_id="same-id") == 3
    assert durable_clock.now() - before == timedelta(days=3)


@pytest.mark.asyncio
async def test_async_run(durable_runtime, durable_clock):
    before = durable_clock.now()
    assert await durable_runtime.run(remind, 1, workflow_id="same-id") == 2  # a fresh backend
    assert durable_clock.now() - before == timedelta(days=3)


@pytest.mark.asyncio
async def test_async_worker(durable_client, durable_worker):
    workflow_id = await durable_client.enqueue(remind, 5)
    assert await durable_client.result(workflow_id) == 6


def test_sync_worker(durable_client, durable_worker, durable_url):
    assert durable_url == "memory://"
    workflow_id = durable_client.enqueue_sync(remind_sync, 5)
    assert durable_client.result_sync(workflow_id) == 7
"""

URL_TESTS = """
import durable


@durable.workflow(name="user.plain.v1")
def plain(a: int) -> int:
    return a * 2


def test_on_the_url(durable_runtime, durable_url):
    assert durable_url == "{url}"
    assert type(durable_runtime.backend).__name__ == "{backend}"
    assert durable_runtime.run_sync(plain, 21) == 42


def test_the_clock(durable_clock):
    pass
"""


def test_the_plugin_is_registered_as_an_entry_point() -> None:
    found = [e for e in entry_points(group="pytest11") if e.value == "durable.testing.plugin"]
    assert found, "durable.testing.plugin is not a pytest11 entry point (reinstall durable)"


def test_a_users_sync_and_async_tests(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    pytester.makepyfile(test_user=USER_TESTS)
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=4)


def test_an_async_test_with_pytest_asyncio_turned_off_is_told_what_it_needs(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(
        test_user="""
async def test_async_run(durable_runtime):
    pass
"""
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:asyncio")
    result.stdout.fnmatch_lines(["*need pytest-asyncio*not -p no:asyncio*"])
    result.stdout.no_fnmatch_line("*AssertionError*")


def test_the_url_option_and_the_ini(pytester: pytest.Pytester) -> None:
    url = "memory://?serializer=pickle"  # any URL durable.connect knows
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    pytester.makepyfile(test_url=URL_TESTS.format(url=url, backend="InMemoryBackend"))
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", f"--durable-url={url}")
    result.assert_outcomes(passed=2)
    pytester.makeini(
        f"[pytest]\nasyncio_default_fixture_loop_scope = function\ndurable_url = {url}\n"
    )
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "--durable-url=memory://")
    result.assert_outcomes(passed=1, failed=1)  # the option wins over the ini


DATABASE_TESTS = """
import itertools
from datetime import timedelta

import pytest

import durable

SEEN = []
RUNTIME = []


@durable.step(name="user.db.flaky", max_attempts=3, initial_delay=240.0, backoff_rate=2.0)
async def flaky() -> str:
    SEEN.append(await RUNTIME[0].backend.now())  # the store's clock
    if len(SEEN) < 3:
        raise ConnectionError("later")
    return "charged"


@durable.workflow(name="user.db.remind.v1")
async def remind() -> str:
    await durable.sleep(timedelta(days=3))
    return "reminded"


@durable.workflow(name="user.db.remind_sync.v1")
def remind_sync() -> str:
    durable.sleep_sync(timedelta(days=3))
    return "reminded"


@pytest.mark.asyncio
async def test_async_run(durable_runtime, durable_clock, durable_url):
    assert durable_url == "{url}"
    before = await durable_runtime.backend.now()
    assert await durable_runtime.run(remind) == "reminded"
    assert await durable_runtime.backend.now() - before == timedelta(days=3)
    assert durable_clock.skipped == timedelta(days=3)


def test_sync_run(durable_runtime, durable_clock):
    before = durable_clock.now()
    assert durable_runtime.run_sync(remind_sync) == "reminded"
    assert durable_clock.now() - before == timedelta(days=3)


@durable.workflow(name="user.db.charge.v1")
async def charge() -> str:
    return await flaky()


@pytest.mark.asyncio
async def test_a_four_minute_backoff(durable_runtime, durable_clock):
    RUNTIME[:] = [durable_runtime]
    assert await durable_runtime.run(charge) == "charged"
    assert [b - a for a, b in itertools.pairwise(SEEN)] == [
        timedelta(minutes=4),
        timedelta(minutes=8),
    ]


@pytest.mark.asyncio
async def test_through_a_worker(durable_client, durable_worker, durable_clock):
    workflow_id = await durable_client.enqueue(remind)
    assert await durable_client.result(workflow_id) == "reminded"
    assert durable_clock.skipped == timedelta(days=3)
"""


def _on_a_database(pytester: pytest.Pytester, url: str) -> None:
    """In a subprocess: pytester's in-process runs forget the modules they import, which
    SQLAlchemy does not survive."""
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    pytester.makepyfile(test_db=DATABASE_TESTS.replace("{url}", url))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", f"--durable-url={url}")
    result.assert_outcomes(passed=4)


@pytest.mark.slow
def test_a_sqlite_url(pytester: pytest.Pytester) -> None:
    database = pytester.path / "app.db"
    url = f"sqlite:///{database}"
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    pytester.makepyfile(test_url=URL_TESTS.format(url=url, backend="SQLAlchemyBackend"))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-rs", f"--durable-url={url}")
    result.assert_outcomes(passed=2)
    assert database.exists()


@pytest.mark.slow
@pytest.mark.parametrize("driver", ["sqlite", "sqlite+aiosqlite"])
def test_the_clock_on_sqlite(pytester: pytest.Pytester, driver: str) -> None:
    _on_a_database(pytester, f"{driver}:///{pytester.path / 'app.db'}")


@pytest.mark.slow
@pytest.mark.postgres
def test_the_clock_on_postgres(pytester: pytest.Pytester, pg_url: str) -> None:
    _on_a_database(pytester, pg_url)


def test_the_clock_skips_on_mysql(pytester: pytest.Pytester) -> None:
    url = "mysql://root@127.0.0.1:1/nowhere"  # the clock's fixture skips before connecting
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    pytester.makepyfile(test_url=URL_TESTS.format(url=url, backend="SQLAlchemyBackend"))
    result = pytester.runpytest_inprocess(
        "-p", "no:cacheprovider", "-rs", f"--durable-url={url}", "-k", "the_clock"
    )
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(
        ["*durable_clock needs the in-memory backend, SQLite or PostgreSQL*"]
    )


def test_no_clash_with_durables_own_fixtures(request: pytest.FixtureRequest) -> None:
    manager = request._fixturemanager
    for name in ("durable_url", "durable_runtime", "durable_client", "durable_worker"):
        defs = manager.getfixturedefs(name, request.node)
        assert defs is not None and [d.func.__module__ for d in defs] == [
            "durable.testing.plugin"
        ], name  # the plugin's only: tests/conftest.py defines none of these


APP_TESTS = """
from datetime import timedelta

import pytest
from fastapi import Depends, FastAPI
from starlette.testclient import TestClient

import durable
from durable.integrations.starlette import durable_lifespan, get_runtime


@durable.workflow(name="user.app.sleeper.v1")
async def sleeper(order_id: str) -> str:
    await durable.sleep(timedelta(hours=1))
    return f"woke {order_id}"


def make_app(runtime):
    app = FastAPI(lifespan=durable_lifespan(runtime, poll_interval=0.05))

    @app.post("/orders/{order_id}")
    async def start(order_id: str, rt: durable.Runtime = Depends(get_runtime)):
        return {"id": await rt.enqueue(sleeper, order_id, workflow_id=f"o-{order_id}")}

    @app.post("/run/{order_id}")
    async def run(order_id: str, rt: durable.Runtime = Depends(get_runtime)):
        return {"r": await rt.run(sleeper, order_id, workflow_id=f"r-{order_id}")}

    return app


def test_the_app_and_the_test_share_a_store_and_a_clock(durable_app_runtime, durable_clock):
    with TestClient(make_app(durable_app_runtime)) as web:
        assert web.post("/orders/1").json() == {"id": "o-1"}
        assert web.post("/run/2").json() == {"r": "woke 2"}
        client = durable_app_runtime.client
        assert client.result_sync("o-1", timeout=30) == "woke 1"
        assert client.get_workflow_sync("r-2").status is durable.WorkflowStatus.SUCCEEDED


def test_not_beside_the_fixtures_runtime(durable_app_runtime, durable_client):
    pass
"""


def test_an_apps_runtime_shares_the_tests_store_and_clock(pytester: pytest.Pytester) -> None:
    """``durable_lifespan(durable_url)`` under ``TestClient``, as the docs said, gave the app a
    store of its own in memory (the test's client found none of the app's executions) and no
    time skipping (its hour-long sleep hung the test)."""
    pytester.makeini("[pytest]\nasyncio_default_fixture_loop_scope = function\n")
    pytester.makepyfile(test_app=APP_TESTS)
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "-p", "no:randomly")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*durable_app_runtime and durable_runtime*two*runtimes*"])
