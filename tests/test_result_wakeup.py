"""``result()`` of an execution that a worker of the same runtime runs returns as soon as it
finishes (the runtime wakes its client's waits), not at the client's next look: before, a web
app that enqueued and awaited its own worker's result waited up to ``poll_interval`` (0.5 s)
for a job of a few milliseconds. Here the looks are 30 s apart, so only the wake-up can make
the deadlines."""

from __future__ import annotations

import asyncio
import time

import pytest

import durable

LOOKS_APART = 30.0


@durable.step
async def double(n: int) -> int:
    return 2 * n


@durable.workflow
async def doubled(n: int) -> int:
    return await double(n)


@durable.workflow
async def broken(n: int) -> int:
    raise ValueError(f"bad {n}")


@durable.workflow
async def waits_for_a_message() -> object:
    return await durable.recv("go")


async def test_result_wakes_when_this_runtimes_worker_finishes(backend_url: str) -> None:
    async with durable.Runtime(durable.connect(backend_url), poll_interval=LOOKS_APART) as rt:
        await rt.start_worker()
        started = time.monotonic()
        for n in range(5):
            wid = await rt.enqueue(doubled, n)
            assert await rt.result(wid, timeout=5) == 2 * n
        failing = await rt.enqueue(broken, 7, max_attempts=1)
        with pytest.raises(durable.WorkflowDeadLetteredError, match="bad 7"):
            await rt.result(failing, timeout=5)
        assert time.monotonic() - started < LOOKS_APART


@durable.workflow
async def parent_of_waiters(count: int) -> list[object]:
    return list(await asyncio.gather(*(waits_for_a_message() for _ in range(count))))


async def test_a_driven_child_resumes_when_its_message_comes(backend_url: str) -> None:
    """A child run by its parent (a drive of the runtime, as runtime.run is) waiting on recv
    resumed at the drive's next look, poll_interval later, although the send made it due and
    the worker claimed it at once: the claim now wakes the drive."""
    async with durable.Runtime(durable.connect(backend_url), poll_interval=LOOKS_APART) as rt:
        await rt.start_worker()
        started = time.monotonic()
        wid = await rt.enqueue(parent_of_waiters, 2)
        for child in (f"{wid}/0", f"{wid}/1"):
            for _ in range(200):  # until the child waits for its message
                steps = await rt.list_steps(child) if await _exists(rt, child) else []
                if steps:
                    break
                await asyncio.sleep(0.05)
            await rt.send(child, "go", child)
        assert await rt.result(wid, timeout=20) == [f"{wid}/0", f"{wid}/1"]
        assert time.monotonic() - started < LOOKS_APART


async def _exists(rt: durable.Runtime, workflow_id: str) -> bool:
    try:
        await rt.get_workflow(workflow_id)
    except durable.WorkflowNotFoundError:
        return False
    return True


async def test_result_wakes_when_this_client_cancels(backend_url: str) -> None:
    async with durable.Runtime(durable.connect(backend_url), poll_interval=LOOKS_APART) as rt:
        await rt.start_worker()
        wid = await rt.enqueue(waits_for_a_message)
        waiting = asyncio.create_task(rt.result(wid, timeout=5))
        await asyncio.sleep(0.3)
        await rt.cancel(wid)
        with pytest.raises(durable.WorkflowCancelledError):
            await waiting


async def test_another_clients_result_looks_again_soon_then_less_often(
    backend_url: str,
) -> None:
    """A client that runs nothing (a producer, as in another process) is not woken by the
    finish: it looks 10 ms after its first look, then at pauses that double up to its
    ``poll_interval``. A job of a few milliseconds is seen done long before the 30 s between
    looks that ``poll_interval`` alone would give."""
    backend = durable.connect(backend_url)
    async with durable.Runtime(backend, poll_interval=0.05) as rt:
        await rt.start_worker(poll_interval=0.05)
        producer = durable.Client(
            backend if backend_url == "memory://" else backend_url, poll_interval=LOOKS_APART
        )
        async with producer:
            looks = 0
            get_workflow = producer.backend.get_workflow

            async def counted(workflow_id: str) -> durable.WorkflowInfo:
                nonlocal looks
                looks += 1
                return await get_workflow(workflow_id)

            producer.backend.get_workflow = counted  # type: ignore[method-assign]
            started = time.monotonic()
            for n in range(3):
                wid = await producer.enqueue(doubled, n)
                assert await producer.result(wid, timeout=LOOKS_APART / 2) == 2 * n
            assert time.monotonic() - started < LOOKS_APART / 2
            # a job that never finishes: its looks thin out (10 ms, 20, 40, ... apart)
            waiting = await producer.enqueue(waits_for_a_message)
            looks = 0
            with pytest.raises(TimeoutError):
                await producer.result(waiting, timeout=1.0)
            assert 3 <= looks <= 8, looks  # 1 + 10/20/40/80/160/320 ms pauses: 7 in 1 s


def test_a_client_waits_again_on_another_event_loop(tmp_path: object) -> None:
    """The wake-up belongs to the loop that waited: a client used in one ``asyncio.run``,
    then in another, waits there too (an event of the first loop would refuse the second)."""
    client = durable.Client(durable.connect(f"sqlite:///{tmp_path}/loops.db"), poll_interval=0.05)

    async def wait_for_nothing() -> None:
        async with client:
            wid = await client.enqueue(doubled, 1)  # no worker: it never finishes
            with pytest.raises(TimeoutError):
                await client.result(wid, timeout=0.2)

    asyncio.run(wait_for_nothing())
    asyncio.run(wait_for_nothing())
