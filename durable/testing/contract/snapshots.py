"""Idempotent creation, whole-snapshot saves under an optimistic lock, and what a write refuses
(values the serializer rejects, naive timestamps) without writing anything."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import datetime

import pytest

from durable.backends.base import PersistentBackend
from durable.errors import (
    ConcurrentUpdateError,
    InvalidArgumentError,
    SerializationError,
    WorkflowAlreadyExistsError,
    WorkflowNotFoundError,
)
from durable.models import (
    StepStatus,
    TaskSpec,
    WorkflowSnapshot,
    WorkflowStatus,
)
from durable.testing.contract._support import (
    ContractBase,
    Unserializable,
    W,
    assert_between,
    create,
    keys_of,
    now,
    running,
    step,
)


class SnapshotContract(ContractBase):
    """Idempotent creation, whole-snapshot saves under an optimistic lock, and what a write refuses
    (values the serializer rejects, naive timestamps) without writing anything."""

    async def test_create_workflow_is_idempotent_by_id(self, backend: PersistentBackend) -> None:
        first, created = await backend.create_workflow(
            WorkflowSnapshot(id="wf", name="first", input=1),
            task=TaskSpec(instance_id="wf", name="first"),
        )
        assert created is True
        second, created = await backend.create_workflow(
            WorkflowSnapshot(
                id="wf",
                name="second",
                input=2,
                status=WorkflowStatus.RUNNING,
                idempotency_key="new-key",
                steps=(step(0),),
            ),
            task=TaskSpec(instance_id="wf", task_id="other", name="second"),
        )
        assert created is False
        assert second == first
        loaded = await backend.load_snapshot("wf")
        assert loaded.header() == first and loaded.steps == ()
        assert keys_of(await backend.find_available_tasks("w", 10)) == [("wf", W)]
        assert [i.id for i in await backend.list_snapshots()] == ["wf"]
        # the key of the refused snapshot was not recorded either
        _, created = await backend.create_workflow(
            WorkflowSnapshot(id="wf-2", name="x", idempotency_key="new-key")
        )
        assert created is True

    async def test_create_workflow_is_idempotent_by_key(self, backend: PersistentBackend) -> None:
        first = await create(backend, "a", idempotency_key="order-1", input={"n": 1})
        again, created = await backend.create_workflow(
            WorkflowSnapshot(id="b", name="other", idempotency_key="order-1", input={"n": 2}),
            task=TaskSpec(instance_id="b", name="other"),
        )
        assert created is False
        assert again == first
        with pytest.raises(WorkflowNotFoundError):
            await backend.get_workflow("b")
        assert [i.id for i in await backend.list_snapshots()] == ["a"]
        assert keys_of(await backend.find_available_tasks("w", 10)) == [("a", W)]
        # another key, and no key at all, do not collide
        await create(backend, "c", idempotency_key="order-2")
        await create(backend, "n1")
        await create(backend, "n2")
        assert sorted(i.id for i in await backend.list_snapshots()) == ["a", "c", "n1", "n2"]

    async def test_save_snapshot_inserts_and_updates(self, backend: PersistentBackend) -> None:
        original = WorkflowSnapshot(
            id="wf",
            name="wf",
            input={"a": 1},
            idempotency_key="k1",
            steps=(step(0, output="zero"), step(1, status=StepStatus.PENDING)),
        )
        before = now()
        saved = await backend.save_snapshot(original)
        after = now()
        assert saved.version == 1
        assert saved.steps == original.steps
        assert_between(saved.created_at, before, after)
        assert_between(saved.updated_at, before, after)
        expected = dataclasses.replace(
            original, version=1, created_at=saved.created_at, updated_at=saved.updated_at
        )
        assert saved == expected
        assert await backend.load_snapshot("wf") == saved

        changed = dataclasses.replace(
            saved,
            status=WorkflowStatus.RUNNING,
            input={"a": 2},
            output="out",
            executor_id="w1",
            attempts=1,
            idempotency_key="k2",
            steps=(
                step(0, output="replaced"),  # save_snapshot overwrites any position
                step(2, output="two"),
            ),
        )
        saved2 = await backend.save_snapshot(changed)
        assert saved2.version == 2
        assert saved2.created_at == saved.created_at
        assert saved2.updated_at is not None and saved.updated_at is not None
        assert saved2.updated_at >= saved.updated_at
        assert saved2.header() == dataclasses.replace(
            changed.header(), version=2, updated_at=saved2.updated_at
        )
        # upserted by position; position 1 was not listed and is kept
        assert saved2.steps == (
            step(0, output="replaced"),
            original.steps[1],
            step(2, output="two"),
        )
        assert await backend.load_snapshot("wf") == saved2
        assert await backend.get_workflow("wf") == saved2.header()
        # the old idempotency key was given up, the new one is taken
        _, created = await backend.create_workflow(
            WorkflowSnapshot(id="x", name="x", idempotency_key="k2")
        )
        assert created is False
        _, created = await backend.create_workflow(
            WorkflowSnapshot(id="y", name="y", idempotency_key="k1")
        )
        assert created is True

    async def test_save_snapshot_conflicts_leave_data_intact(
        self, backend: PersistentBackend
    ) -> None:
        await create(backend, "other-1", task=False)
        await create(backend, "other-2", task=False)
        await create(backend, "keyed", task=False, idempotency_key="taken")
        saved = await backend.save_snapshot(
            WorkflowSnapshot(id="wf", name="wf", input=1, steps=(step(0, output="kept"),))
        )
        stored = await backend.load_snapshot("wf")

        # version 0 for an existing id
        with pytest.raises(WorkflowAlreadyExistsError) as exists:
            await backend.save_snapshot(
                WorkflowSnapshot(id="wf", name="x", input=2, steps=(step(0, output="x"), step(5)))
            )
        assert exists.value.workflow_id == "wf"
        assert await backend.load_snapshot("wf") == stored

        # a stale version
        moved = await backend.save_snapshot(dataclasses.replace(saved, input=3, steps=()))
        assert moved.version == 2
        stored = await backend.load_snapshot("wf")
        with pytest.raises(ConcurrentUpdateError) as conflict:
            await backend.save_snapshot(
                dataclasses.replace(saved, input=4, steps=(step(0, output="lost"), step(1)))
            )
        assert conflict.value.workflow_id == "wf"
        assert conflict.value.expected_version == 1
        assert conflict.value.actual_version == 2
        assert await backend.load_snapshot("wf") == stored
        assert stored.input == 3 and stored.steps == (step(0, output="kept"),)

        # a version from the future
        with pytest.raises(ConcurrentUpdateError):
            await backend.save_snapshot(dataclasses.replace(stored, version=99))
        assert await backend.load_snapshot("wf") == stored

        # an update of a workflow that does not exist creates nothing
        with pytest.raises(WorkflowNotFoundError) as missing:
            await backend.save_snapshot(
                WorkflowSnapshot(id="ghost", name="g", version=3, steps=(step(0),))
            )
        assert missing.value.workflow_id == "ghost"
        with pytest.raises(WorkflowNotFoundError):
            await backend.get_workflow("ghost")

        # an idempotency key that another workflow holds
        with pytest.raises(WorkflowAlreadyExistsError):
            await backend.save_snapshot(
                WorkflowSnapshot(id="new", name="n", idempotency_key="taken")
            )
        with pytest.raises(WorkflowNotFoundError):
            await backend.get_workflow("new")
        with pytest.raises(WorkflowAlreadyExistsError):
            await backend.save_snapshot(dataclasses.replace(stored, idempotency_key="taken"))
        assert await backend.load_snapshot("wf") == stored
        assert (await backend.get_workflow("keyed")).idempotency_key == "taken"
        assert sorted(i.id for i in await backend.list_snapshots()) == [
            "keyed",
            "other-1",
            "other-2",
            "wf",
        ]

    async def test_concurrent_saves_of_one_version(self, backend: PersistentBackend) -> None:
        saved = await backend.save_snapshot(WorkflowSnapshot(id="wf", name="wf", input=0))
        outcomes = await asyncio.gather(
            *(
                backend.save_snapshot(dataclasses.replace(saved, input=i, steps=(step(i),)))
                for i in range(1, 9)
            ),
            return_exceptions=True,
        )
        winners = [o for o in outcomes if isinstance(o, WorkflowSnapshot)]
        losers = [o for o in outcomes if isinstance(o, ConcurrentUpdateError)]
        assert len(winners) == 1 and len(losers) == 7, outcomes
        [winner] = winners
        stored = await backend.load_snapshot("wf")
        assert stored == winner and stored.version == 2
        assert [s.position for s in stored.steps] == [winner.input]

    async def test_serialization_errors_write_nothing(self, backend: PersistentBackend) -> None:
        bad = Unserializable()
        with pytest.raises(SerializationError, match="Unserializable"):
            await backend.create_workflow(
                WorkflowSnapshot(id="wf", name="wf", input=bad),
                task=TaskSpec(instance_id="wf", name="wf"),
            )
        with pytest.raises(SerializationError):
            await backend.create_workflow(
                WorkflowSnapshot(id="wf", name="wf", steps=(step(0, output={"k": bad}),)),
                task=TaskSpec(instance_id="wf", name="wf"),
            )
        with pytest.raises(SerializationError, match="Unserializable"):
            await backend.save_snapshot(WorkflowSnapshot(id="wf", name="wf", output=bad))
        with pytest.raises(WorkflowNotFoundError):
            await backend.get_workflow("wf")
        assert (await backend.list_snapshots()).items == []
        assert await backend.find_available_tasks("w", 10) == []

        await running(backend, "ok", "w1", input="fine", steps=(step(0),))
        stored = await backend.load_snapshot("ok")
        for changed in (
            dataclasses.replace(stored, input=bad),
            dataclasses.replace(stored, output=[1, bad]),
            dataclasses.replace(stored, steps=(step(0, output="new"), step(1, output=bad))),
        ):
            with pytest.raises(SerializationError):
                await backend.save_snapshot(changed)
        with pytest.raises(SerializationError, match="Unserializable"):
            await backend.record_step("ok", step(1, output=bad), worker_id="w1")
        with pytest.raises(SerializationError, match="Unserializable"):
            await backend.finish_workflow(
                "ok", worker_id="w1", status=WorkflowStatus.SUCCEEDED, output=bad
            )
        assert await backend.load_snapshot("ok") == stored
        # the claim survived: the holder can still finish
        info = await backend.finish_workflow(
            "ok", worker_id="w1", status=WorkflowStatus.SUCCEEDED, output="fine"
        )
        assert info.output == "fine" and info.version == stored.version + 1

    async def test_naive_timestamps_are_refused(self, backend: PersistentBackend) -> None:
        naive = datetime(2024, 1, 1, 12, 0)
        for snapshot, spec in (
            (WorkflowSnapshot(id="wf", name="wf", created_at=naive), None),
            (WorkflowSnapshot(id="wf", name="wf", steps=(step(0, completed_at=naive),)), None),
            (
                WorkflowSnapshot(id="wf", name="wf"),
                TaskSpec(instance_id="wf", name="wf", run_after=naive),
            ),
        ):
            with pytest.raises(InvalidArgumentError, match="naive"):
                await backend.create_workflow(snapshot, task=spec)
        with pytest.raises(InvalidArgumentError):
            await backend.save_snapshot(WorkflowSnapshot(id="wf", name="wf", started_at=naive))
        with pytest.raises(WorkflowNotFoundError):
            await backend.get_workflow("wf")
        assert await backend.find_available_tasks("w", 10) == []

        await running(backend, "ok", "w1")
        stored = await backend.load_snapshot("ok")
        with pytest.raises(InvalidArgumentError):
            await backend.save_snapshot(dataclasses.replace(stored, completed_at=naive))
        with pytest.raises(InvalidArgumentError):
            await backend.record_step("ok", step(0, started_at=naive), worker_id="w1")
        with pytest.raises(InvalidArgumentError):
            await backend.add_task(
                TaskSpec(instance_id="ok", task_id="t", name="t", run_after=naive)
            )
        assert await backend.load_snapshot("ok") == stored
        assert await backend.find_available_tasks("w2", 10) == []
        assert [i.id for i in await backend.list_snapshots()] == ["ok"]
