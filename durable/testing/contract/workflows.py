"""Workflows as records: create, read back every field and value, delete, list."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from functools import partial
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
    StepRecord,
    StepStatus,
    TaskSpec,
    WorkflowInfo,
    WorkflowSnapshot,
    WorkflowStatus,
)
from durable.testing.contract._support import (
    IST,
    LONG,
    PST,
    T0,
    VALUES,
    Call,
    ContractBase,
    W,
    assert_aware,
    assert_between,
    create,
    ids_of,
    keys_of,
    now,
    running,
    step,
)


class WorkflowContract(ContractBase):
    """Workflows as records: create, read back every field and value, delete, list."""

    async def test_start_is_idempotent(self, backend: PersistentBackend) -> None:
        info = await create(backend, "wf")
        await backend.start()
        assert await backend.get_workflow("wf") == info

    async def test_create_workflow_round_trips_every_field(
        self, backend: PersistentBackend
    ) -> None:
        created_at = datetime(2024, 2, 29, 23, 59, 58, 123456, tzinfo=IST)
        started_at = datetime(2024, 3, 1, 1, 2, 3, 654321, tzinfo=PST)
        completed_at = datetime(2024, 3, 1, 12, 0, 0, 1, tzinfo=UTC)
        error = ErrorInfo(
            type="builtins.ValueError",
            message="bad ☃ value\nsecond line",
            traceback='Traceback (most recent call last):\n  File "x.py", line 1\nValueError\n',
            args=("bad ☃", 1, 2.5, None, [2, 3], {"k": [None]}),
        )
        steps = (
            StepRecord(
                position=0,
                name="fetch ☃",
                status=StepStatus.SUCCEEDED,
                input={"args": [1, "ü"], "kwargs": {"limit": None}},
                output={"rows": [1, 2, 3], "ok": True},
                attempts=2,
                executor_id="worker-ü",
                started_at=started_at,
                completed_at=completed_at,
            ),
            StepRecord(
                position=1,
                name="boom",
                status=StepStatus.FAILED,
                error=error,
                attempts=3,
                executor_id="worker-2",
                started_at=created_at,
                completed_at=completed_at,
            ),
            StepRecord(
                position=2,
                name="child",
                status=StepStatus.PENDING,
                input=["fan-out", 3],
                child_workflow_id="child-😀",
                started_at=started_at,
            ),
            StepRecord(position=7, name="after a gap", output=0, completed_at=completed_at),
        )
        snapshot = WorkflowSnapshot(
            id="wf-ünï-☃-😀",
            name="orders.process ☃",
            status=WorkflowStatus.RUNNING,
            input={"order": 17, "items": ["a", "ü"], "total": 12.5, "gift": False},
            output=["partial", 1],
            error=error,
            parent_id="parent-😀",
            executor_id="worker-ü",
            queue="queue-é",
            priority=-7,
            idempotency_key="key-✓",
            attempts=3,
            max_attempts=5,
            created_at=created_at,
            started_at=started_at,
            completed_at=completed_at,
            steps=steps,
        )
        before = now()
        info, created = await backend.create_workflow(snapshot)
        after = now()
        assert created is True
        assert type(info) is WorkflowInfo
        assert_between(info.updated_at, before, after)
        expected = dataclasses.replace(snapshot.header(), version=1, updated_at=info.updated_at)
        assert info == expected
        assert await backend.get_workflow(snapshot.id) == expected
        loaded = await backend.load_snapshot(snapshot.id)
        assert loaded.header() == expected
        assert loaded.steps == steps
        assert await backend.list_steps(snapshot.id) == list(steps)
        assert_aware(loaded.created_at, loaded.updated_at, loaded.started_at, loaded.completed_at)
        assert_aware(*(t for s in loaded.steps for t in (s.started_at, s.completed_at) if t))
        assert loaded.status is WorkflowStatus.RUNNING
        assert [s.status for s in loaded.steps] == [
            StepStatus.SUCCEEDED,
            StepStatus.FAILED,
            StepStatus.PENDING,
            StepStatus.SUCCEEDED,
        ]

    async def test_create_workflow_defaults_and_nones(self, backend: PersistentBackend) -> None:
        before = now()
        info, created = await backend.create_workflow(WorkflowSnapshot(id="plain", name="wf"))
        after = now()
        assert created is True
        assert info.id == "plain" and info.name == "wf"
        assert info.status is WorkflowStatus.PENDING
        assert info.input is None and info.output is None and info.error is None
        assert info.parent_id is None and info.executor_id is None
        assert info.idempotency_key is None and info.max_attempts is None
        assert info.started_at is None and info.completed_at is None
        assert (info.queue, info.priority, info.attempts, info.version) == ("default", 0, 0, 1)
        assert_between(info.created_at, before, after)
        assert_between(info.updated_at, before, after)
        loaded = await backend.load_snapshot("plain")
        assert loaded.steps == ()
        assert loaded.header() == info
        assert await backend.list_steps("plain") == []

    async def test_create_workflow_with_its_task_returns_what_is_stored(
        self, backend: PersistentBackend
    ) -> None:
        """A new workflow created with its task (an enqueue) returns the header a read
        returns, for every field it can be given; created again, the stored one unchanged."""
        await backend.create_workflow(WorkflowSnapshot(id="parent-☃", name="parent"))
        snapshot = WorkflowSnapshot(
            id="wf-tasked-😀",
            name="orders.tasked ☃",
            input={"args": [17, "ü", [1, 2]], "kwargs": {"gift": False, "total": 12.5}},
            parent_id="parent-☃",
            queue="queue-é",
            priority=-4,
            idempotency_key="key-tasked-✓",
            max_attempts=6,
            deadline=datetime(2031, 5, 6, 7, 8, 9, 123456, tzinfo=UTC),
            code_version="v-😀",
            trace_context='{"traceparent": "00-1-2-01"}',
            partition_key="tenant-ü",
        )
        task = TaskSpec(
            instance_id=snapshot.id,
            name=snapshot.name,
            queue="queue-é",
            priority=-4,
            delay=timedelta(seconds=30),
            partition_key="tenant-ü",
        )
        before = now()
        info, created = await backend.create_workflow(snapshot, task=task)
        after = now()
        assert created is True and type(info) is WorkflowInfo
        assert_between(info.created_at, before, after)
        assert info.updated_at == info.created_at
        assert info == await backend.get_workflow(snapshot.id)
        assert info == (await backend.load_snapshot(snapshot.id)).header()
        assert info == dataclasses.replace(
            snapshot.header(), version=1, created_at=info.created_at, updated_at=info.updated_at
        )
        again, created = await backend.create_workflow(
            dataclasses.replace(snapshot, input={"args": [0], "kwargs": {}}), task=task
        )
        assert created is False and again == info

    async def test_values_round_trip(self, backend: PersistentBackend) -> None:
        for i, value in enumerate(VALUES):
            instance_id = f"value-{i:02d}"
            await backend.create_workflow(
                WorkflowSnapshot(
                    id=instance_id,
                    name="values",
                    input=value,
                    output=value,
                    steps=(step(0, input=value, output=value),),
                ),
                task=TaskSpec(instance_id=instance_id, name="values"),
            )
            info = await backend.get_workflow(instance_id)
            assert info.input == value and info.output == value, f"value #{i} changed"
            assert type(info.input) is type(value)
            [stored] = await backend.list_steps(instance_id)
            assert stored.output == value and type(stored.output) is type(value)
            assert stored.input == value and type(stored.input) is type(value)

            assert await backend.claim_task(instance_id, W, "w1", LONG) is not None
            await backend.begin_execution(instance_id, "w1")
            await backend.record_step(instance_id, step(1, output=value), worker_id="w1")
            finished = await backend.finish_workflow(
                instance_id, worker_id="w1", status=WorkflowStatus.SUCCEEDED, output=value
            )
            assert finished.output == value and type(finished.output) is type(value)
            loaded = await backend.load_snapshot(instance_id)
            assert loaded.input == value and loaded.output == value
            assert [s.output for s in loaded.steps] == [value, value]

    async def test_error_info_round_trips(self, backend: PersistentBackend) -> None:
        try:
            raise KeyError("missing ☃", 3)
        except KeyError as exc:
            from_exception = ErrorInfo.from_exception(exc)
        errors = [
            ErrorInfo(type="builtins.RuntimeError", message=""),
            ErrorInfo(type="m.E", message="with empty args", args=()),
            ErrorInfo(type="m.E", message="only a traceback", traceback="tb ☃\n" * 200),
            ErrorInfo(type="m.E", message="unicode ✓ 😀\n\tmulti-line", args=("ü", [1, {}])),
            from_exception,
        ]
        assert from_exception.args == ("missing ☃", 3) and from_exception.traceback
        for i, error in enumerate(errors):
            instance_id = f"err-{i}"
            await running(backend, instance_id, "w1", error=error)
            assert (await backend.get_workflow(instance_id)).error == error
            await backend.record_step(
                instance_id, step(0, status=StepStatus.FAILED, error=error), worker_id="w1"
            )
            [stored] = await backend.list_steps(instance_id)
            assert stored.error == error and stored.output is None
            info = await backend.finish_workflow(
                instance_id, worker_id="w1", status=WorkflowStatus.FAILED, error=error
            )
            assert info.error == error and info.output is None
            assert (await backend.get_workflow(instance_id)).error == error

    async def test_not_found_errors(self, backend: PersistentBackend) -> None:
        await create(backend, "wf")
        calls: list[Call] = [
            lambda: backend.load_snapshot("ghost"),
            lambda: backend.get_workflow("ghost"),
            lambda: backend.list_steps("ghost"),
            lambda: backend.begin_execution("ghost", "w1"),
            lambda: backend.cancel_workflow("ghost"),
            lambda: backend.add_task(TaskSpec(instance_id="ghost", task_id="t", name="n")),
        ]
        for call in calls:
            with pytest.raises(WorkflowNotFoundError) as exc_info:
                await call()
            assert exc_info.value.workflow_id == "ghost"
        for instance_id, task_id in (("ghost", W), ("wf", "no-such-task")):
            task_calls: list[Call] = [
                partial(backend.claim_task, instance_id, task_id, "w1", LONG),
                partial(backend.extend_task_claim, instance_id, task_id, "w1", LONG),
                partial(backend.release_task_claim, instance_id, task_id, "w1"),
            ]
            for call in task_calls:
                with pytest.raises(TaskNotFoundError) as task_info:
                    await call()
                assert (task_info.value.instance_id, task_info.value.task_id) == (
                    instance_id,
                    task_id,
                )
        # nothing was created by the failed calls
        assert ids_of((await backend.list_snapshots()).items) == ["wf"]
        assert keys_of(await backend.find_available_tasks("w1", 10)) == [("wf", W)]

    async def test_delete_is_idempotent_and_cascades(self, backend: PersistentBackend) -> None:
        await running(backend, "wf", "w1", idempotency_key="key-1", steps=(step(0),))
        await backend.record_step("wf", step(1), worker_id="w1")
        assert await backend.add_task(TaskSpec(instance_id="wf", task_id="side", name="side"))
        other = await create(backend, "other", steps=(step(0),))

        assert await backend.delete_snapshot("wf") is True
        reads: list[Call] = [
            lambda: backend.get_workflow("wf"),
            lambda: backend.load_snapshot("wf"),
            lambda: backend.list_steps("wf"),
        ]
        for call in reads:
            with pytest.raises(WorkflowNotFoundError):
                await call()
        for task_id in (W, "side"):
            with pytest.raises(TaskNotFoundError):
                await backend.claim_task("wf", task_id, "w2", LONG)
        with pytest.raises(ClaimLostError):
            await backend.record_step("wf", step(2), worker_id="w1")
        assert await backend.delete_snapshot("wf") is False
        assert await backend.delete_snapshot("never-existed") is False

        # the other workflow is untouched
        assert await backend.get_workflow("other") == other
        assert len(await backend.list_steps("other")) == 1
        assert keys_of(await backend.find_available_tasks("w2", 10)) == [("other", W)]
        assert ids_of((await backend.list_snapshots()).items) == ["other"]

        # the id and the idempotency key are free again, with nothing left over
        info, created = await backend.create_workflow(
            WorkflowSnapshot(id="wf", name="again", idempotency_key="key-1")
        )
        assert created is True and info.version == 1 and info.name == "again"
        assert await backend.list_steps("wf") == []
        assert await backend.add_task(TaskSpec(instance_id="wf", task_id="side", name="s"))
        claim = await backend.claim_task("wf", "side", "w2", LONG)
        assert claim is not None and claim.attempts == 1

    async def test_list_snapshots_newest_first_with_filters(
        self, backend: PersistentBackend
    ) -> None:
        rows = [
            ("a0", "alpha", WorkflowStatus.PENDING, None, 0),
            ("a1", "alpha", WorkflowStatus.RUNNING, "p1", 1),
            ("b2", "beta", WorkflowStatus.SUCCEEDED, "p1", 2),
            ("b3", "beta", WorkflowStatus.FAILED, "p2", 3),
            ("a4", "alpha", WorkflowStatus.SUCCEEDED, "p2", 4),
            ("c5", "gamma", WorkflowStatus.CANCELLED, None, 5),
            ("c6", "gamma", WorkflowStatus.DEAD_LETTER, None, 6),
            ("tie-a", "tie", WorkflowStatus.PENDING, None, 7),
            ("tie-b", "tie", WorkflowStatus.PENDING, None, 7),
        ]
        # created out of order, with creation times in several time zones
        for instance_id, name, status, parent, minutes in reversed(rows):
            zone = (UTC, IST, PST)[minutes % 3]
            created_at = (T0 + timedelta(minutes=minutes)).astimezone(zone)
            await create(
                backend,
                instance_id,
                name=name,
                task=False,
                status=status,
                parent_id=parent,
                created_at=created_at,
            )

        async def listed(**filters: Any) -> list[str]:
            page = await backend.list_snapshots(**filters)
            assert page.next_cursor is None
            assert all(type(item) is WorkflowInfo for item in page.items)
            return [item.id for item in page]

        assert await listed() == [
            "tie-b",
            "tie-a",
            "c6",
            "c5",
            "a4",
            "b3",
            "b2",
            "a1",
            "a0",
        ]
        assert await listed(status="succeeded") == ["a4", "b2"]
        assert await listed(status=WorkflowStatus.SUCCEEDED) == ["a4", "b2"]
        assert await listed(status=["failed", WorkflowStatus.CANCELLED]) == ["c5", "b3"]
        assert await listed(status=(WorkflowStatus.PENDING,)) == ["tie-b", "tie-a", "a0"]
        assert await listed(status=[s for s in WorkflowStatus if s.is_terminal]) == [
            "c6",
            "c5",
            "a4",
            "b3",
            "b2",
        ]
        assert await listed(name="alpha") == ["a4", "a1", "a0"]
        assert await listed(parent_id="p1") == ["b2", "a1"]
        assert await listed(name="alpha", status="succeeded") == ["a4"]
        assert await listed(name="beta", parent_id="p2") == ["b3"]
        assert await listed(name="alpha", status=["running", "pending"], parent_id="p1") == ["a1"]
        assert await listed(name="nope") == []
        assert await listed(parent_id="nope") == []
        assert await listed(name="gamma", status="running") == []
        infos = (await backend.list_snapshots(name="beta")).items
        assert infos == [await backend.get_workflow("b3"), await backend.get_workflow("b2")]

    async def test_list_snapshots_keyset_pagination(self, backend: PersistentBackend) -> None:
        count = 25
        for i in range(count):
            await create(
                backend,
                f"wf-{i:02d}",
                task=False,
                # groups of three share a creation time: ties are broken by id
                created_at=T0 + timedelta(seconds=i // 3),
                status=WorkflowStatus.SUCCEEDED if i % 3 == 0 else WorkflowStatus.PENDING,
            )
        everything = [f"wf-{i:02d}" for i in reversed(range(count))]

        async def paginate(limit: int, **filters: Any) -> list[list[str]]:
            pages: list[list[str]] = []
            cursor: str | None = None
            while True:
                page = await backend.list_snapshots(limit=limit, cursor=cursor, **filters)
                pages.append([item.id for item in page])
                assert len(page) <= limit
                if page.next_cursor is None:
                    return pages
                assert len(page) == limit, "a page before the last one must be full"
                cursor = page.next_cursor
                assert len(pages) <= count + 1, "pagination does not end"

        for limit in (1, 4, 5, 24, 25, 26, 100):
            pages = await paginate(limit)
            flat = [i for page in pages for i in page]
            assert flat == everything, f"limit={limit}"
            assert len(pages) == max(1, -(-count // limit)), f"limit={limit}: {pages}"

        succeeded = [i for i in everything if int(i[3:]) % 3 == 0]
        pages = await paginate(2, status="succeeded")
        assert [i for page in pages for i in page] == succeeded
        assert len(pages) == 5

        # pages are stable under concurrent inserts
        first = await backend.list_snapshots(limit=10)
        assert [i.id for i in first] == everything[:10]
        await create(backend, "newest", task=False, created_at=T0 + timedelta(days=1))
        await create(backend, "oldest", task=False, created_at=T0 - timedelta(days=1))
        rest: list[str] = []
        cursor = first.next_cursor
        while cursor is not None:
            page = await backend.list_snapshots(limit=10, cursor=cursor)
            rest.extend(item.id for item in page)
            cursor = page.next_cursor
        assert rest == [*everything[10:], "oldest"]

    async def test_list_snapshots_invalid_arguments(self, backend: PersistentBackend) -> None:
        await create(backend, "wf", task=False)
        for kwargs in (
            {"limit": 0},
            {"limit": -5},
            {"status": "bogus"},
            {"status": ["pending", "bogus"]},
            {"cursor": "not a cursor!"},
            {"cursor": "%%%"},
            {"cursor": ""},
            {"cursor": "AAAA"},
        ):
            with pytest.raises(InvalidArgumentError):
                await backend.list_snapshots(**kwargs)
        with pytest.raises(ValueError, match="bogus"):
            await backend.list_snapshots(status="bogus")
