"""Batches: many workflows created at once (``create_workflows``), per row as one
``create_workflow``, all or nothing."""

from __future__ import annotations

from datetime import datetime

import pytest

from durable.backends.base import PersistentBackend
from durable.errors import InvalidArgumentError, SerializationError, WorkflowNotFoundError
from durable.models import TaskSpec, WorkflowSnapshot
from durable.testing.contract._support import ContractBase, Unserializable


def _row(
    workflow_id: str,
    key: str | None = None,
    *,
    name: str = "batch.v1",
    task: bool = True,
    value: object = 1,
    run_after: datetime | None = None,
) -> tuple[WorkflowSnapshot, TaskSpec | None]:
    snapshot = WorkflowSnapshot(
        id=workflow_id,
        name=name,
        input={"args": [value], "kwargs": {}},
        idempotency_key=key,
    )
    spec = TaskSpec(instance_id=workflow_id, name=name, run_after=run_after) if task else None
    return snapshot, spec


class BatchContract(ContractBase):
    """Batches: ``create_workflows`` behaves per row as ``create_workflow``; a backend that
    overrides it (as it should: one transaction) writes nothing of a batch it refuses."""

    async def test_rows_behave_as_single_creates_in_order(self, backend: PersistentBackend) -> None:
        results = await backend.create_workflows(
            [_row("a", "ka"), _row("b", task=False), _row("c", "ka"), _row("a")]
        )
        # "c" has a's key and the last row a's id: both are a, not created again
        assert [(info.id, created) for info, created in results] == [
            ("a", True),
            ("b", True),
            ("a", False),
            ("a", False),
        ]
        assert all(info.version == 1 for info, _ in results)
        with pytest.raises(WorkflowNotFoundError):
            await backend.get_workflow("c")
        again = await backend.create_workflows([_row("b"), _row("d", "ka")])
        assert [(info.id, created) for info, created in again] == [("b", False), ("a", False)]
        tasks = await backend.find_available_tasks("w", 10)
        assert sorted(t.instance_id for t in tasks) == ["a"]  # b was created without a task
        assert (await backend.load_snapshot("a")).input == {"args": [1], "kwargs": {}}
        assert await backend.create_workflows([]) == []

    @pytest.mark.parametrize("fault", ["unserializable", "naive run_after", "another name"])
    async def test_a_refused_row_refuses_the_batch_and_writes_nothing(
        self, backend: PersistentBackend, fault: str
    ) -> None:
        if type(backend).create_workflows is PersistentBackend.create_workflows:
            pytest.skip("the default create_workflows (row by row) is not all or nothing")
        await backend.create_workflows([_row("held", "k-held", name="other.v1")])
        bad = {
            "unserializable": _row("bad", value=Unserializable()),
            "naive run_after": _row("bad", run_after=datetime(2030, 1, 1)),
            "another name": _row("bad", "k-held"),
        }[fault]
        expected: type[Exception] = (
            SerializationError if fault == "unserializable" else InvalidArgumentError
        )
        with pytest.raises(expected, match=r"inputs\[2\]"):
            await backend.create_workflows([_row("ok-1"), _row("ok-2"), bad, _row("ok-3")])
        for workflow_id in ("ok-1", "ok-2", "bad", "ok-3"):
            with pytest.raises(WorkflowNotFoundError):
                await backend.get_workflow(workflow_id)
        assert [t.instance_id for t in await backend.find_available_tasks("w", 10)] == ["held"]
