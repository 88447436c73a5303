"""durable.map: steps handed to any worker, the parent waiting without holding a slot."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from typing import Any

import pytest

import durable
from durable.models import StepStatus, WorkflowStatus

WAIT = 60.0  # a safety net for anything a test waits for, never reached when green

runs: Counter[int] = Counter()


class Odd(Exception):
    pass


class Gate:
    """Per-test events (bound to the test's event loop)."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()  # a gated item started
        self.release = asyncio.Event()  # gated items may return
        self.running = 0  # meet(): items started and not yet released
        self.quorum = 0  # meet(): how many must be running at once before any returns


GATE = Gate()


@pytest.fixture(autouse=True)
def _reset() -> None:
    global GATE
    runs.clear()
    GATE = Gate()


@durable.step(name="tests.fanout.square")
async def square(x: int) -> int:
    runs[x] += 1
    await asyncio.sleep(0.01)
    return x * x


@durable.step(name="tests.fanout.even_only")
async def even_only(x: int) -> int:
    runs[x] += 1
    if x % 2:
        raise Odd(f"{x} is odd")
    return x


@durable.step(name="tests.fanout.gated")
async def gated(x: int) -> int:
    runs[x] += 1
    GATE.entered.set()
    await GATE.release.wait()
    return x * x


@durable.step(name="tests.fanout.meet")
async def meet(x: int) -> int:
    """Return only once ``GATE.quorum`` items have been running at the same time."""
    runs[x] += 1
    GATE.running += 1
    if GATE.running >= GATE.quorum:
        GATE.release.set()
    await asyncio.wait_for(GATE.release.wait(), WAIT)  # fails the item rather than hang
    return x * x


@durable.step
async def total(values: list[int]) -> int:
    return sum(values)


@durable.workflow(name="tests.fanout.sum_of_squares.v1")
async def sum_of_squares(n: int) -> int:
    return await total(await durable.map(square, range(n)))


@durable.workflow(name="tests.fanout.gated_squares.v1")
async def gated_squares(n: int) -> list[int]:
    return await durable.map(gated, range(n))


@durable.workflow(name="tests.fanout.meet.v1")
async def sum_of_met_squares(n: int) -> int:
    return await total(await durable.map(meet, range(n)))


@durable.workflow(name="tests.fanout.evens.v1")
async def evens(n: int) -> str:
    try:
        await durable.map(even_only, range(n))
    except Odd as exc:
        return f"caught: {exc}"
    return "all even"


async def test_one_worker_slot_is_enough_because_the_parent_waits_without_it(
    backend_url: str,
) -> None:
    async with durable.Runtime(durable.connect(backend_url), recover=False) as rt:
        await rt.start_worker(concurrency=1, poll_interval=0.1)
        wid = await rt.enqueue(sum_of_squares, 12)
        assert await rt.result(wid, timeout=30) == sum(i * i for i in range(12))
        assert runs == Counter(range(12))  # each item ran exactly once
        steps = await rt.list_steps(wid)
        assert [s.input for s in steps[:12]] == [{"args": [i], "kwargs": {}} for i in range(12)]
        assert all(s.status is StepStatus.SUCCEEDED for s in steps)
        assert (await rt.get_workflow(wid)).status is WorkflowStatus.SUCCEEDED


async def test_items_are_shared_between_workers(sqlite_url: str) -> None:
    # the first items return only once 5 run at the same time: more than one worker's 4 slots,
    # so both workers must hold some (deterministically, whoever claims first)
    GATE.quorum = 5
    async with (
        durable.Runtime(durable.connect(sqlite_url), recover=False, executor_id="a") as a,
        durable.Runtime(durable.connect(sqlite_url), recover=False, executor_id="b") as b,
    ):
        await a.start_worker(concurrency=4, poll_interval=0.05)
        await b.start_worker(concurrency=4, poll_interval=0.05)
        wid = await a.enqueue(sum_of_met_squares, 40)
        assert await b.result(wid, timeout=WAIT) == sum(i * i for i in range(40))
        items = [s for s in await a.list_steps(wid) if s.name == meet.name]
        assert len(items) == 40
        assert {s.executor_id for s in items} == {"a", "b"}
        assert runs == Counter(range(40))


async def test_a_failed_item_raises_in_the_parent_after_all_ran(backend_url: str) -> None:
    async with durable.Runtime(durable.connect(backend_url), recover=False) as rt:
        await rt.start_worker(concurrency=3, poll_interval=0.1)
        wid = await rt.enqueue(evens, 4)
        assert await rt.result(wid, timeout=30) == "caught: 1 is odd"
        steps = await rt.list_steps(wid)
        assert [s.status for s in steps] == [
            StepStatus.SUCCEEDED,
            StepStatus.FAILED,
            StepStatus.SUCCEEDED,
            StepStatus.FAILED,
        ]
        assert runs == Counter(range(4))


@pytest.mark.parametrize("acknowledged", [True, False])
async def test_an_items_outcome_is_kept_through_an_outage(
    backend_url: str, monkeypatch: pytest.MonkeyPatch, acknowledged: bool
) -> None:
    """Recording an item's outcome cannot reach the database for a while (three tries; or one
    try whose commit went through and whose answer was lost): it is tried again until it is
    recorded, and the item does not run again once its lease (60 s here) expires."""
    backend = durable.connect(backend_url)
    complete = backend.complete_step_task
    tries: Counter[str] = Counter()

    async def flaky(instance_id: str, task_id: str, **kw: Any) -> None:
        tries[task_id] += 1
        if task_id.endswith(":2") and tries[task_id] <= (3 if acknowledged else 1):
            if not acknowledged:
                await complete(instance_id, task_id, **kw)
            raise durable.BackendUnavailableError("the database went away")
        await complete(instance_id, task_id, **kw)

    monkeypatch.setattr(backend, "complete_step_task", flaky)
    async with durable.Runtime(backend, recover=False, claim_ttl=60.0) as rt:
        await rt.start_worker(concurrency=2, poll_interval=0.05)
        wid = await rt.enqueue(sum_of_squares, 4)
        assert await rt.result(wid, timeout=20) == 0 + 1 + 4 + 9
    assert runs == Counter(range(4))  # each item ran once
    failing = [t for t in tries if t.endswith(":2")]
    assert len(failing) == 1 and tries[failing[0]] == (4 if acknowledged else 2)


async def test_an_item_reads_its_own_step_not_the_whole_history(backend_url: str) -> None:
    """Each item reads its step alone (``get_step``): reading every step (``list_steps``) made
    an item of a map over n items cost O(n), and the whole map O(n^2) (2,000 items on SQLite:
    72 s instead of 1.5 s)."""
    backend = durable.connect(backend_url)
    list_steps, get_step = backend.list_steps, backend.get_step
    calls: Counter[str] = Counter()

    async def counted_list(instance_id: str) -> list[durable.StepRecord]:
        calls["list_steps"] += 1
        return await list_steps(instance_id)

    async def counted_get(instance_id: str, position: int) -> durable.StepRecord | None:
        calls["get_step"] += 1
        return await get_step(instance_id, position)

    backend.list_steps = counted_list  # type: ignore[method-assign]
    backend.get_step = counted_get  # type: ignore[method-assign]
    async with durable.Runtime(backend, recover=False) as rt:
        await rt.start_worker(concurrency=4, poll_interval=0.05)
        wid = await rt.enqueue(sum_of_squares, 30)
        assert await rt.result(wid, timeout=WAIT) == sum(i * i for i in range(30))
    assert calls == {"get_step": 30}
    assert runs == Counter(range(30))


async def test_map_outside_a_workflow_is_a_plain_loop() -> None:
    assert await durable.map(square, [1, 2, 3]) == [1, 4, 9]


# -- a runtime with its own registry; a fan-out nobody serves -------------------------------

OWN = durable.Registry()


@durable.workflow(name="tests.fanout.own_registry.v1", registry=OWN)
async def squares_in_own_registry(n: int) -> list[int]:
    return await durable.map(square, range(n))


async def test_a_runtime_with_its_own_registry_serves_the_steps_it_fans_out(
    backend_url: str,
) -> None:
    async with durable.Runtime(durable.connect(backend_url), recover=False, registry=OWN) as rt:
        await rt.start_worker(concurrency=2, poll_interval=0.05)
        wid = await rt.enqueue(squares_in_own_registry, 5)
        assert await rt.result(wid, timeout=WAIT) == [0, 1, 4, 9, 16]
        assert runs == Counter(range(5))


def unclaimed_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "action", None) == "map.unclaimed"]


