"""Workers with a backlog claim ahead as many executions as their slots free up in
``durable.worker.PREFETCH_WINDOW`` at the pace of their recent executions (none when these run
long), start them as slots free up, and hand back the ones they never started when they stop."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import durable
import durable.worker
from durable.models import WorkflowStatus

WAIT = 60.0  # an upper bound, never reached when green
REG = durable.Registry()
GATE: dict[str, asyncio.Event] = {}
WAITING: list[int] = []  # gated executions waiting at the gate


@durable.step(name="tp.touch")
async def touch(i: int) -> int:
    return i


@durable.step(name="tp.linger")
async def linger(i: int) -> int:
    await asyncio.sleep(0.3)
    return i


@durable.workflow(name="tp.quick", registry=REG)
async def quick(i: int) -> int:
    return await touch(i)


@durable.workflow(name="tp.slow", registry=REG)
async def slow(i: int) -> int:
    return await linger(i)


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


def count_ahead(rt: durable.Runtime) -> list[int]:
    """By how many executions each claim of the runtime's worker asked for more than its free
    slots (0: it asked for its free slots only)."""
    ahead: list[int] = []
    claim_work = rt.claim_work

    async def counted(n: int, **options: Any) -> Any:
        (worker,) = rt._workers
        ahead.append(n - (worker.concurrency - worker.running))
        return await claim_work(n, **options)

    rt.claim_work = counted  # type: ignore[method-assign]
    return ahead


async def drain(backend_url: str, workflow: Any, executions: int, concurrency: int) -> list[int]:
    """Enqueue ``executions`` of ``workflow`` (0, 1, ...), drain them with one worker, and
    return by how many each of its claims asked ahead (see :func:`count_ahead`)."""
    async with runtime(backend_url, "exec-A") as rt:
        ids = [await rt.enqueue(workflow, i) for i in range(executions)]
        ahead = count_ahead(rt)
        worker = await rt.start_worker(concurrency=concurrency, poll_interval=0.02)
        results = [await rt.result(wid, timeout=WAIT) for wid in ids]
        assert results == list(range(executions))
        await worker.stop()
        assert worker.completed == executions
    return ahead


#: ``PREFETCH_WINDOW`` in the tests of quick executions: executions of a few milliseconds took
#: longer than its 0.05 s on a loaded machine, and rightly nothing was claimed ahead there
QUICK_WINDOW = 2.0


async def test_a_backlog_of_quick_executions_drains_with_claims_ahead(
    backend_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(durable.worker, "PREFETCH_WINDOW", QUICK_WINDOW)
    ahead = await drain(backend_url, quick, 60, concurrency=8)
    # the executions end within milliseconds: it claims ahead, up to its concurrency (8)
    # where the old fixed share claimed 2 ahead
    assert 2 < max(ahead) <= 8, ahead


async def test_executions_that_run_long_are_not_claimed_ahead(backend_url: str) -> None:
    ahead = await drain(backend_url, slow, 12, concurrency=4)
    # each takes 0.3 s: 4 slots free up less than once in PREFETCH_WINDOW (0.05 s), so no
    # claim asks for more than the free slots, and the others stay for other workers
    assert ahead and max(ahead) <= 0, ahead


async def test_claims_reserved_ahead_are_handed_back_on_stop(
    backend_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(durable.worker, "PREFETCH_WINDOW", QUICK_WINDOW)
    GATE["open"] = asyncio.Event()
    WAITING.clear()
    async with runtime(backend_url, "exec-A") as rt:
        # quick executions first (they set a fast pace), then gated ones that fill the slots
        quick_ids = [await rt.enqueue(quick, i) for i in range(40)]
        ids = [await rt.enqueue(gated, i) for i in range(20)]
        worker = await rt.start_worker(concurrency=4, poll_interval=0.02)
        deadline = asyncio.get_running_loop().time() + WAIT
        # the slots are full (each execution waits at the gate) and claims wait in reserve
        while not worker._reserve or len(WAITING) < 4:
            assert asyncio.get_running_loop().time() < deadline, "nothing was claimed ahead"
            await asyncio.sleep(0.01)
        assert worker.running == 4
        reserved = {claim.instance_id for claim, _ in worker._reserve}
        assert reserved <= set(ids)
        await worker.stop(grace=0)
        for wid in quick_ids:
            assert (await rt.get_workflow(wid)).status is WorkflowStatus.SUCCEEDED
        # nothing is left claimed by exec-A: every gated execution can be claimed at once
        available = await rt.backend.find_available_tasks("someone-else", 100)
        assert sorted(t.instance_id for t in available) == sorted(ids)
        assert all(t.claimed_by is None for t in available)
        for wid in ids:
            assert (await rt.get_workflow(wid)).status is WorkflowStatus.PENDING
