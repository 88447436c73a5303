"""Deadlines, cancellation of a workflow and its descendants, continue-as-new, and what a
workflow waits for: a workflow's ``deadline`` stored and read back,
:meth:`~PersistentBackend.cancel_expired_workflows`, :meth:`~PersistentBackend.cancel_workflow`
cascading down ``parent_id``, :meth:`~PersistentBackend.continue_as_new` under the workflow's
claim, and :meth:`~PersistentBackend.list_waiting`."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta

import pytest

from durable.backends.base import PersistentBackend
from durable.errors import (
    ClaimLostError,
    InvalidArgumentError,
    SerializationError,
    TaskNotFoundError,
)
from durable.models import ErrorInfo, StepStatus, TaskSpec, WorkflowSnapshot, WorkflowStatus
from durable.testing.contract._support import (
    IST,
    LONG,
    SHORT,
    T0,
    ContractBase,
    Unserializable,
    W,
    create,
    running,
    step,
)

#: The error type a workflow cancelled by its deadline records.
DEADLINE_ERROR = "durable.errors.DeadlineExceededError"


class DeadlineContract(ContractBase):
    """Deadlines, cancellation down the tree of children, continue-as-new."""

    # -- the deadline as a field ----------------------------------------------------------------

    async def test_deadline_round_trips(self, backend: PersistentBackend) -> None:
        when = datetime(2030, 5, 6, 7, 8, 9, 123000, tzinfo=IST)
        info = await create(backend, "wf", deadline=when)
        assert info.deadline == when and info.deadline.utcoffset() is not None
        assert info.continuations == 0
        assert (await backend.get_workflow("wf")).deadline == when
        assert (await backend.load_snapshot("wf")).deadline == when
        listed = await backend.list_snapshots()
        assert [w.deadline for w in listed] == [when]
        assert (await create(backend, "none")).deadline is None

    async def test_naive_deadline_is_refused(self, backend: PersistentBackend) -> None:
        snapshot = WorkflowSnapshot(id="wf", name="wf", deadline=datetime(2030, 1, 1))
        with pytest.raises(InvalidArgumentError, match="naive"):
            await backend.create_workflow(snapshot)
        assert (await backend.list_snapshots()).items == []

    # -- cancel_expired_workflows ---------------------------------------------------------------

    async def test_cancel_expired_workflows(self, backend: PersistentBackend) -> None:
        clock = await backend.now()
        past, future = clock - timedelta(seconds=5), clock + timedelta(hours=1)
        await create(backend, "queued", deadline=past)
        await running(backend, "held", "w1", deadline=past - timedelta(seconds=1))
        await create(backend, "later", deadline=future)
        await create(backend, "never")
        await running(backend, "done", "w1", deadline=past)
        done = await backend.finish_workflow(
            "done", worker_id="w1", status=WorkflowStatus.SUCCEEDED, output=1
        )
        cancelled = await backend.cancel_expired_workflows()
        # oldest deadline first; finished, later and deadline-less ones untouched
        assert [w.id for w in cancelled] == ["held", "queued"]
        for info in cancelled:
            assert info.status is WorkflowStatus.CANCELLED
            assert info.completed_at is not None
            assert info.error is not None and info.error.type == DEADLINE_ERROR
            assert repr(info.id) in info.error.message
            assert await backend.get_workflow(info.id) == info
            with pytest.raises(TaskNotFoundError):
                await backend.claim_task(info.id, W, "w9", LONG)
        # the holder of a cancelled execution finds out at its next write
        with pytest.raises(ClaimLostError):
            await backend.record_step("held", step(0), worker_id="w1")
        assert (await backend.get_workflow("later")).status is WorkflowStatus.PENDING
        assert (await backend.get_workflow("never")).status is WorkflowStatus.PENDING
        assert await backend.get_workflow("done") == done
        # each is cancelled once
        assert await backend.cancel_expired_workflows() == []

    async def test_cancel_expired_workflows_limit(self, backend: PersistentBackend) -> None:
        past = await backend.now() - timedelta(seconds=5)
        for i in range(5):
            await create(backend, f"wf-{i}", deadline=past + timedelta(milliseconds=i))
        first = await backend.cancel_expired_workflows(limit=2)
        assert [w.id for w in first] == ["wf-0", "wf-1"]
        rest = await backend.cancel_expired_workflows(limit=10)
        assert [w.id for w in rest] == ["wf-2", "wf-3", "wf-4"]
        with pytest.raises(InvalidArgumentError):
            await backend.cancel_expired_workflows(limit=0)

    async def test_cancel_expired_workflows_concurrently(self, backend: PersistentBackend) -> None:
        past = await backend.now() - timedelta(seconds=5)
        ids = [f"wf-{i:02}" for i in range(30)]
        for instance_id in ids:
            await create(backend, instance_id, deadline=past)
        batches = await asyncio.gather(
            *(backend.cancel_expired_workflows(limit=7) for _ in range(8))
        )
        returned = sorted(w.id for batch in batches for w in batch)
        assert returned == ids, "every expired workflow is returned by exactly one caller"

    async def test_cancel_expired_cascades(self, backend: PersistentBackend) -> None:
        past = await backend.now() - timedelta(seconds=5)
        await create(backend, "p", deadline=past)
        await create(backend, "p/0", parent_id="p")
        await create(backend, "p/0/1", parent_id="p/0")
        [info] = await backend.cancel_expired_workflows()
        assert info.id == "p"
        for child in ("p/0", "p/0/1"):
            got = await backend.get_workflow(child)
            assert got.status is WorkflowStatus.CANCELLED
            assert got.error is not None and got.error.type == DEADLINE_ERROR
            with pytest.raises(TaskNotFoundError):
                await backend.get_task(child, W)

    # -- cancel_workflow cascades ---------------------------------------------------------------

    async def test_cancel_cascades_to_descendants(self, backend: PersistentBackend) -> None:
        await running(backend, "p", "w1")
        await running(backend, "p/0", "w2", parent_id="p")
        await create(backend, "p/0/0", parent_id="p/0")
        await create(backend, "p/1", parent_id="p")
        await running(backend, "p/2", "w1", parent_id="p")
        finished = await backend.finish_workflow(
            "p/2", worker_id="w1", status=WorkflowStatus.SUCCEEDED, output=2
        )
        await create(backend, "p/2/0", parent_id="p/2")  # under a finished child
        await create(backend, "other")
        await create(backend, "other/0", parent_id="other")
        reason = ErrorInfo(type="m.Reason", message="stopped by an operator")
        info = await backend.cancel_workflow("p", error=reason)
        assert info.status is WorkflowStatus.CANCELLED and info.error == reason
        for child in ("p/0", "p/0/0", "p/1", "p/2/0"):
            got = await backend.get_workflow(child)
            assert got.status is WorkflowStatus.CANCELLED, child
            assert got.error == reason, child
            assert got.completed_at is not None
        assert await backend.get_workflow("p/2") == finished
        with pytest.raises(ClaimLostError):
            await backend.record_step("p/0", step(0), worker_id="w2")
        for untouched in ("other", "other/0"):
            assert (await backend.get_workflow(untouched)).status is WorkflowStatus.PENDING
        assert sorted(t.instance_id for t in await backend.find_available_tasks("w9", 10)) == [
            "other",
            "other/0",
        ]

    async def test_cancel_without_error_keeps_none(self, backend: PersistentBackend) -> None:
        await create(backend, "p")
        await create(backend, "p/0", parent_id="p")
        assert (await backend.cancel_workflow("p")).error is None
        child = await backend.get_workflow("p/0")
        assert child.status is WorkflowStatus.CANCELLED and child.error is None

    async def test_cancel_finished_still_cascades(self, backend: PersistentBackend) -> None:
        await running(backend, "p", "w1")
        done = await backend.finish_workflow(
            "p", worker_id="w1", status=WorkflowStatus.FAILED, error=None
        )
        await create(backend, "p/0", parent_id="p")
        assert await backend.cancel_workflow("p") == done
        assert (await backend.get_workflow("p/0")).status is WorkflowStatus.CANCELLED

    async def test_requeue_runs_again_the_descendants_its_cancel_cancelled(
        self, backend: PersistentBackend
    ) -> None:
        """A cancelled workflow run again can await its children again: the descendants its
        cancel cancelled are run again with it, those that had started or that their parent
        awaits. One cancelled by itself before stays cancelled, and so does one that never
        started nor is awaited (an execution enqueued with a delay: run again now, it would run
        before it was due)."""
        await running(backend, "p", "w1")
        await backend.record_step(
            "p", step(0, status=StepStatus.PENDING, child_workflow_id="p/3"), worker_id="w1"
        )
        await running(backend, "p/0", "w2", parent_id="p")
        await create(backend, "p/0/0", parent_id="p/0")  # enqueued by p/0, not started
        await create(backend, "p/1", parent_id="p")  # enqueued by p, not started
        await create(backend, "p/2", parent_id="p")
        await create(backend, "p/3", parent_id="p")  # p's child, awaited, not started yet
        await create(backend, "other", parent_id="elsewhere")
        await backend.cancel_workflow("p/2")  # by itself, before
        await backend.cancel_workflow("other")
        await asyncio.sleep(0.01)
        await backend.cancel_workflow("p", error=ErrorInfo(type="m.Reason", message="stop"))
        info = await backend.requeue_workflow("p")
        assert info.status is WorkflowStatus.PENDING and info.error is None
        for child in ("p/0", "p/3"):
            got = await backend.get_workflow(child)
            assert got.status is WorkflowStatus.PENDING, child
            assert (got.error, got.completed_at, got.attempts) == (None, None, 0), child
            assert (await backend.get_task(child, W)).claimed_by is None, child
        for kept in ("p/2", "other", "p/0/0", "p/1"):
            assert (await backend.get_workflow(kept)).status is WorkflowStatus.CANCELLED
            with pytest.raises(TaskNotFoundError):
                await backend.get_task(kept, W)
        with pytest.raises(ClaimLostError):  # the child's former holder is fenced off
            await backend.record_step("p/0", step(0), worker_id="w2")
        # a failed workflow run again leaves its cancelled descendants as they are
        await running(backend, "f", "w1")
        await create(backend, "f/0", parent_id="f")
        await backend.cancel_workflow("f/0")
        await backend.finish_workflow("f", worker_id="w1", status=WorkflowStatus.FAILED)
        await backend.requeue_workflow("f")
        assert (await backend.get_workflow("f/0")).status is WorkflowStatus.CANCELLED

    async def test_requeue_drops_a_deadline_that_passed(self, backend: PersistentBackend) -> None:
        """Run again, an execution that its deadline cancelled must not be cancelled again at
        once by that same deadline; a deadline still ahead is kept."""
        now = await backend.now()
        ahead = now + timedelta(days=1)
        await create(backend, "late", deadline=now - timedelta(hours=1))
        await create(backend, "early", deadline=ahead)
        assert [w.id for w in await backend.cancel_expired_workflows()] == ["late"]
        await backend.cancel_workflow("early")
        assert (await backend.requeue_workflow("late")).deadline is None
        assert (await backend.requeue_workflow("early")).deadline == ahead
        assert await backend.cancel_expired_workflows() == []
        assert (await backend.get_workflow("late")).status is WorkflowStatus.PENDING

    # -- continue_as_new ----------------------------------------------------------------------

    async def test_continue_as_new(self, backend: PersistentBackend) -> None:
        deadline = T0 + timedelta(days=3650)
        started = await running(
            backend,
            "wf",
            "w1",
            input={"args": [1], "kwargs": {}},
            idempotency_key="key",
            max_attempts=3,
            queue="q",
            priority=2,
            deadline=deadline,
            parent_id="parent",
        )
        await backend.record_step("wf", step(0), worker_id="w1")
        await backend.record_step("wf", step(1, status=StepStatus.PENDING), worker_id="w1")
        await backend.add_task(TaskSpec(instance_id="wf", task_id="step:2", name="s"))
        info = await backend.continue_as_new(
            "wf", worker_id="w1", input={"args": [2], "kwargs": {"k": "v"}}
        )
        assert info.status is WorkflowStatus.PENDING
        assert info.input == {"args": [2], "kwargs": {"k": "v"}}
        assert info.continuations == 1
        assert info.attempts == 0 and info.interruptions == 0
        assert info.error is None and info.output is None
        assert info.version == started.version + 1
        for kept in (
            "id",
            "name",
            "idempotency_key",
            "max_attempts",
            "queue",
            "priority",
            "deadline",
            "parent_id",
            "created_at",
            "started_at",
        ):
            assert getattr(info, kept) == getattr(started, kept), kept
        assert await backend.get_workflow("wf") == info
        assert await backend.list_steps("wf") == []
        with pytest.raises(TaskNotFoundError):
            await backend.get_task("wf", "step:2")
        # due at once, unclaimed: the old holder's writes are refused
        task = await backend.get_task("wf", W)
        assert task.claimed_by is None
        with pytest.raises(ClaimLostError):
            await backend.record_step("wf", step(2), worker_id="w1")
        found = await backend.find_available_tasks("w2", 10)
        assert [(t.instance_id, t.task_id) for t in found] == [("wf", W)]
        # the next run is a new attempt, not an interruption
        assert await backend.claim_task("wf", W, "w2", LONG) is not None
        again = await backend.begin_execution("wf", "w2")
        assert again.attempts == 1 and again.interruptions == 0 and again.steps == ()
        assert again.input == {"args": [2], "kwargs": {"k": "v"}}
        # and it continues again, counting
        second = await backend.continue_as_new("wf", worker_id="w2", input={"args": [3]})
        assert second.continuations == 2

    async def test_continue_as_new_is_fenced(self, backend: PersistentBackend) -> None:
        await running(backend, "wf", "w1", input={"args": [1], "kwargs": {}})
        await backend.record_step("wf", step(0), worker_id="w1")
        before = await backend.get_workflow("wf")
        with pytest.raises(ClaimLostError):
            await backend.continue_as_new("wf", worker_id="w2", input={"args": [2]})
        with pytest.raises(SerializationError):
            await backend.continue_as_new("wf", worker_id="w1", input=Unserializable())
        assert await backend.get_workflow("wf") == before
        assert await backend.list_steps("wf") == [step(0)]
        # the claim is still held after a refused value
        await backend.record_step("wf", step(1), worker_id="w1")
        # an expired claim is not held
        await create(backend, "short")
        assert await backend.claim_task("short", W, "w1", SHORT) is not None
        await backend.begin_execution("short", "w1")
        await asyncio.sleep(SHORT.total_seconds() + 0.2)
        with pytest.raises(ClaimLostError):
            await backend.continue_as_new("short", worker_id="w1", input={"args": []})
        assert (await backend.get_workflow("short")).continuations == 0

    # -- list_waiting ---------------------------------------------------------------------------

    async def test_list_waiting(self, backend: PersistentBackend) -> None:
        sleep, recv = "durable.sleep", "durable.recv"
        for i, (name, last) in enumerate(
            [
                (
                    "sleeps",
                    step(1, sleep, status=StepStatus.PENDING, output="2030-01-01T00:00:00+00:00"),
                ),
                ("receives", step(1, recv, status=StepStatus.PENDING, input="topic")),
                ("slept", step(1, sleep)),  # woke: succeeded
                ("gathers", step(2, "s", status=StepStatus.PENDING)),  # a pending step after
                ("running", step(1, sleep, status=StepStatus.PENDING, output="x")),
                ("other", step(1, "child", status=StepStatus.PENDING)),
            ]
        ):
            await running(backend, name, "w1", created_at=T0 + timedelta(seconds=i))
            await backend.record_step(name, step(0), worker_id="w1")
            if name == "gathers":
                await backend.record_step(
                    name, step(1, sleep, status=StepStatus.PENDING, output="x"), worker_id="w1"
                )
            await backend.record_step(name, last, worker_id="w1")
            if name != "running":
                await backend.reschedule_workflow(
                    name, worker_id="w1", run_after=timedelta(hours=1), consume_attempt=False
                )
        await create(backend, "empty")
        page = await backend.list_waiting(step_names=[sleep, recv])
        assert [(w.id, s.name, s.position) for w, s in page] == [
            ("receives", recv, 1),
            ("sleeps", sleep, 1),
        ]
        info, last = page.items[1]
        assert info == await backend.get_workflow("sleeps")
        assert last == (await backend.list_steps("sleeps"))[-1]
        assert page.items[0][1].input == "topic"
        only = await backend.list_waiting(step_names=[sleep])
        assert [w.id for w, _ in only] == ["sleeps"]
        assert (await backend.list_waiting(step_names=[])).items == []
        first = await backend.list_waiting(step_names=[sleep, recv], limit=1)
        assert [w.id for w, _ in first] == ["receives"] and first.next_cursor is not None
        rest = await backend.list_waiting(
            step_names=[sleep, recv], limit=1, cursor=first.next_cursor
        )
        assert [w.id for w, _ in rest] == ["sleeps"] and rest.next_cursor is None
        with pytest.raises(InvalidArgumentError):
            await backend.list_waiting(step_names=[sleep], limit=0)
