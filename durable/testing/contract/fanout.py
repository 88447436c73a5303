"""Fan-out: a workflow suspends while its steps run as tasks of other workers, and the last one
wakes it."""

from __future__ import annotations

import asyncio

import pytest

from durable.backends.base import PersistentBackend
from durable.errors import (
    ClaimLostError,
    StepAlreadyRecordedError,
    TaskNotFoundError,
)
from durable.models import (
    StepStatus,
    TaskSpec,
    WorkflowStatus,
)
from durable.testing.contract._support import (
    EXPIRED,
    LONG,
    SHORT,
    ContractBase,
    W,
    keys_of,
    running,
    step,
)


class FanOutContract(ContractBase):
    """Fan-out: a workflow suspends while its steps run as tasks of other workers, and the last one
    wakes it."""

    async def test_suspend_and_complete_step_tasks(self, backend: PersistentBackend) -> None:
        started = await running(backend, "wf", "w1")
        await backend.record_step("wf", step(0, output="zero"), worker_id="w1")
        waiting = [
            step(0, status=StepStatus.PENDING, name="ignored"),  # final rows are left alone
            step(1, name="fan", status=StepStatus.PENDING, input={"i": 1}),
            step(2, name="fan", status=StepStatus.PENDING, input={"i": 2}),
        ]
        specs = [
            TaskSpec(instance_id="wf", task_id="step-1", name="fan", queue="q"),
            TaskSpec(instance_id="wf", task_id="step-2", name="fan", queue="q"),
        ]
        with pytest.raises(ClaimLostError) as lost:
            await backend.suspend_workflow("wf", worker_id="w2", steps=waiting, tasks=specs)
        assert lost.value.holder == "w1"
        assert await backend.list_steps("wf") == [step(0, output="zero")]
        assert await backend.find_available_tasks("w2", 10) == []

        await backend.suspend_workflow("wf", worker_id="w1", steps=waiting, tasks=specs)
        info = await backend.get_workflow("wf")
        assert info.status is WorkflowStatus.PENDING and info.version > started.version
        assert await backend.list_steps("wf") == [step(0, output="zero"), *waiting[1:]]
        # the workflow waits, unclaimed and not due, for its step tasks
        assert keys_of(await backend.find_available_tasks("w2", 10)) == [
            ("wf", "step-1"),
            ("wf", "step-2"),
        ]
        assert await backend.claim_task("wf", W, "w2", LONG, due_only=True) is None
        with pytest.raises(ClaimLostError):
            await backend.record_step("wf", step(3), worker_id="w1")

        with pytest.raises(ClaimLostError):
            await backend.complete_step_task(
                "wf", "step-1", worker_id="w2", step=step(1, name="fan", output="one")
            )
        assert await backend.claim_task("wf", "step-1", "w2", LONG) is not None
        with pytest.raises(StepAlreadyRecordedError):
            await backend.complete_step_task(
                "wf", "step-1", worker_id="w2", step=step(0, output="overwritten")
            )
        done_1 = step(1, name="fan", input={"i": 1}, output="one")
        await backend.complete_step_task("wf", "step-1", worker_id="w2", step=done_1)
        with pytest.raises(TaskNotFoundError):
            await backend.claim_task("wf", "step-1", "w2", LONG)
        assert keys_of(await backend.find_available_tasks("w3", 10)) == [("wf", "step-2")]

        assert await backend.claim_task("wf", "step-2", "w3", LONG) is not None
        done_2 = step(2, name="fan", input={"i": 2}, output="two")
        await backend.complete_step_task("wf", "step-2", worker_id="w3", step=done_2)
        # the last one wakes the workflow
        assert keys_of(await backend.find_available_tasks("w4", 10)) == [("wf", W)]
        claim = await backend.claim_task("wf", W, "w4", LONG, due_only=True)
        assert claim is not None
        resumed = await backend.begin_execution("wf", "w4")
        assert resumed.steps == (step(0, output="zero"), done_1, done_2)
        # the suspended attempt goes on: neither another attempt nor an interruption
        assert (resumed.attempts, resumed.interruptions) == (started.attempts, 0)

        # suspending with no step task left: due at once
        await running(backend, "solo", "w1")
        await backend.suspend_workflow("solo", worker_id="w1", steps=[], tasks=[])
        assert ("solo", W) in keys_of(await backend.find_available_tasks("w5", 10))

    async def test_an_expired_claim_fences_suspend_and_complete_step_task(
        self, backend: PersistentBackend
    ) -> None:
        """A claim that expired is not held, though nobody claimed the task since: its holder's
        ``suspend_workflow`` (claim on the workflow task) and ``complete_step_task`` (claim on
        the step task) raise ``ClaimLostError`` with ``holder`` None and write nothing. Renewed
        (``extend_task_claim``), the same calls go through."""
        await running(backend, "wf", "w1")
        await running(backend, "fan", "w0")
        pending = step(0, name="fan", status=StepStatus.PENDING, input=0)
        spec = TaskSpec(instance_id="fan", task_id="step-0", name="fan")
        await backend.suspend_workflow("fan", worker_id="w0", steps=[pending], tasks=[spec])
        assert await backend.claim_task("fan", "step-0", "w1", LONG) is not None
        # (long leases while the setup runs, shortened at its end)
        await backend.extend_task_claim("wf", W, "w1", SHORT)
        await backend.extend_task_claim("fan", "step-0", "w1", SHORT)
        await asyncio.sleep(EXPIRED)

        wf_spec = TaskSpec(instance_id="wf", task_id="step-0", name="fan")
        done = step(0, name="fan", input=0, output="done")
        with pytest.raises(ClaimLostError) as lost:
            await backend.suspend_workflow("wf", worker_id="w1", steps=[pending], tasks=[wf_spec])
        assert (lost.value.worker_id, lost.value.holder) == ("w1", None)
        assert (await backend.get_workflow("wf")).status is WorkflowStatus.RUNNING
        assert await backend.list_steps("wf") == []
        with pytest.raises(TaskNotFoundError):
            await backend.get_task("wf", "step-0")
        with pytest.raises(ClaimLostError) as lost:
            await backend.complete_step_task("fan", "step-0", worker_id="w1", step=done)
        assert (lost.value.worker_id, lost.value.holder) == ("w1", None)
        assert await backend.list_steps("fan") == [pending]
        assert (await backend.get_task("fan", "step-0")).claimed_by == "w1"  # still there

        await backend.extend_task_claim("wf", W, "w1", LONG)
        await backend.suspend_workflow("wf", worker_id="w1", steps=[pending], tasks=[wf_spec])
        assert (await backend.get_workflow("wf")).status is WorkflowStatus.PENDING
        await backend.extend_task_claim("fan", "step-0", "w1", LONG)
        await backend.complete_step_task("fan", "step-0", worker_id="w1", step=done)
        assert await backend.list_steps("fan") == [done]
