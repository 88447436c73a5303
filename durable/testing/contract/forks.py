"""Forks: a new execution from the first steps of another's recorded history, in one
transaction: its header from the source's, the steps and events below the fork position copied
as stored, its labels copied, its task due at once; bad positions, pending steps, unknown
sources and taken ids refused without writing anything; the source unchanged."""

from __future__ import annotations

from datetime import timedelta

import pytest

from durable.backends.base import PersistentBackend
from durable.errors import (
    InvalidArgumentError,
    WorkflowAlreadyExistsError,
    WorkflowNotFoundError,
)
from durable.models import ErrorInfo, StepStatus, WorkflowStatus
from durable.testing.contract._support import (
    LONG,
    ContractBase,
    W,
    assert_aware,
    create,
    now,
    running,
    step,
)

INPUT = {"args": [1, "two"], "kwargs": {"x": [None, 2.5]}}


async def source(backend: PersistentBackend) -> None:
    """``src``: finished (failed) with steps 0..3 (2 a handled failure, 3 a child's) and
    events written at positions 1 (``a``) and 3 (``b``)."""
    await running(
        backend, "src", "w1", name="wf", queue="q", priority=4, max_attempts=7, input=INPUT
    )
    await backend.record_step("src", step(0, output={"v": 0}), worker_id="w1")
    await backend.set_event(
        "src", "a", "A", worker_id="w1", step=step(1, "durable.set_event", input={"key": "a"})
    )
    failure = ErrorInfo(type="builtins.ValueError", message="boom")
    await backend.record_step(
        "src", step(2, status=StepStatus.FAILED, error=failure, attempts=3), worker_id="w1"
    )
    await backend.set_event(
        "src", "b", "B", worker_id="w1", step=step(3, "durable.set_event", input={"key": "b"})
    )
    await backend.finish_workflow(
        "src", worker_id="w1", status=WorkflowStatus.FAILED, error=failure
    )


class ForkContract(ContractBase):
    """:meth:`~durable.backends.PersistentBackend.fork_workflow`."""

    async def test_the_fork_copies_the_steps_and_events_below_the_position(
        self, backend: PersistentBackend
    ) -> None:
        await source(backend)
        before_source = await backend.load_snapshot("src")
        started = now()
        info = await backend.fork_workflow("src", "fork", from_position=2, trace_context="tc")
        assert info.id == "fork" and info.name == "wf" and info.status is WorkflowStatus.PENDING
        assert info == await backend.get_workflow("fork")
        assert info.input == INPUT and info.queue == "q" and info.priority == 4
        assert info.max_attempts == 7 and info.trace_context == "tc"
        assert info.output is None and info.error is None and info.parent_id is None
        assert info.idempotency_key is None and info.deadline is None
        assert (info.attempts, info.interruptions, info.continuations, info.version) == (0, 0, 0, 1)
        assert_aware(info.created_at, info.updated_at)
        assert info.created_at is not None and info.created_at >= started - timedelta(seconds=30)
        copied = await backend.list_steps("fork")
        assert copied == [s for s in before_source.steps if s.position < 2]
        event = await backend.get_event("fork", "a")
        assert event is not None and (event.value, event.position) == ("A", 1)
        assert await backend.get_event("fork", "b") is None
        assert await backend.load_snapshot("src") == before_source  # the source is unchanged
        claim = await backend.claim_task("fork", W, "w2", LONG, due_only=True)
        assert claim is not None
        task = await backend.get_task("fork", W)
        assert (task.name, task.queue, task.priority) == ("wf", "q", 4)
        began = await backend.begin_execution("fork", "w2")
        assert [s.position for s in began.steps] == [0, 1]
        assert began.input == INPUT

    async def test_the_labels_are_copied(self, backend: PersistentBackend) -> None:
        labels = {"customer": "c-42", "uni": "caf\u00e9"}
        await running(backend, "labelled", "w1", labels=labels)
        await create(backend, "plain")
        await backend.fork_workflow("labelled", "fork", from_position=0)
        await backend.fork_workflow("plain", "plain-fork", from_position=0)
        found = await backend.get_labels(["labelled", "fork", "plain-fork"])
        assert found == {"labelled": labels, "fork": labels, "plain-fork": {}}
        listed = await backend.list_snapshots(labels={"customer": "c-42"})
        assert sorted(s.id for s in listed) == ["fork", "labelled"]

    async def test_every_position_from_zero_to_one_past_the_last(
        self, backend: PersistentBackend
    ) -> None:
        await source(backend)
        for position in range(5):
            await backend.fork_workflow("src", f"f{position}", from_position=position)
            assert [s.position for s in await backend.list_steps(f"f{position}")] == list(
                range(position)
            )
        assert (await backend.get_event("f4", "b")) is not None

    async def test_a_deadline_is_stored(self, backend: PersistentBackend) -> None:
        await source(backend)
        deadline = now() + timedelta(hours=1)
        info = await backend.fork_workflow("src", "fork", from_position=0, deadline=deadline)
        assert info.deadline == deadline
        with pytest.raises(InvalidArgumentError, match="naive"):
            await backend.fork_workflow(
                "src", "naive", from_position=0, deadline=deadline.replace(tzinfo=None)
            )
        with pytest.raises(WorkflowNotFoundError):
            await backend.get_workflow("naive")

    async def test_refusals_write_nothing(self, backend: PersistentBackend) -> None:
        await source(backend)
        with pytest.raises(InvalidArgumentError, match=r"from_step=5 .*between 0 and 4"):
            await backend.fork_workflow("src", "f", from_position=5)
        with pytest.raises(InvalidArgumentError, match=r"from_step=-1"):
            await backend.fork_workflow("src", "f", from_position=-1)
        with pytest.raises(WorkflowNotFoundError) as missing:
            await backend.fork_workflow("nope", "f", from_position=0)
        assert missing.value.workflow_id == "nope"
        await create(backend, "taken", task=False)
        with pytest.raises(WorkflowAlreadyExistsError):
            await backend.fork_workflow("src", "taken", from_position=1)
        assert await backend.list_steps("taken") == []
        with pytest.raises(WorkflowNotFoundError):
            await backend.get_workflow("f")
        assert await backend.find_available_tasks("w9", 10) == []

    async def test_a_pending_step_below_the_position_is_refused(
        self, backend: PersistentBackend
    ) -> None:
        await running(backend, "src", "w1", name="wf")
        await backend.record_step("src", step(0), worker_id="w1")
        await backend.record_step(
            "src",
            step(1, "child", status=StepStatus.PENDING, child_workflow_id="src/1"),
            worker_id="w1",
        )
        with pytest.raises(
            InvalidArgumentError, match=r"step 1 of workflow 'src' is still pending"
        ):
            await backend.fork_workflow("src", "f", from_position=2)
        with pytest.raises(WorkflowNotFoundError):
            await backend.get_workflow("f")
        info = await backend.fork_workflow("src", "f", from_position=1)  # a running source
        assert info.status is WorkflowStatus.PENDING
        assert [s.position for s in await backend.list_steps("f")] == [0]

    async def test_a_source_without_steps(self, backend: PersistentBackend) -> None:
        await create(backend, "src", input=INPUT)
        with pytest.raises(InvalidArgumentError, match="no recorded step"):
            await backend.fork_workflow("src", "f", from_position=1)
        info = await backend.fork_workflow("src", "f", from_position=0)
        assert info.input == INPUT
