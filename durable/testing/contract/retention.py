"""Retention: finished workflows older than a time deleted in batches, oldest first, with what
hangs off them (steps, tasks, messages, events, streams); unfinished workflows, finished
children of unfinished parents, and children a stored parent's pending step awaits, kept;
filters by name and queue; racing deleters each delete a workflow once and count it once."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest

from durable.backends.base import PersistentBackend
from durable.errors import InvalidArgumentError, WorkflowNotFoundError
from durable.models import StepRecord, StepStatus, WorkflowStatus
from durable.testing.contract._support import ContractBase, create, now, running, step

OLD = timedelta(days=40)


async def finished(
    backend: PersistentBackend,
    instance_id: str,
    *,
    status: WorkflowStatus = WorkflowStatus.SUCCEEDED,
    age: timedelta = OLD,
    **fields: Any,
) -> None:
    """Store a workflow that finished ``age`` ago, with one step."""
    at = now() - age
    await create(
        backend,
        instance_id,
        task=False,
        status=status,
        started_at=at - timedelta(seconds=1),
        completed_at=at,
        steps=(step(0),),
        **fields,
    )


async def stored(backend: PersistentBackend, *ids: str) -> set[str]:
    found = set()
    for instance_id in ids:
        try:
            await backend.get_workflow(instance_id)
        except WorkflowNotFoundError:
            continue
        found.add(instance_id)
    return found


class RetentionContract(ContractBase):
    """:meth:`~durable.backends.PersistentBackend.delete_finished_workflows` and
    :meth:`~durable.backends.PersistentBackend.count_finished_workflows`."""

    async def test_only_finished_and_old_enough_are_deleted(
        self, backend: PersistentBackend
    ) -> None:
        for status in WorkflowStatus:
            if status.is_terminal:
                await finished(backend, f"old-{status.value}", status=status)
        await finished(backend, "recent", age=timedelta(days=1))
        await create(backend, "pending")
        await running(backend, "running", "w1")
        cutoff = now() - timedelta(days=30)
        assert await backend.count_finished_workflows(cutoff) == 4
        assert await backend.delete_finished_workflows(cutoff) == 4
        assert await backend.delete_finished_workflows(cutoff) == 0
        assert await backend.count_finished_workflows(cutoff) == 0
        assert await stored(
            backend,
            *(f"old-{s.value}" for s in WorkflowStatus),
            "recent",
            "pending",
            "running",
        ) == {"recent", "pending", "running"}

    async def test_batches_oldest_first(self, backend: PersistentBackend) -> None:
        for i in range(5):
            await finished(backend, f"wf{i}", age=OLD + timedelta(hours=i))  # wf4 the oldest
        cutoff = now() - timedelta(days=30)
        assert await backend.delete_finished_workflows(cutoff, limit=2) == 2
        assert await stored(backend, *(f"wf{i}" for i in range(5))) == {"wf0", "wf1", "wf2"}
        assert await backend.delete_finished_workflows(cutoff, limit=2) == 2
        assert await backend.delete_finished_workflows(cutoff, limit=2) == 1
        assert await backend.delete_finished_workflows(cutoff, limit=2) == 0

    async def test_filters_by_name_and_queue(self, backend: PersistentBackend) -> None:
        await finished(backend, "a-q1", name="a", queue="q1")
        await finished(backend, "a-q2", name="a", queue="q2")
        await finished(backend, "b-q1", name="b", queue="q1")
        cutoff = now()
        assert await backend.count_finished_workflows(cutoff, names=["a"], queues=["q1"]) == 1
        assert await backend.delete_finished_workflows(cutoff, names=["a"], queues=["q1"]) == 1
        assert await backend.delete_finished_workflows(cutoff, queues=["q2"]) == 1
        assert await stored(backend, "a-q1", "a-q2", "b-q1") == {"b-q1"}
        assert await backend.delete_finished_workflows(cutoff, names=["c"]) == 0
        assert await backend.delete_finished_workflows(cutoff, names=[]) == 0
        assert await backend.delete_finished_workflows(cutoff, names=["b"]) == 1

    async def test_children_of_unfinished_parents_are_kept(
        self, backend: PersistentBackend
    ) -> None:
        await running(backend, "parent", "w1")
        await finished(backend, "child", parent_id="parent")
        await finished(backend, "done-parent")
        await finished(backend, "done-child", parent_id="done-parent")
        await finished(backend, "orphan", parent_id="deleted-long-ago")
        await finished(backend, "waiting-parent")  # its child has not finished
        await create(backend, "live-child", parent_id="waiting-parent")
        cutoff = now()
        assert await backend.count_finished_workflows(cutoff) == 3
        assert await backend.delete_finished_workflows(cutoff) == 3
        assert await stored(
            backend, "parent", "child", "done-parent", "done-child", "orphan", "waiting-parent"
        ) == {"parent", "child", "waiting-parent"}

    async def test_a_child_its_stored_parent_still_awaits_is_kept(
        self, backend: PersistentBackend
    ) -> None:
        """A parent cancelled (or failed) while it awaited its child keeps the step pending:
        run again, it awaits the same child, so the child stays while the parent is stored."""
        at = now() - OLD
        await create(
            backend,
            "cancelled-parent",
            task=False,
            status=WorkflowStatus.CANCELLED,
            started_at=at - timedelta(seconds=2),
            completed_at=at,
            steps=(
                step(0),
                step(1, "child", status=StepStatus.PENDING, child_workflow_id="awaited"),
            ),
        )
        await finished(
            backend, "awaited", status=WorkflowStatus.CANCELLED, parent_id="cancelled-parent"
        )
        await finished(backend, "recorded", parent_id="cancelled-parent")  # its step: step(0)
        cutoff = now()
        assert await backend.count_finished_workflows(cutoff) == 2
        assert await backend.delete_finished_workflows(cutoff) == 2
        assert await stored(backend, "cancelled-parent", "awaited", "recorded") == {"awaited"}
        assert await backend.delete_finished_workflows(cutoff) == 1  # its parent is gone

    async def test_what_hangs_off_a_workflow_goes_with_it(self, backend: PersistentBackend) -> None:
        await running(backend, "wf", "w1", idempotency_key="key-1")
        await backend.record_step("wf", step(0), worker_id="w1")
        set_event = step(1, "durable.set_event", input={"key": "k"})
        await backend.set_event("wf", "k", 1, worker_id="w1", step=set_event)
        write = step(2, "durable.write_stream", input={"key": "s"})
        await backend.write_stream("wf", "s", "v", worker_id="w1", step=write)
        await backend.send_message("wf", "topic", "hello")
        await backend.finish_workflow("wf", worker_id="w1", status=WorkflowStatus.SUCCEEDED)
        await finished(backend, "other")
        assert await backend.delete_finished_workflows(now() + timedelta(seconds=60)) == 2
        with pytest.raises(WorkflowNotFoundError):
            await backend.list_steps("wf")
        with pytest.raises(WorkflowNotFoundError):
            await backend.get_event("wf", "k")
        # a new workflow under the same id and key starts from nothing
        await running(backend, "wf", "w2", idempotency_key="key-1")
        steps: list[StepRecord] = await backend.list_steps("wf")
        assert steps == []
        assert await backend.get_event("wf", "k") is None
        assert await backend.list_messages("wf") == []
        assert (await backend.read_stream("wf", "s")).values == ()

    async def test_racing_deleters_count_each_once(self, backend: PersistentBackend) -> None:
        for i in range(60):
            await finished(backend, f"wf{i:02}")
        cutoff = now()

        async def deleter() -> int:
            total = 0
            while True:
                deleted = await backend.delete_finished_workflows(cutoff, limit=7)
                total += deleted
                if deleted == 0:
                    return total

        counts = await asyncio.gather(*(deleter() for _ in range(4)))
        assert sum(counts) == 60
        assert await backend.count_finished_workflows(cutoff) == 0

    async def test_bad_retention_arguments_are_refused(self, backend: PersistentBackend) -> None:
        with pytest.raises(InvalidArgumentError):
            await backend.delete_finished_workflows(now(), limit=0)
        with pytest.raises(InvalidArgumentError):
            await backend.delete_finished_workflows(now().replace(tzinfo=None))
        with pytest.raises(InvalidArgumentError):
            await backend.count_finished_workflows(now().replace(tzinfo=None))
