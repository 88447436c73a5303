"""Running a cancelled execution again (``Client.resume`` / ``retry``), end to end with a
worker, on every backend: a parent whose cancel also cancelled the child it awaited goes on with
that child, and an execution its deadline cancelled runs without that deadline. Both used to be
cancelled again, or fail on the child, however often they were run again."""

from __future__ import annotations

import asyncio
import contextlib
import time

import durable
from durable.errors import WorkflowNotFoundError
from durable.models import StepStatus, WorkflowStatus

TIMEOUT = 30


@durable.workflow(name="tests.run_again.child.v1")
async def child() -> str:
    return f"child got {await durable.recv('go')}"


@durable.workflow(name="tests.run_again.parent.v1")
async def parent() -> str:
    return f"parent: {await child()}"


@durable.workflow(name="tests.run_again.waits.v1")
async def waits() -> str:
    return f"got {await durable.recv('go')}"


async def status_of(rt: durable.Runtime, wid: str, wanted: WorkflowStatus) -> None:
    """Return once the execution is ``wanted`` (AssertionError after TIMEOUT)."""
    deadline = time.monotonic() + TIMEOUT
    while (status := (await rt.get_workflow(wid)).status) is not wanted:
        assert time.monotonic() < deadline, f"{wid} is {status}, not {wanted}"
        await asyncio.sleep(0.05)


async def waiting(rt: durable.Runtime, wid: str) -> None:
    """Return once the execution waits for a message: pending, its last step pending."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        with contextlib.suppress(WorkflowNotFoundError):
            steps = await rt.list_steps(wid)
            status = (await rt.get_workflow(wid)).status
            if (
                status is WorkflowStatus.PENDING
                and steps
                and steps[-1].status is StepStatus.PENDING
            ):
                return
        assert time.monotonic() < deadline, f"{wid} does not wait"
        await asyncio.sleep(0.05)


async def test_a_parent_run_again_goes_on_with_the_child_its_cancel_cancelled(
    backend_url: str,
) -> None:
    async with durable.Runtime(durable.connect(backend_url), poll_interval=0.05) as rt:
        await rt.start_worker()
        wid = await rt.enqueue(parent, max_attempts=1)
        kid = f"{wid}/0"
        await waiting(rt, kid)
        await rt.cancel(wid)
        assert (await rt.get_workflow(kid)).status is WorkflowStatus.CANCELLED
        await rt.resume(wid)
        await rt.send(kid, "go", "it")
        assert await rt.result(wid, timeout=TIMEOUT) == "parent: child got it"
        assert (await rt.get_workflow(kid)).status is WorkflowStatus.SUCCEEDED


async def test_an_execution_its_deadline_cancelled_runs_again_without_it(
    backend_url: str,
) -> None:
    async with durable.Runtime(durable.connect(backend_url), poll_interval=0.05) as rt:
        rt.deadline_sweep_interval = 0.1
        await rt.start_worker()
        wid = await rt.enqueue(waits, timeout=0.5)
        await status_of(rt, wid, WorkflowStatus.CANCELLED)
        again = await rt.retry(wid)
        assert again.status is WorkflowStatus.PENDING and again.deadline is None
        await waiting(rt, wid)
        await asyncio.sleep(0.5)  # several sweeps: none cancels it
        await waiting(rt, wid)
        await rt.send(wid, "go", "late")
        assert await rt.result(wid, timeout=TIMEOUT) == "got late"
