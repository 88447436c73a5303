"""The change feed (``list_changes``): every state change in one global order, paged with
``after`` without a gap; derived from the rows the changes write (a row's current state at the
position of its last change); a deletion never lowers the next position; bad arguments refused.

A backend that keeps no feed (its ``list_changes`` raises NotSupportedError) skips these
tests: the capability is optional.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from durable.backends.base import PersistentBackend
from durable.errors import InvalidArgumentError, NotSupportedError
from durable.models import (
    ChangeEvent,
    ChangeKind,
    StepStatus,
    TaskSpec,
    WorkflowSnapshot,
    WorkflowStatus,
)
from durable.testing.contract._support import LONG, ContractBase, W, create, running, step


async def feed(backend: PersistentBackend, after: int = 0, limit: int = 100) -> list[ChangeEvent]:
    """The feed after ``after``; skips the test on a backend that keeps none."""
    try:
        return await backend.list_changes(after=after, limit=limit)
    except NotSupportedError as exc:
        pytest.skip(f"no change feed: {exc}")


def kinds(events: list[ChangeEvent]) -> list[tuple[str, str]]:
    return [(e.kind.value, e.workflow_id) for e in events]


class ChangeFeedContract(ContractBase):
    """:meth:`~durable.backends.PersistentBackend.list_changes`."""

    async def test_a_workflows_life_in_order(self, backend: PersistentBackend) -> None:
        assert await feed(backend) == []
        await running(backend, "a", "w1")
        await backend.record_step("a", step(0, "fetch"), worker_id="w1")
        await backend.record_step(
            "a", step(1, "durable.sleep", status=StepStatus.PENDING), worker_id="w1"
        )
        assert await backend.send_message("a", "topic", {"v": 1})
        await backend.finish_workflow(
            "a", worker_id="w1", status=WorkflowStatus.SUCCEEDED, output=3
        )
        events = await feed(backend)
        assert [e.kind for e in events] == [
            ChangeKind.CREATED,
            ChangeKind.STARTED,
            ChangeKind.STEP_RECORDED,
            ChangeKind.SLEEPING,
            ChangeKind.MESSAGE,
            ChangeKind.FINISHED,
        ]
        positions = [e.position for e in events]
        assert positions == sorted(set(positions))
        assert {e.workflow_id for e in events} == {"a"}
        assert {e.workflow_name for e in events} == {"wf"}
        recorded, sleeping, message, finished = events[2], events[3], events[4], events[5]
        assert (recorded.step_position, recorded.step_name, recorded.status) == (
            0,
            "fetch",
            "succeeded",
        )
        assert (sleeping.step_position, sleeping.status) == (1, "pending")
        assert message.step_name == "topic"
        assert finished.status == "succeeded"
        assert all(e.time is not None and e.time.utcoffset() is not None for e in events)
        # paging on from any position gives the rest, and nothing after the last
        for index, event in enumerate(events):
            assert await feed(backend, after=event.position) == events[index + 1 :]

    async def test_pages_of_a_limit_read_the_same_order(self, backend: PersistentBackend) -> None:
        for i in range(7):
            await create(backend, f"w{i}")
        whole = await feed(backend)
        assert kinds(whole) == [("created", f"w{i}") for i in range(7)]
        paged: list[ChangeEvent] = []
        after = 0
        while page := await feed(backend, after=after, limit=2):
            assert len(page) >= 1
            paged += page
            after = page[-1].position
        assert paged == whole

    async def test_a_pending_step_recorded_later_moves_past_a_reader(
        self, backend: PersistentBackend
    ) -> None:
        await running(backend, "a", "w1")
        await backend.record_step(
            "a", step(0, "durable.recv", status=StepStatus.PENDING), worker_id="w1"
        )
        seen = await feed(backend)
        assert seen[-1].kind is ChangeKind.WAITING
        await create(backend, "b")
        await backend.record_step("a", step(0, "durable.recv"), worker_id="w1")
        later = await feed(backend, after=seen[-1].position)
        assert kinds(later) == [("created", "b"), ("step_recorded", "a")]
        assert later[-1].step_position == 0
        # the row's current state: the whole feed shows the step once, as recorded
        assert [e.kind for e in await feed(backend) if e.step_position == 0] == [
            ChangeKind.STEP_RECORDED
        ]

    async def test_a_batchs_workflows_are_created_in_its_order_between_other_changes(
        self, backend: PersistentBackend
    ) -> None:
        def row(instance_id: str) -> tuple[WorkflowSnapshot, TaskSpec]:
            return (
                WorkflowSnapshot(id=instance_id, name="wf"),
                TaskSpec(instance_id=instance_id, name="wf"),
            )

        await feed(backend)  # skips a backend without a feed
        await running(backend, "before", "w1")
        await backend.create_workflows([row("b1"), row("b2"), row("b3")])
        await backend.record_step("before", step(0), worker_id="w1")
        # a row that exists already is not created again: no change of its own
        await backend.create_workflows([row("b2"), row("b4"), row("b5")])
        await create(backend, "after")
        events = await feed(backend)
        assert kinds(events) == [
            ("created", "before"),
            ("started", "before"),
            ("created", "b1"),
            ("created", "b2"),
            ("created", "b3"),
            ("step_recorded", "before"),
            ("created", "b4"),
            ("created", "b5"),
            ("created", "after"),
        ]
        positions = [e.position for e in events]
        assert positions == sorted(set(positions))
        for index, event in enumerate(events):
            assert await feed(backend, after=event.position) == events[index + 1 :]

    async def test_enqueues_at_the_same_moment_each_get_their_own_position(
        self, backend: PersistentBackend
    ) -> None:
        """Workflows created with their tasks concurrently (which a backend may write in one
        transaction) are each created once, each at a position of its own, between the changes
        before and after them; one created again meanwhile is no change."""

        def enqueue(instance_id: str) -> Any:
            return backend.create_workflow(
                WorkflowSnapshot(id=instance_id, name="wf"),
                task=TaskSpec(instance_id=instance_id, name="wf"),
            )

        await feed(backend)
        await create(backend, "before")
        ids = [f"c{i}" for i in range(8)]
        results = await asyncio.gather(*(enqueue(i) for i in [*ids, "c3", "before"]))
        created = [created for _, created in results]
        # the two creations of c3 race: either may be the one that creates it
        assert created[:3] + created[4:8] == [True] * 7 and created[9] is False
        assert sorted([created[3], created[8]]) == [False, True]
        assert [info.id for info, _ in results] == [*ids, "c3", "before"]
        assert results[3][0] == results[8][0]
        await create(backend, "after")
        events = await feed(backend)
        assert kinds(events)[0] == ("created", "before")
        assert sorted(kinds(events)[1:-1]) == [("created", i) for i in ids]
        assert kinds(events)[-1] == ("created", "after")
        positions = [e.position for e in events]
        assert positions == sorted(set(positions))

    async def test_a_deletion_never_lowers_the_next_position(
        self, backend: PersistentBackend
    ) -> None:
        await create(backend, "a")
        await running(backend, "b", "w1")
        await backend.record_step("b", step(0), worker_id="w1")
        highest = (await feed(backend))[-1].position
        assert await backend.delete_snapshot("b")
        assert kinds(await feed(backend)) == [("created", "a")]
        await create(backend, "c")
        after = await feed(backend, after=highest)
        assert kinds(after) == [("created", "c")]

    async def test_a_restart_and_a_cancel_are_changes(self, backend: PersistentBackend) -> None:
        await running(backend, "a", "w1")
        first = await feed(backend)
        await backend.release_task_claim("a", W, "w1")
        claim = await backend.claim_task("a", W, "w2", LONG)
        assert claim is not None
        await backend.begin_execution("a", "w2")
        restarted = await feed(backend, after=first[-1].position)
        assert kinds(restarted) == [("started", "a")]
        await backend.cancel_workflow("a")
        cancelled = await feed(backend, after=restarted[-1].position)
        assert kinds(cancelled) == [("finished", "a")]
        assert cancelled[0].status == "cancelled"

    async def test_bad_feed_arguments_are_refused(self, backend: PersistentBackend) -> None:
        await feed(backend)  # skips a backend without a feed
        # and a limit beyond a 32-bit int (SQLite's driver overflowed on it); positions have
        # no such bound (PostgreSQL's go past 64 bits)
        for after, limit in ((-1, 10), (0, 0), (0, -3), (0, 2**70)):
            with pytest.raises(InvalidArgumentError):
                await backend.list_changes(after=after, limit=limit)
