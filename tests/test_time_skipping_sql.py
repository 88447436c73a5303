"""The time-skipping clock (``durable_clock``) on databases, beyond what tests/test_time_skipping.py
runs on every backend: on a SQLite file (both drivers) and on PostgreSQL, a 3-day
``durable.sleep`` completes at once in real time and exactly on time by the store's clock
(``backend.now()`` and the rows' times);
two runs from the same start see the same times; ``advance`` by hand, from the test's loop and
from a sync test's thread. (On a database the fixtures' runtime runs on the clock in the tests
that use ``durable_clock``: every test here does.)
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

import durable
from durable.backends.sql import SQLAlchemyBackend
from durable.backends.sql.dialects import dialect_for
from durable.errors import ConfigurationError, InvalidArgumentError
from durable.models import WorkflowStatus
from durable.testing import TimeSkippingClock
from durable.timers import SLEEP_STEP

SEEN: list[datetime] = []
RUNTIME: list[durable.Runtime] = []


@pytest.fixture(
    params=["sqlite", "aiosqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def durable_url(request: pytest.FixtureRequest) -> str:
    """The plugin's fixtures on a fresh database of each kind."""
    name = {"sqlite": "sqlite_url", "aiosqlite": "aiosqlite_url", "postgres": "pg_url"}
    return str(request.getfixturevalue(name[request.param]))


@pytest.fixture(autouse=True)
def _runtime(request: pytest.FixtureRequest) -> Iterator[None]:
    SEEN.clear()
    if "durable_url" in request.fixturenames:  # the steps read the runtime's store's clock
        RUNTIME[:] = [request.getfixturevalue("durable_runtime")]
    yield
    RUNTIME.clear()


async def _store_now() -> datetime:
    """The time by the store's clock (what judges its leases and due times)."""
    return await RUNTIME[0].backend.now()


@durable.step(name="sqlskip.now")
async def now_step() -> str:
    return (await _store_now()).isoformat()


@durable.workflow(name="sqlskip.three_days.v1")
async def three_days() -> list[str]:
    before = await now_step()
    await durable.sleep(timedelta(days=3))
    return [before, await now_step()]


@durable.step(name="sqlskip.flaky", max_attempts=3, initial_delay=240.0, backoff_rate=2.0)
async def flaky() -> str:
    SEEN.append(await _store_now())
    if len(SEEN) < 3:
        raise ConnectionError("try again later")
    return "done"


@durable.workflow(name="sqlskip.backoff.v1")
async def backoff() -> str:
    return await flaky()


def _span(pair: list[str]) -> timedelta:
    return datetime.fromisoformat(pair[1]) - datetime.fromisoformat(pair[0])


async def test_a_three_day_sleep_is_crossed_at_once_exactly_on_time(
    durable_runtime: durable.Runtime, durable_clock: TimeSkippingClock
) -> None:
    start = durable_clock.now()
    before, after = await durable_runtime.run(three_days, workflow_id="w")
    assert datetime.fromisoformat(before) == start  # the store's clock is the test's
    assert datetime.fromisoformat(after) == start + timedelta(days=3)
    assert durable_clock.skipped == timedelta(days=3)
    steps = await durable_runtime.list_steps("w")
    sleep = next(s for s in steps if s.name == SLEEP_STEP)
    assert sleep.status.value == "succeeded"
    info = await durable_runtime.client.get_workflow("w")  # the rows' times are the clock's
    assert info.created_at == start
    assert info.completed_at == start + timedelta(days=3)


async def test_a_due_execution_nobody_serves_holds_time_only_for_the_grace(
    durable_runtime: durable.Runtime,
    durable_client: durable.Client,
    durable_clock: TimeSkippingClock,
) -> None:
    """A database is asked twice for each skip (a look, then under its lock): the first
    asking ended the grace given to an unclaimed task and the second began another, so on
    PostgreSQL the clock never moved while an execution nobody serves was due (one left by
    an earlier test, or enqueued by name)."""
    await durable_client.enqueue("sqlskip.nobody_serves.v1", 1)
    start = durable_clock.now()
    before, after = await asyncio.wait_for(durable_runtime.run(three_days), 30)
    assert datetime.fromisoformat(after) - datetime.fromisoformat(before) == timedelta(days=3)
    assert durable_clock.now() >= start + timedelta(days=3)


async def _until_asleep(client: durable.Client, workflow_id: str) -> None:
    for _ in range(2000):  # a worker picks it up at once
        if any(s.name == SLEEP_STEP for s in await client.list_steps(workflow_id)):
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"{workflow_id} never slept")


