"""An execution's life under its claim: begin, finish, reschedule, cancel, redrive, and how attempts
and interruptions are counted."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from durable.backends.base import PersistentBackend
from durable.errors import (
    ClaimLostError,
    InvalidArgumentError,
    TaskNotFoundError,
    WorkflowNotFoundError,
)
from durable.models import (
    ErrorInfo,
    StepStatus,
    TaskSpec,
    WorkflowStatus,
)
from durable.testing.contract._support import (
    LONG,
    ContractBase,
    W,
    assert_between,
    create,
    keys_of,
    now,
    running,
    step,
)


class ExecutionContract(ContractBase):
    """An execution's life under its claim: begin, finish, reschedule, cancel, redrive, and how
    attempts and interruptions are counted."""

    async def test_begin_execution(self, backend: PersistentBackend) -> None:
        original = await create(backend, "wf", input={"x": 1}, steps=(step(0),))
        with pytest.raises(ClaimLostError) as lost:
            await backend.begin_execution("wf", "w1")
        assert lost.value.holder is None and lost.value.worker_id == "w1"
        assert await backend.get_workflow("wf") == original

        assert await backend.claim_task("wf", W, "w1", LONG) is not None
        before = now()
        snap = await backend.begin_execution("wf", "w1")
        after = now()
        assert snap.status is WorkflowStatus.RUNNING
        assert snap.executor_id == "w1"
        assert (snap.attempts, snap.interruptions, snap.version) == (1, 0, 2)
        assert_between(snap.started_at, before, after)
        assert snap.input == {"x": 1} and snap.steps == (step(0),)
        assert snap.created_at == original.created_at
        assert await backend.load_snapshot("wf") == snap

        with pytest.raises(ClaimLostError) as lost:
            await backend.begin_execution("wf", "w2")
        assert lost.value.holder == "w1" and lost.value.worker_id == "w2"
        assert await backend.load_snapshot("wf") == snap

        # begun while still running: the attempt was interrupted (its executor died, here the
        # same one restarted); it is resumed, counted in interruptions, not in attempts
        again = await backend.begin_execution("wf", "w1")
        assert (again.attempts, again.interruptions, again.version) == (1, 1, 3)
        assert again.started_at == snap.started_at

        # begin under the claim of another task of the workflow
        assert await backend.add_task(TaskSpec(instance_id="wf", task_id="resume", name="wf"))
        assert await backend.claim_task("wf", "resume", "w3", LONG) is not None
        third = await backend.begin_execution("wf", "w3", task_id="resume")
        assert third.executor_id == "w3"
        assert (third.attempts, third.interruptions) == (1, 2)

    async def test_finish_workflow(self, backend: PersistentBackend) -> None:
        failure = ErrorInfo(type="m.Failure", message="it failed", traceback="tb")
        outcomes: list[tuple[WorkflowStatus, Any, ErrorInfo | None]] = [
            (WorkflowStatus.SUCCEEDED, {"result": [1, 2]}, None),
            (WorkflowStatus.FAILED, None, failure),
            (WorkflowStatus.CANCELLED, None, None),
            (WorkflowStatus.DEAD_LETTER, None, failure),
        ]
        for status, output, error in outcomes:
            instance_id = f"wf-{status.value}"
            started = await running(backend, instance_id, "w1", input="in")
            await backend.record_step(instance_id, step(0), worker_id="w1")
            before = now()
            info = await backend.finish_workflow(
                instance_id, worker_id="w1", status=status, output=output, error=error
            )
            after = now()
            assert info.status is status
            assert info.output == output and info.error == error
            assert info.version == started.version + 1
            assert info.input == "in" and info.started_at == started.started_at
            assert info.attempts == started.attempts and info.executor_id == "w1"
            assert_between(info.completed_at, before, after)
            assert await backend.get_workflow(instance_id) == info
            assert await backend.list_steps(instance_id) == [step(0)]
            # the workflow task is gone
            with pytest.raises(TaskNotFoundError):
                await backend.claim_task(instance_id, W, "w2", LONG)
            with pytest.raises(ClaimLostError):
                await backend.finish_workflow(
                    instance_id, worker_id="w1", status=WorkflowStatus.SUCCEEDED
                )
            assert await backend.get_workflow(instance_id) == info
        assert await backend.find_available_tasks("w2", 10) == []

        stored = await running(backend, "wf", "w1")
        for not_final in (WorkflowStatus.PENDING, WorkflowStatus.RUNNING):
            with pytest.raises(InvalidArgumentError):
                await backend.finish_workflow("wf", worker_id="w1", status=not_final)
        with pytest.raises(ClaimLostError) as lost:
            await backend.finish_workflow("wf", worker_id="w2", status=WorkflowStatus.SUCCEEDED)
        assert lost.value.holder == "w1"
        assert await backend.load_snapshot("wf") == stored
        assert await backend.claim_task("wf", W, "w2", LONG) is None  # still held by w1

    async def test_finish_execution_is_finish_workflow_without_the_header(
        self, backend: PersistentBackend
    ) -> None:
        """A worker records how an attempt ended with :meth:`finish_execution`: the same write,
        fence and errors as :meth:`finish_workflow` (a backend may override it)."""
        failure = ErrorInfo(type="m.Failure", message="it failed", traceback="tb")
        for status, output, error in (
            (WorkflowStatus.SUCCEEDED, {"result": [1, 2]}, None),
            (WorkflowStatus.FAILED, None, failure),
        ):
            instance_id = f"wf-{status.value}"
            started = await running(backend, instance_id, "w1", input="in")
            await backend.record_step(instance_id, step(0), worker_id="w1")
            stored = await backend.load_snapshot(instance_id)
            with pytest.raises(ClaimLostError):  # another worker's finish is refused
                await backend.finish_execution(
                    instance_id, worker_id="w2", status=status, output=output, error=error
                )
            assert await backend.load_snapshot(instance_id) == stored
            before = now()
            await backend.finish_execution(
                instance_id, worker_id="w1", status=status, output=output, error=error
            )
            info = await backend.get_workflow(instance_id)
            assert info.status is status and info.output == output and info.error == error
            assert info.version == started.version + 1 and info.attempts == started.attempts
            assert_between(info.completed_at, before, now())
            with pytest.raises(TaskNotFoundError):  # the workflow task is gone
                await backend.claim_task(instance_id, W, "w2", LONG)
            with pytest.raises(ClaimLostError):  # once finished, never again
                await backend.finish_execution(
                    instance_id, worker_id="w1", status=WorkflowStatus.SUCCEEDED
                )
            assert await backend.get_workflow(instance_id) == info
        assert await backend.find_available_tasks("w2", 10) == []
        await running(backend, "wf", "w1")
        with pytest.raises(InvalidArgumentError):
            await backend.finish_execution("wf", worker_id="w1", status=WorkflowStatus.RUNNING)

    async def test_reschedule_workflow(self, backend: PersistentBackend) -> None:
        started = await running(backend, "wf", "w1", input=[1])
        await backend.record_step("wf", step(0), worker_id="w1")
        error = ErrorInfo(type="m.Transient", message="try again", args=("later",))
        info = await backend.reschedule_workflow(
            "wf", worker_id="w1", run_after=timedelta(hours=1), error=error
        )
        assert info.status is WorkflowStatus.PENDING
        assert info.error == error and info.input == [1]
        assert info.version == started.version + 1
        assert info.attempts == started.attempts
        assert await backend.get_workflow("wf") == info
        assert await backend.list_steps("wf") == [step(0)]
        # the claim is released and the task is not due for an hour
        for worker in ("w1", "w2"):
            assert await backend.find_available_tasks(worker, 10) == []
            assert await backend.claim_available_tasks(worker, 10, LONG) == []
        with pytest.raises(ClaimLostError) as lost:
            await backend.record_step("wf", step(1), worker_id="w1")
        assert lost.value.holder is None
        with pytest.raises(ClaimLostError):
            await backend.reschedule_workflow("wf", worker_id="w1", run_after=timedelta(0))

        # an explicit claim may run it early; the claim counts as a new attempt
        claim = await backend.claim_task("wf", W, "w2", LONG)
        assert claim is not None and claim.attempts == 2
        again = await backend.begin_execution("wf", "w2")
        assert again.attempts == 2 and again.steps == (step(0),)
        info = await backend.reschedule_workflow("wf", worker_id="w2", run_after=timedelta(0))
        assert info.status is WorkflowStatus.PENDING and info.error is None
        available = await backend.find_available_tasks("w3", 10)
        assert keys_of(available) == [("wf", W)]
        assert available[0].claimed_by is None and available[0].attempts == 2

        assert await backend.claim_task("wf", W, "w3", LONG) is not None
        before = await backend.get_workflow("wf")
        with pytest.raises(ClaimLostError) as lost:
            await backend.reschedule_workflow("wf", worker_id="w2", run_after=timedelta(0))
        assert lost.value.holder == "w3"
        assert await backend.get_workflow("wf") == before

    async def test_cancel_workflow(self, backend: PersistentBackend) -> None:
        started = await running(backend, "wf", "w1")
        await backend.record_step("wf", step(0), worker_id="w1")
        assert await backend.add_task(TaskSpec(instance_id="wf", task_id="side", name="side"))
        assert await backend.claim_task("wf", "side", "w2", LONG) is not None
        before = now()
        info = await backend.cancel_workflow("wf")
        after = now()
        assert info.status is WorkflowStatus.CANCELLED
        assert info.version == started.version + 1
        assert_between(info.completed_at, before, after)
        assert await backend.get_workflow("wf") == info
        assert await backend.list_steps("wf") == [step(0)]
        # every task is gone, whoever held it; the holders find out at their next write
        for task_id in (W, "side"):
            with pytest.raises(TaskNotFoundError):
                await backend.claim_task("wf", task_id, "w3", LONG)
        assert await backend.find_available_tasks("w1", 10) == []
        with pytest.raises(ClaimLostError):
            await backend.record_step("wf", step(1), worker_id="w1")
        with pytest.raises(ClaimLostError):
            await backend.finish_workflow("wf", worker_id="w1", status=WorkflowStatus.SUCCEEDED)
        with pytest.raises(ClaimLostError):
            await backend.complete_task("wf", "side", "w2")
        assert await backend.get_workflow("wf") == info
        assert await backend.list_steps("wf") == [step(0)]
        # idempotent
        assert await backend.cancel_workflow("wf") == info

        # a pending workflow nobody claimed
        await create(backend, "pending")
        cancelled = await backend.cancel_workflow("pending")
        assert cancelled.status is WorkflowStatus.CANCELLED and cancelled.version == 2
        assert await backend.find_available_tasks("w1", 10) == []

        # a finished workflow is returned unchanged
        await running(backend, "done", "w1")
        done = await backend.finish_workflow(
            "done", worker_id="w1", status=WorkflowStatus.SUCCEEDED, output=1
        )
        assert await backend.cancel_workflow("done") == done
        assert await backend.get_workflow("done") == done

    async def test_requeue_workflow(self, backend: PersistentBackend) -> None:
        failure = ErrorInfo(type="m.Failure", message="failed", args=(1,))
        for status in (
            WorkflowStatus.FAILED,
            WorkflowStatus.DEAD_LETTER,
            WorkflowStatus.CANCELLED,
        ):
            instance_id = f"wf-{status.value}"
            await running(backend, instance_id, "w1", input={"n": 1}, queue="q", priority=4)
            await backend.record_step(instance_id, step(0), worker_id="w1")
            await backend.record_step(
                instance_id, step(1, status=StepStatus.FAILED, error=failure), worker_id="w1"
            )
            if status is WorkflowStatus.CANCELLED:
                await backend.cancel_workflow(instance_id)
            else:
                await backend.finish_workflow(
                    instance_id, worker_id="w1", status=status, error=failure
                )
            before = await backend.get_workflow(instance_id)
            info = await backend.requeue_workflow(instance_id)
            assert info.status is WorkflowStatus.PENDING
            assert info.error is None and info.attempts == 0
            assert info.version == before.version + 1
            assert info.input == {"n": 1} and info.created_at == before.created_at
            assert await backend.get_workflow(instance_id) == info
            assert await backend.list_steps(instance_id) == [step(0)]
            # its workflow task exists again, unclaimed: the old holder is shut out
            [task] = [
                t
                for t in await backend.find_available_tasks("w2", 10)
                if t.instance_id == instance_id
            ]
            assert (task.task_id, task.name, task.queue, task.priority) == (W, "wf", "q", 4)
            assert task.claimed_by is None
            with pytest.raises(ClaimLostError):
                await backend.record_step(instance_id, step(1), worker_id="w1")
            assert await backend.claim_task(instance_id, W, "w2", LONG) is not None
            again = await backend.begin_execution(instance_id, "w2")
            assert again.attempts == 1 and again.steps == (step(0),)

        await create(backend, "pending")
        await running(backend, "running", "w1")
        await running(backend, "done", "w1")
        await backend.finish_workflow("done", worker_id="w1", status=WorkflowStatus.SUCCEEDED)
        for instance_id in ("pending", "running", "done"):
            before = await backend.get_workflow(instance_id)
            with pytest.raises(InvalidArgumentError):
                await backend.requeue_workflow(instance_id)
            assert await backend.get_workflow(instance_id) == before
        with pytest.raises(WorkflowNotFoundError):
            await backend.requeue_workflow("ghost")

    async def test_interruptions_are_counted_apart_and_cleared_by_a_redrive(
        self, backend: PersistentBackend
    ) -> None:
        await running(backend, "wf", "w1", max_attempts=3)
        for n, worker in enumerate(("w2", "w3"), start=1):
            # the holder dies (its claim expires); another worker takes the attempt over
            await backend.release_task_claim("wf", W, ["w1", "w2"][n - 1])
            assert await backend.claim_task("wf", W, worker, LONG) is not None
            resumed = await backend.begin_execution("wf", worker)
            assert (resumed.attempts, resumed.interruptions) == (1, n)
        # a failed attempt counts in attempts, not in interruptions
        await backend.reschedule_workflow("wf", worker_id="w3", run_after=timedelta(0))
        assert await backend.claim_task("wf", W, "w1", LONG) is not None
        retried = await backend.begin_execution("wf", "w1")
        assert (retried.attempts, retried.interruptions) == (2, 2)
        # an attempt handed back and resumed is not counted at all
        await backend.reschedule_workflow(
            "wf", worker_id="w1", run_after=timedelta(0), consume_attempt=False
        )
        assert await backend.claim_task("wf", W, "w1", LONG) is not None
        resumed = await backend.begin_execution("wf", "w1")
        assert (resumed.attempts, resumed.interruptions) == (2, 2)
        await backend.finish_workflow("wf", worker_id="w1", status=WorkflowStatus.DEAD_LETTER)
        info = await backend.requeue_workflow("wf")
        assert (info.attempts, info.interruptions) == (0, 0)
        assert await backend.get_workflow("wf") == info
