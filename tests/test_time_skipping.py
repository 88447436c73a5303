"""The time-skipping clock (``durable_clock``, durable.testing.clock) under the plugin's fixtures,
in memory, on SQLite files (both drivers) and on PostgreSQL:
durable sleeps of days, a step's 4-minute retry backoff, a workflow's retry backoff, a ``recv``
timeout, a timer and a deadline all complete at once in real time, and exactly on time in virtual
time (what the workflow sees of the store's clock is the same on every run); through ``run`` and
through a worker; sync and async; by hand with ``advance`` when ``auto_skip`` is off.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from datetime import datetime, timedelta

import pytest

import durable
from durable.errors import InvalidArgumentError, WorkflowCancelledError
from durable.models import WorkflowStatus
from durable.testing import TimeSkippingClock
from durable.timers import SLEEP_STEP

SEEN: list[datetime] = []
CLOCK: list[TimeSkippingClock] = []


@pytest.fixture(
    params=[
        "memory",
        "sqlite",
        "aiosqlite",
        pytest.param("postgres", marks=pytest.mark.postgres),
    ]
)
def durable_url(request: pytest.FixtureRequest) -> str:
    """The plugin's fixtures in memory and on a fresh database of each kind (on a database the
    runtime runs on the clock in the tests that use ``durable_clock``: all of these do)."""
    if request.param == "memory":
        return "memory://"
    name = {"sqlite": "sqlite_url", "aiosqlite": "aiosqlite_url", "postgres": "pg_url"}
    return str(request.getfixturevalue(name[request.param]))


@pytest.fixture(autouse=True)
def _clock(durable_clock: TimeSkippingClock) -> Iterator[None]:
    SEEN.clear()
    CLOCK[:] = [durable_clock]
    yield
    CLOCK.clear()


@durable.step(name="skip.now")
def now_step() -> str:
    return CLOCK[0].now().isoformat()


@durable.workflow(name="skip.three_days.v1")
async def three_days() -> list[str]:
    before = await now_step.aio()
    await durable.sleep(timedelta(days=3))
    return [before, await now_step.aio()]


@durable.workflow(name="skip.three_days_sync.v1")
def three_days_sync() -> list[str]:
    before = now_step()
    durable.sleep_sync(timedelta(days=3))
    return [before, now_step()]


@durable.step(name="skip.flaky", max_attempts=3, initial_delay=240.0, backoff_rate=2.0)
def flaky() -> str:
    SEEN.append(CLOCK[0].now())
    if len(SEEN) < 3:
        raise ConnectionError("try again later")
    return "done"


@durable.workflow(name="skip.backoff.v1")
async def backoff() -> str:
    return await flaky.aio()


FAILS: list[int] = []


@durable.workflow(
    name="skip.workflow_retry.v1",
    retry=durable.RetryPolicy(max_attempts=3, initial_delay=60.0, backoff_rate=4.0),
)
async def workflow_retry() -> str:
    SEEN.append(CLOCK[0].now())
    if len(SEEN) < 3:
        raise RuntimeError("not yet")
    return "third time"


@durable.workflow(name="skip.recv.v1")
async def wait_for_approval() -> list[object]:
    await durable.start_timer("reminder", timedelta(hours=12), value="remind")
    reminder = await durable.recv("reminder")
    decision = await durable.recv("decision", timeout=timedelta(days=1))
    return [reminder, decision]


@durable.workflow(name="skip.deadline.v1")
async def too_slow() -> str:
    await durable.sleep(timedelta(days=1))
    return "never"


def _span(pair: list[str]) -> timedelta:
    return datetime.fromisoformat(pair[1]) - datetime.fromisoformat(pair[0])


async def test_a_three_day_sleep_is_crossed_at_once_exactly_on_time(
    durable_runtime: durable.Runtime, durable_clock: TimeSkippingClock
) -> None:
    assert _span(await durable_runtime.run(three_days, workflow_id="w")) == timedelta(days=3)
    steps = await durable_runtime.list_steps("w")
    sleep = next(s for s in steps if s.name == SLEEP_STEP)
    assert sleep.status.value == "succeeded"
    assert durable_clock.skipped == timedelta(days=3)


def test_sync_workflow_sync_test(durable_runtime: durable.Runtime) -> None:
    assert _span(durable_runtime.run_sync(three_days_sync)) == timedelta(days=3)


async def test_a_step_retried_with_a_four_minute_backoff(durable_runtime: durable.Runtime) -> None:
    assert await durable_runtime.run(backoff) == "done"
    assert [b - a for a, b in itertools.pairwise(SEEN)] == [
        timedelta(minutes=4),
        timedelta(minutes=8),
    ]


async def test_a_workflow_retried_with_backoff_through_a_worker(
    durable_client: durable.Client, durable_worker: object
) -> None:
    workflow_id = await durable_client.enqueue(workflow_retry)
    assert await durable_client.result(workflow_id) == "third time"
    assert [b - a for a, b in itertools.pairwise(SEEN)] == [
        timedelta(minutes=1),
        timedelta(minutes=4),
    ]


async def test_a_timer_and_a_recv_timeout(
    durable_runtime: durable.Runtime, durable_clock: TimeSkippingClock
) -> None:
    assert await durable_runtime.run(wait_for_approval) == ["remind", None]
    assert durable_clock.skipped == timedelta(hours=12) + timedelta(days=1)


async def test_a_message_sent_before_the_timeout_is_received(
    durable_runtime: durable.Runtime, durable_clock: TimeSkippingClock
) -> None:
    await durable_runtime.enqueue(wait_for_approval, workflow_id="a")
    await durable_runtime.send("a", "decision", {"ok": True})
    assert await durable_runtime.run(wait_for_approval, workflow_id="a") == [
        "remind",
        {"ok": True},
    ]
    assert durable_clock.skipped == timedelta(hours=12)


async def test_a_deadline_passes_in_virtual_time(
    durable_runtime: durable.Runtime, durable_clock: TimeSkippingClock
) -> None:
    with pytest.raises(WorkflowCancelledError):
        await durable_runtime.run(too_slow, timeout=timedelta(hours=1))
    assert durable_clock.skipped == timedelta(hours=1)


async def test_by_hand_with_auto_skip_off(
    durable_client: durable.Client, durable_worker: object, durable_clock: TimeSkippingClock
) -> None:
    durable_clock.auto_skip = False
    workflow_id = await durable_client.enqueue(three_days)
    for _ in range(2000):  # until it sleeps (a worker picks it up at once)
        steps = await durable_client.list_steps(workflow_id)
        if any(s.name == SLEEP_STEP for s in steps):
            break
        await asyncio.sleep(0.005)
    with pytest.raises(TimeoutError):  # time stands still: it cannot finish
        await durable_client.result(workflow_id, timeout=0.2)
    assert (await durable_client.get_workflow(workflow_id)).status is WorkflowStatus.PENDING
    durable_clock.advance(timedelta(days=2, hours=23))
    with pytest.raises(TimeoutError):
        await durable_client.result(workflow_id, timeout=0.2)
    durable_clock.advance(timedelta(hours=1))
    assert _span(await durable_client.result(workflow_id, timeout=30)) == timedelta(days=3)


def test_the_clock_refuses_bad_arguments(durable_clock: TimeSkippingClock) -> None:
    with pytest.raises(InvalidArgumentError, match="forward"):
        durable_clock.advance(-1)
    with pytest.raises(InvalidArgumentError, match="delta"):
        durable_clock.advance("1 day")  # type: ignore[arg-type]
    for endless in (float("nan"), float("inf"), 1e300, timedelta(days=999_999_999)):
        with pytest.raises(InvalidArgumentError, match="finite duration of at most 100 years"):
            durable_clock.advance(endless)
    with pytest.raises(InvalidArgumentError, match="aware"):
        TimeSkippingClock(datetime(2030, 1, 1))
    with pytest.raises(InvalidArgumentError, match="in-memory"):
        durable_clock.attach(object())  # type: ignore[arg-type]


@durable.workflow(name="skip.backoff_sync.v1")
def backoff_sync() -> str:
    return flaky()  # the backoff waits on the loop, for the workflow's thread


def test_a_sync_step_backoff_in_a_sync_workflow(durable_runtime: durable.Runtime) -> None:
    assert durable_runtime.run_sync(backoff_sync) == "done"
    assert [b - a for a, b in itertools.pairwise(SEEN)] == [
        timedelta(minutes=4),
        timedelta(minutes=8),
    ]
