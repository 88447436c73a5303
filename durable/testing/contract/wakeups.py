"""Wake-ups: writes that make work available wake a coroutine waiting for it."""

from __future__ import annotations

import asyncio

import pytest

from durable.backends.base import PersistentBackend
from durable.models import (
    TaskSpec,
    WorkflowSnapshot,
)
from durable.testing.contract._support import (
    LONG,
    Call,
    ContractBase,
    W,
    create,
)


class WakeUpContract(ContractBase):
    """Wake-ups: writes that make work available wake a coroutine waiting for it."""

    async def test_wait_for_work(self, backend: PersistentBackend) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        await backend.wait_for_work(0.1)  # nothing to do: returns by the timeout
        assert loop.time() - started < 10

        await create(backend, "wf", task=False)
        wakers: list[tuple[str, Call]] = [
            ("add_task", lambda: backend.add_task(TaskSpec(instance_id="wf", name="wf"))),
            ("release_task_claim", lambda: backend.release_task_claim("wf", W, "w1")),
            (
                "create_workflow",
                lambda: backend.create_workflow(
                    WorkflowSnapshot(id="wf-2", name="wf"),
                    task=TaskSpec(instance_id="wf-2", name="wf"),
                ),
            ),
        ]
        for what, wake in wakers:
            if what == "release_task_claim":
                assert await backend.claim_task("wf", W, "w1", LONG) is not None
            waiter = asyncio.create_task(backend.wait_for_work(60))
            await asyncio.sleep(0.05)  # let it start waiting
            await wake()
            try:
                await asyncio.wait_for(waiter, 10)
            except TimeoutError:
                pytest.fail(f"{what} did not wake a coroutine waiting for work")
