"""Workers that drain fast claim a few executions ahead (durable.worker.PREFETCH_SHARE), start
them as slots free up, and hand back the ones they never started when they stop."""

from __future__ import annotations

import asyncio

import durable
from durable.models import WorkflowStatus

WAIT = 60.0  # an upper bound, never reached when green
REG = durable.Registry()
GATE: dict[str, asyncio.Event] = {}
WAITING: list[int] = []  # gated executions waiting at the gate


@durable.step(name="tp.touch")
async def touch(i: int) -> int:
    return i


@durable.workflow(name="tp.quick", registry=REG)
async def quick(i: int) -> int:
    return await touch(i)


@durable.workflow(name="tp.gated", registry=REG)
async def gated(i: int) -> int:
    await touch(i)
    WAITING.append(i)
    await GATE["open"].wait()
    return i


def runtime(url: str, executor_id: str) -> durable.Runtime:
    return durable.Runtime(
        durable.connect(url), executor_id=executor_id, registry=REG, recover=False, claim_ttl=30
    )


async def test_a_backlog_drains_with_claims_ahead(backend_url: str) -> None:
    async with runtime(backend_url, "exec-A") as rt:
        ids = [await rt.enqueue(quick, i) for i in range(60)]
        worker = await rt.start_worker(concurrency=8, poll_interval=0.02)
        assert worker._prefetch == 2
        results = [await rt.result(wid, timeout=WAIT) for wid in ids]
        assert results == list(range(60))
        await worker.stop()
        assert worker.completed == 60


async def test_claims_reserved_ahead_are_handed_back_on_stop(backend_url: str) -> None:
    GATE["open"] = asyncio.Event()
    WAITING.clear()
    async with runtime(backend_url, "exec-A") as rt:
        ids = [await rt.enqueue(gated, i) for i in range(20)]
        worker = await rt.start_worker(concurrency=4, poll_interval=0.02)
        deadline = asyncio.get_running_loop().time() + WAIT
        # the slots are full (each execution waits at the gate) and one claim waits in reserve
        while not worker._reserve or len(WAITING) < 4:
            assert asyncio.get_running_loop().time() < deadline, "nothing was claimed ahead"
            await asyncio.sleep(0.01)
        assert worker.running == 4
        await worker.stop(grace=0)
        # nothing is left claimed by exec-A: every execution can be claimed at once
        available = await rt.backend.find_available_tasks("someone-else", 100)
        assert sorted(t.instance_id for t in available) == sorted(ids)
        assert all(t.claimed_by is None for t in available)
        for wid in ids:
            assert (await rt.get_workflow(wid)).status is WorkflowStatus.PENDING
