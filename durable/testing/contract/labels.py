"""Labels and counts: labels stored with a new workflow (merged over its parent's), read back,
searched (combined with the other filters and keyset pages), refused when malformed, deleted
with their workflow; workflows counted by status exactly, with the listing's filters; queue
depths."""

from __future__ import annotations

from datetime import timedelta

import pytest

from durable.backends.base import PersistentBackend
from durable.errors import InvalidArgumentError
from durable.models import TaskSpec, WorkflowSnapshot, WorkflowStatus
from durable.testing.contract._support import ContractBase, create, now, step
from durable.validation import MAX_LABELS


class LabelContract(ContractBase):
    """:meth:`~durable.backends.PersistentBackend.get_labels`, ``list_snapshots(labels=...)``,
    :meth:`~durable.backends.PersistentBackend.count_workflows`,
    :meth:`~durable.backends.PersistentBackend.queue_depths`, and labels written by
    ``create_workflow`` / ``create_workflows``."""

    async def test_labels_round_trip_and_a_workflow_without_has_none(
        self, backend: PersistentBackend
    ) -> None:
        labels = {"customer": "c-42", "region": "eu-west/1", "empty": "", "uni": "caf\u00e9 \u2603"}
        await create(backend, "a", labels=labels)
        await create(backend, "b")
        found = await backend.get_labels(["a", "b", "ghost"])
        assert found == {"a": labels, "b": {}}
        assert await backend.get_labels([]) == {}
        # a snapshot read from the store carries none (labels are read with get_labels)
        assert (await backend.load_snapshot("a")).labels == {}

    async def test_an_existing_workflow_keeps_its_labels(self, backend: PersistentBackend) -> None:
        await create(backend, "a", labels={"k": "first"})
        _, created = await backend.create_workflow(
            WorkflowSnapshot(id="a", name="wf", labels={"k": "second", "other": "x"})
        )
        assert not created
        assert await backend.get_labels(["a"]) == {"a": {"k": "first"}}

    async def test_children_inherit_their_parents_labels_their_own_winning(
        self, backend: PersistentBackend
    ) -> None:
        await create(backend, "parent", labels={"customer": "c-42", "tier": "gold"})
        await create(backend, "child", parent_id="parent", labels={"tier": "silver", "step": "1"})
        await create(backend, "grandchild", parent_id="child")
        await create(backend, "orphan", parent_id="not-stored", labels={"a": "b"})
        # with its task (PostgreSQL: one statement; SQLite: with the writes pending at the same
        # moment), and again (found: nothing written)
        for _ in range(2):
            await backend.create_workflow(
                WorkflowSnapshot(id="tasked", name="wf", parent_id="parent"),
                task=TaskSpec(instance_id="tasked", name="wf"),
            )
        batch = [
            (WorkflowSnapshot(id=f"batch-{i}", name="wf", parent_id="parent"), None)
            for i in range(2)
        ]
        batch.append((WorkflowSnapshot(id="batch-own", name="wf", labels={"own": "y"}), None))
        await backend.create_workflows(batch)
        found = await backend.get_labels(
            ["child", "grandchild", "orphan", "batch-0", "batch-1", "batch-own", "tasked"]
        )
        assert found == {
            "tasked": {"customer": "c-42", "tier": "gold"},
            "child": {"customer": "c-42", "tier": "silver", "step": "1"},
            "grandchild": {"customer": "c-42", "tier": "silver", "step": "1"},
            "orphan": {"a": "b"},
            "batch-0": {"customer": "c-42", "tier": "gold"},
            "batch-1": {"customer": "c-42", "tier": "gold"},
            "batch-own": {"own": "y"},
        }

    @pytest.mark.parametrize(
        ("labels", "named"),
        [
            ({"": "v"}, "label key ''"),
            ({"has space": "v"}, "label key 'has space'"),
            ({"k" * 65: "v"}, "label key"),
            ({"k": 42}, "labels['k'] must be a str"),
            ({"k": "v" * 256}, "labels['k'] must be at most 255"),
            ({"k": "nul\x00"}, "labels['k']"),
            ({f"k{i}": "v" for i in range(MAX_LABELS + 1)}, f"at most {MAX_LABELS} labels"),
        ],
    )
    async def test_malformed_labels_are_refused_naming_them_and_nothing_is_written(
        self, backend: PersistentBackend, labels: dict[str, object], named: str
    ) -> None:
        task = TaskSpec(instance_id="wf", name="wf")
        with pytest.raises(
            InvalidArgumentError, match=named.replace("[", r"\[").replace("]", r"\]")
        ):
            await backend.create_workflow(
                WorkflowSnapshot(id="wf", name="wf", labels=labels),  # type: ignore[arg-type]
                task=task,
            )
        assert await backend.get_labels(["wf"]) == {}
        with pytest.raises(InvalidArgumentError, match=r"inputs\[1\]"):
            await backend.create_workflows(
                [
                    (WorkflowSnapshot(id="ok", name="wf"), None),
                    (WorkflowSnapshot(id="bad", name="wf", labels=labels), None),  # type: ignore[arg-type]
                ]
            )
        written = await backend.get_labels(["ok", "bad"])
        if type(backend).create_workflows is PersistentBackend.create_workflows:
            assert "bad" not in written  # row by row: "ok" went in, "bad" did not
        else:
            assert written == {}

    async def test_too_many_labels_once_inherited_are_refused(
        self, backend: PersistentBackend
    ) -> None:
        await create(backend, "parent", labels={f"p{i}": "v" for i in range(MAX_LABELS)})
        with pytest.raises(InvalidArgumentError, match=f"at most {MAX_LABELS} labels"):
            await create(backend, "child", parent_id="parent", labels={"own": "v"})
        assert await backend.get_labels(["child"]) == {}
        # overriding an inherited key adds none
        await create(backend, "ok", parent_id="parent", labels={"p0": "own"})
        assert (await backend.get_labels(["ok"]))["ok"]["p0"] == "own"

    async def test_listing_by_labels_combines_with_filters_and_pages(
        self, backend: PersistentBackend
    ) -> None:
        base = now() - timedelta(hours=1)
        for i in range(7):
            labels = {"customer": "c-42" if i % 2 == 0 else "c-7"}
            if i < 4:
                labels["tier"] = "gold"
            await create(
                backend,
                f"wf-{i}",
                name="pay" if i != 6 else "mail",
                labels=labels,
                created_at=base + timedelta(seconds=i),
                task=False,
            )
        await create(backend, "plain", created_at=base, task=False)

        async def ids(**filters: object) -> list[str]:
            seen: list[str] = []
            cursor = None
            while True:
                page = await backend.list_snapshots(limit=2, cursor=cursor, **filters)  # type: ignore[arg-type]
                seen += [w.id for w in page.items]
                cursor = page.next_cursor
                if cursor is None:
                    return seen

        assert await ids(labels={"customer": "c-42"}) == ["wf-6", "wf-4", "wf-2", "wf-0"]
        assert await ids(labels={"customer": "c-42", "tier": "gold"}) == ["wf-2", "wf-0"]
        assert await ids(labels={"customer": "c-42"}, name="pay") == ["wf-4", "wf-2", "wf-0"]
        assert await ids(labels={"customer": "c-42"}, status="succeeded") == []
        assert await ids(labels={"customer": "nobody"}) == []
        assert await ids(labels={"tier": ""}) == []  # a value, not "any value"
        assert len(await ids(labels={})) == 8  # an empty mapping filters nothing
        with pytest.raises(InvalidArgumentError, match="label key"):
            await backend.list_snapshots(labels={"bad key": "x"})

    async def test_labels_go_with_their_workflow(self, backend: PersistentBackend) -> None:
        await create(backend, "gone", labels={"customer": "c-42"}, task=False)
        assert await backend.delete_snapshot("gone")
        assert await backend.get_labels(["gone"]) == {}
        assert (await backend.list_snapshots(labels={"customer": "c-42"})).items == []
        # a new workflow under the same id starts without them
        await create(backend, "gone", task=False)
        assert await backend.get_labels(["gone"]) == {"gone": {}}
        # retention deletes them too
        at = now() - timedelta(days=40)
        await create(
            backend,
            "old",
            labels={"customer": "c-42"},
            task=False,
            status=WorkflowStatus.SUCCEEDED,
            completed_at=at,
            steps=(step(0),),
        )
        assert await backend.delete_finished_workflows(now() - timedelta(days=1)) == 1
        assert (await backend.list_snapshots(labels={"customer": "c-42"})).items == []
        assert await backend.count_workflows(labels={"customer": "c-42"}) == dict.fromkeys(
            WorkflowStatus, 0
        )

    async def test_count_workflows_counts_by_status_with_the_listing_filters(
        self, backend: PersistentBackend
    ) -> None:
        assert await backend.count_workflows() == dict.fromkeys(WorkflowStatus, 0)
        statuses = [WorkflowStatus.PENDING] * 3 + [WorkflowStatus.SUCCEEDED] * 2
        statuses += [WorkflowStatus.FAILED, WorkflowStatus.CANCELLED]
        for i, status in enumerate(statuses):
            await create(
                backend,
                f"wf-{i}",
                name="pay" if i % 2 == 0 else "mail",
                status=status,
                labels={"customer": "c-42"} if i < 4 else {},
                parent_id="p" if i == 0 else None,
                task=False,
            )
        counts = await backend.count_workflows()
        assert set(counts) == set(WorkflowStatus)
        assert counts[WorkflowStatus.PENDING] == 3
        assert counts[WorkflowStatus.SUCCEEDED] == 2
        assert counts[WorkflowStatus.FAILED] == 1
        assert counts[WorkflowStatus.CANCELLED] == 1
        assert counts[WorkflowStatus.RUNNING] == 0
        assert sum(counts.values()) == len(statuses)
        by_name = await backend.count_workflows(name="pay")
        assert sum(by_name.values()) == 4
        labelled = await backend.count_workflows(labels={"customer": "c-42"})
        assert labelled[WorkflowStatus.PENDING] == 3
        assert labelled[WorkflowStatus.SUCCEEDED] == 1
        some = await backend.count_workflows(status=["pending", WorkflowStatus.FAILED])
        assert some[WorkflowStatus.PENDING] == 3 and some[WorkflowStatus.FAILED] == 1
        assert some[WorkflowStatus.SUCCEEDED] == 0
        assert sum((await backend.count_workflows(parent_id="p")).values()) == 1
        # the same as the listing, filter for filter
        listed = await backend.list_snapshots(name="pay", labels={"customer": "c-42"}, limit=100)
        counted = await backend.count_workflows(name="pay", labels={"customer": "c-42"})
        assert sum(counted.values()) == len(listed.items)
        with pytest.raises(InvalidArgumentError, match="nonsense"):
            await backend.count_workflows(status="nonsense")

    async def test_queue_depths_count_pending_and_running_per_queue(
        self, backend: PersistentBackend
    ) -> None:
        assert await backend.queue_depths() == []
        base = now() - timedelta(hours=1)
        rows = [
            ("a-1", "alpha", WorkflowStatus.PENDING, 5),
            ("a-2", "alpha", WorkflowStatus.PENDING, 2),
            ("a-3", "alpha", WorkflowStatus.RUNNING, 1),
            ("b-1", "beta", WorkflowStatus.RUNNING, 0),
            ("c-1", "gamma", WorkflowStatus.SUCCEEDED, 0),
            ("c-2", "gamma", WorkflowStatus.FAILED, 0),
        ]
        for instance_id, queue, status, minutes in rows:
            await create(
                backend,
                instance_id,
                queue=queue,
                status=status,
                created_at=base + timedelta(minutes=minutes),
                task=False,
            )
        depths = await backend.queue_depths()
        assert [(d.queue, d.pending, d.running) for d in depths] == [
            ("alpha", 2, 1),
            ("beta", 0, 1),
        ]
        assert depths[0].oldest_pending == base + timedelta(minutes=2)
        assert depths[1].oldest_pending is None
