"""Fan-out: a workflow suspends while its steps run as tasks of other workers, and the last one
wakes it."""

from __future__ import annotations

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
    LONG,
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
