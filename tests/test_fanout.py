"""durable.map: steps handed to any worker, the parent waiting without holding a slot."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest

import durable
from durable.models import StepStatus, WorkflowStatus

runs: Counter[int] = Counter()
who: dict[int, str] = {}


class Odd(Exception):
    pass


@pytest.fixture(autouse=True)
def _reset() -> None:
    runs.clear()
    who.clear()


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


@durable.step
async def total(values: list[int]) -> int:
    return sum(values)


@durable.workflow(name="tests.fanout.sum_of_squares.v1")
async def sum_of_squares(n: int) -> int:
    return await total(await durable.map(square, range(n)))


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
    async with (
        durable.Runtime(durable.connect(sqlite_url), recover=False, executor_id="a") as a,
        durable.Runtime(durable.connect(sqlite_url), recover=False, executor_id="b") as b,
    ):
        await a.start_worker(concurrency=4, poll_interval=0.05)
        await b.start_worker(concurrency=4, poll_interval=0.05)
        wid = await a.enqueue(sum_of_squares, 40)
        assert await b.result(wid, timeout=30) == sum(i * i for i in range(40))
        executors = {s.executor_id for s in await a.list_steps(wid)}
        assert executors <= {"a", "b"}
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


async def test_map_outside_a_workflow_is_a_plain_loop() -> None:
    assert await durable.map(square, [1, 2, 3]) == [1, 4, 9]
