"""``finish_execution``: ``finish_workflow`` for a caller that does not use the stored header.

What must hold: the same write, fence and refusal as ``finish_workflow``; the SQL backend's
one-statement paths (PostgreSQL's direct path, SQLite's) decode nothing of the row they return;
a ``finish_workflow`` replaced on the instance or overridden is still called; and a worker
records how its attempts ended through it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from support import claimed_backend

import durable
from durable.backends import SQLAlchemyBackend
from durable.errors import ClaimLostError
from durable.models import WorkflowInfo, WorkflowStatus

WORKER = "w1"


@pytest.fixture
async def claimed(db_url: str) -> AsyncIterator[SQLAlchemyBackend]:
    """A started backend (SQLite, PostgreSQL) holding the claim on workflow "wf", started."""
    async with claimed_backend(db_url, WORKER, input=[1]) as backend:
        await backend.begin_execution("wf", WORKER)
        yield backend


async def test_writes_the_outcome_without_reading_the_header(
    claimed: SQLAlchemyBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    decoded: list[str] = []
    loads = claimed.serializer.loads

    def counting(text: str) -> Any:
        decoded.append(text)
        return loads(text)

    monkeypatch.setattr(claimed.serializer, "loads", counting)
    await claimed.finish_execution(
        "wf", worker_id=WORKER, status=WorkflowStatus.SUCCEEDED, output={"ok": 1}
    )
    assert decoded == []  # neither the input nor the output read back
    monkeypatch.undo()
    info = await claimed.get_workflow("wf")
    assert (info.status, info.output, info.input) == (WorkflowStatus.SUCCEEDED, {"ok": 1}, [1])
    assert info.completed_at is not None
    with pytest.raises(ClaimLostError):  # the task went with the finish: fenced as before
        await claimed.finish_execution("wf", worker_id=WORKER, status=WorkflowStatus.FAILED)


async def test_refused_without_the_lease(claimed: SQLAlchemyBackend) -> None:
    with pytest.raises(ClaimLostError) as lost:
        await claimed.finish_execution("wf", worker_id="intruder", status=WorkflowStatus.FAILED)
    assert lost.value.holder == WORKER
    assert (await claimed.get_workflow("wf")).status is WorkflowStatus.RUNNING


async def test_a_replaced_finish_workflow_is_called(claimed: SQLAlchemyBackend) -> None:
    calls: list[str] = []
    finish = claimed.finish_workflow

    async def wrapped(instance_id: str, **outcome: Any) -> WorkflowInfo:
        calls.append(instance_id)
        return await finish(instance_id, **outcome)

    claimed.finish_workflow = wrapped  # type: ignore[method-assign]
    await claimed.finish_execution("wf", worker_id=WORKER, status=WorkflowStatus.SUCCEEDED)
    assert calls == ["wf"]
    assert (await claimed.get_workflow("wf")).status is WorkflowStatus.SUCCEEDED


class _Counting(durable.InMemoryBackend):
    """Counts the finishes that read the header back and those that do not."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    async def finish_workflow(self, instance_id: str, **outcome: Any) -> WorkflowInfo:
        self.calls.append("finish_workflow")
        return await super().finish_workflow(instance_id, **outcome)

    async def finish_execution(self, instance_id: str, **outcome: Any) -> None:
        self.calls.append("finish_execution")
        await super().finish_execution(instance_id, **outcome)


async def test_a_worker_ends_its_attempts_through_finish_execution() -> None:
    registry = durable.Registry()

    @durable.workflow(name="ends", registry=registry)
    async def ends(fail: bool) -> str:
        if fail:
            raise durable.NonRetryableError("no")
        return "done"

    backend = _Counting()
    async with durable.Runtime(backend, registry=registry) as runtime:
        ok = await runtime.enqueue(ends, False)
        assert ok is not None
        await runtime.start_worker(concurrency=1, poll_interval=0.05)
        assert await runtime.result(ok, timeout=10) == "done"
        failed = await runtime.enqueue(ends, True)
        assert failed is not None
        with pytest.raises(durable.NonRetryableError):
            await runtime.result(failed, timeout=10)
    # the success, then the failure (no retries): each through finish_execution, whose default
    # calls finish_workflow
    assert backend.calls == ["finish_execution", "finish_workflow"] * 2