async def test_by_hand_with_auto_skip_off(
    durable_client: durable.Client, durable_worker: object, durable_clock: TimeSkippingClock
) -> None:
    durable_clock.auto_skip = False
    workflow_id = await durable_client.enqueue(three_days)
    await _until_asleep(durable_client, workflow_id)
    with pytest.raises(TimeoutError):  # time stands still: it cannot finish
        await durable_client.result(workflow_id, timeout=0.2)
    assert (await durable_client.get_workflow(workflow_id)).status is WorkflowStatus.PENDING
    durable_clock.advance(timedelta(days=2, hours=23))  # on the test's loop: done when it runs
    with pytest.raises(TimeoutError):
        await durable_client.result(workflow_id, timeout=0.2)
    await durable_clock.advance_async(timedelta(hours=1))
    assert durable_clock.skipped == timedelta(days=3)
    assert _span(await durable_client.result(workflow_id, timeout=30)) == timedelta(days=3)


def test_by_hand_from_a_sync_test(
    durable_runtime: durable.Runtime,
    durable_client: durable.Client,
    durable_worker: object,
    durable_clock: TimeSkippingClock,
) -> None:
    durable_clock.auto_skip = False
    workflow_id = durable_client.enqueue_sync(three_days)
    durable_runtime.blocking(_until_asleep(durable_client, workflow_id))
    start = durable_clock.now()
    durable_clock.advance(timedelta(days=3))  # from the test's thread: done when it returns
    assert durable_clock.now() == start + timedelta(days=3)
    assert _span(durable_client.result_sync(workflow_id, timeout=30)) == timedelta(days=3)


START = datetime(2030, 1, 1, 12, tzinfo=UTC)


async def _one_run(url: str, run: str) -> tuple[object, ...]:
    runtime = durable.Runtime(SQLAlchemyBackend(url), poll_interval=0.05)
    clock = TimeSkippingClock(START)
    clock.install(runtime)
    async with runtime:
        RUNTIME[:] = [runtime]
        SEEN.clear()
        outcome = await runtime.run(three_days, workflow_id=f"d{run}")
        retried = await runtime.run(backoff, workflow_id=f"r{run}")
        steps = await runtime.list_steps(f"d{run}")
        info = await runtime.client.get_workflow(f"d{run}")
    return (
        outcome,
        retried,
        list(SEEN),
        [(s.name, s.started_at, s.completed_at) for s in steps],
        info.created_at,
        info.completed_at,
        clock.now(),
    )


async def test_two_runs_see_the_same_times(durable_url: str) -> None:
    one = await _one_run(durable_url, "1")  # each on a clock of its own from the same start
    two = await _one_run(durable_url, "2")
    assert one == two
    outcome, _, seen, _, created, completed, now = one
    assert outcome == [START.isoformat(), (START + timedelta(days=3)).isoformat()]
    assert seen == [
        START + timedelta(days=3),
        START + timedelta(days=3, minutes=4),
        START + timedelta(days=3, minutes=12),
    ]
    assert (created, completed) == (START, START + timedelta(days=3))
    assert now == START + timedelta(days=3, minutes=12)
    later = START + timedelta(days=3)
    # each step's start and end on the virtual clock (the sleep started when it was recorded)
    assert one[3] == [
        ("sqlskip.now", START, START),
        ("durable.sleep", START, later),
        ("sqlskip.now", later, later),
    ]


async def test_the_clock_refuses_a_started_backend(durable_runtime: durable.Runtime) -> None:
    with pytest.raises(InvalidArgumentError, match="started"):
        TimeSkippingClock().attach(durable_runtime.backend)  # type: ignore[arg-type]


def test_mysql_has_no_bound_clock() -> None:
    with pytest.raises(ConfigurationError, match="SQLite and PostgreSQL"):
        dialect_for("mysql", TimeSkippingClock())


async def test_without_the_clock_the_database_keeps_time(durable_runtime: durable.Runtime) -> None:
    """A test that does not use ``durable_clock`` runs on the database's clock, which other
    processes (a worker started as a subprocess) share."""
    backend = durable_runtime.backend
    assert isinstance(backend, SQLAlchemyBackend)
    assert not isinstance(backend.clock, TimeSkippingClock)
    assert backend.dialect.binds_clock is (backend.dialect.name == "sqlite")
    assert type(backend.dialect) is type(dialect_for(backend.dialect.name))


@durable.workflow(name="sqlskip.stamp.v1")
async def stamp() -> str:
    return await now_step()


async def test_many_at_once_a_delayed_batch_and_sleepers(
    durable_client: durable.Client, durable_worker: object, durable_clock: TimeSkippingClock
) -> None:
    """A batch enqueued with a delay (PostgreSQL: the bulk insert, its due time computed from
    the clock) and workflows that run at once (PostgreSQL: their writes grouped): each delayed
    one starts exactly an hour later, each sleeper wakes exactly 3 days later, in one skip."""
    start = durable_clock.now()
    delayed = await durable_client.enqueue_many(stamp, [() for _ in range(4)], delay=3600)
    sleepers = await durable_client.enqueue_many(three_days, [() for _ in range(6)])
    stamps = [await durable_client.result(i) for i in delayed]
    assert stamps == [(start + timedelta(hours=1)).isoformat()] * 4
    spans = [await durable_client.result(i) for i in sleepers]
    assert spans == [[start.isoformat(), (start + timedelta(days=3)).isoformat()]] * 6
    assert durable_clock.skipped == timedelta(days=3)