async def watchers_done() -> None:
    """Wait until a fan-out was handed out, then until its watcher has run."""
    deadline = time.monotonic() + WAIT
    while not (
        watchers := [
            t for t in asyncio.all_tasks() if t.get_name().startswith("durable-fanout-watch:")
        ]
    ):
        if time.monotonic() > deadline:
            pytest.fail("no fan-out was handed out")
        await asyncio.sleep(0.01)
    await asyncio.wait_for(asyncio.gather(*watchers), WAIT)


async def test_a_fan_out_no_worker_claims_logs_a_warning(
    backend_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="durable.step")
    async with durable.Runtime(durable.connect(backend_url), recover=False) as rt:
        rt.fanout_warning_after = 0.1
        run = asyncio.create_task(rt.run(sum_of_squares, 3, workflow_id="starved"))  # no worker
        await watchers_done()
        run.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await run
    [warning] = unclaimed_warnings(caplog)
    assert warning.workflow_id == "starved"  # type: ignore[attr-defined]
    assert "3 call(s) of step 'tests.fanout.square'" in warning.getMessage()
    assert "queue 'default'" in warning.getMessage()


async def test_a_fan_out_a_worker_took_up_logs_no_warning(
    backend_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="durable.step")
    async with durable.Runtime(durable.connect(backend_url), recover=False) as rt:
        rt.fanout_warning_after = 0.1
        await rt.start_worker(concurrency=1, poll_interval=0.05)
        wid = await rt.enqueue(gated_squares, 3)
        await asyncio.wait_for(GATE.entered.wait(), WAIT)  # the first item was claimed
        await watchers_done()  # the check ran while the item was still running
        GATE.release.set()
        assert await rt.result(wid, timeout=WAIT) == [0, 1, 4]
    assert unclaimed_warnings(caplog) == []
