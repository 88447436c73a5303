"""Fork and resume, on every backend, through a real runtime and worker.

* ``client.fork(id, from_step=N)`` starts a new execution whose first N steps replay the
  original's recorded outputs (steps, a child workflow, an event, a sleep, a message received)
  and whose steps from N on run for real: the way to run a workflow again after fixing a bug in
  a later step; bad positions and ids are refused with errors naming them;
* ``client.resume(id)`` continues a dead-lettered or cancelled execution from its history: its
  completed steps are not run again.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from datetime import timedelta
from typing import TypeVar

import pytest

import durable
import durable.backends
from durable.models import StepStatus, WorkflowStatus

T = TypeVar("T")
WAIT = 60.0  # an upper bound, never reached when green
REG = durable.Registry()
CALLS: Counter[str] = Counter()
BUGGY = {"notify": True}


@pytest.fixture(autouse=True)
def _reset() -> Iterator[None]:
    CALLS.clear()
    BUGGY["notify"] = True
    yield


@durable.step(name="tests.fork.charge")
async def charge(order: int) -> str:
    CALLS["charge"] += 1
    return f"receipt-{order}"


@durable.step(name="tests.fork.pack")
async def pack(order: int) -> int:
    CALLS["pack"] += 1
    return order * 10


@durable.workflow(name="tests.fork.ship.v1", registry=REG)
async def ship(order: int) -> int:
    return await pack(order)


@durable.step(name="tests.fork.notify")
async def notify(receipt: str, parcel: int, note: str) -> str:
    CALLS["notify"] += 1
    if BUGGY["notify"]:
        raise ValueError("a bug in notify")
    return f"{receipt}/{parcel}/{note}"


@durable.workflow(name="tests.fork.order.v1", registry=REG, max_attempts=1)
async def order(n: int) -> str:
    receipt = await charge(n)  # 0
    parcel = await ship(n)  # 1: a child workflow
    await durable.set_event("stage", "shipped")  # 2
    await durable.sleep(0.01)  # 3
    note = await durable.recv("note")  # 4
    return await notify(receipt, parcel, note)  # 5


@durable.workflow(name="tests.fork.gated.v1", registry=REG)
async def gated(n: int) -> str:
    receipt = await charge(n)
    go = await durable.recv("go")
    return f"{receipt}:{go}:{await pack(n)}"


async def until(check: Callable[[], Awaitable[T]], what: str) -> T:
    deadline = time.monotonic() + WAIT
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def runtime(url: str) -> durable.Runtime:
    return durable.Runtime(
        durable.connect(url), executor_id="exec-1", registry=REG, recover=False, poll_interval=0.02
    )


async def failed_order(rt: durable.Runtime) -> str:
    """An order whose last step failed (dead-lettered: one attempt allowed)."""
    workflow_id = await rt.client.enqueue(order, 7)
    await rt.client.send(workflow_id, "note", "fragile")
    with pytest.raises(durable.WorkflowDeadLetteredError):
        await rt.client.result(workflow_id, timeout=WAIT)
    return workflow_id


async def test_a_fork_replays_the_steps_before_its_position_and_runs_the_rest(
    backend_url: str,
) -> None:
    async with runtime(backend_url) as rt:
        await rt.start_worker(concurrency=2, poll_interval=0.02)
        client = rt.client
        original = await failed_order(rt)
        before = await client.list_steps(original)
        assert [s.position for s in before] == [0, 1, 2, 3, 4, 5]
        assert before[5].status is StepStatus.FAILED
        assert CALLS == {"charge": 1, "pack": 1, "notify": 1}

        BUGGY["notify"] = False  # the bug is fixed
        fork = await client.fork(original, from_step=5, new_workflow_id="fork-1")
        assert fork == "fork-1"
        assert await client.result(fork, timeout=WAIT) == "receipt-7/70/fragile"
        assert CALLS == {"charge": 1, "pack": 1, "notify": 2}  # only notify ran again
        forked = await client.list_steps(fork)
        assert [(s.position, s.name, s.output) for s in forked[:5]] == [
            (s.position, s.name, s.output) for s in before[:5]
        ]
        assert forked[1].child_workflow_id == before[1].child_workflow_id  # the original child
        assert forked[5].status is StepStatus.SUCCEEDED
        assert await client.get_event(fork, "stage", timeout=1) == "shipped"
        info = await client.get_workflow(fork)
        assert info.name == order.name and info.input == {"args": [7], "kwargs": {}}
        original_info = await client.get_workflow(original)
        assert original_info.status is WorkflowStatus.DEAD_LETTER  # unchanged
        assert await client.list_steps(original) == before


async def test_a_fork_from_an_earlier_step_runs_it_and_waits_for_new_messages(
    backend_url: str,
) -> None:
    async with runtime(backend_url) as rt:
        await rt.start_worker(concurrency=2, poll_interval=0.02)
        client = rt.client
        original = await failed_order(rt)
        BUGGY["notify"] = False
        fork = await rt.fork(original, from_step=1)  # the runtime delegates to its client
        # the child runs again (a new child, of the fork); the receive at 4 waits for a message
        await until(
            lambda: _status_is(client, fork, WorkflowStatus.PENDING, at_least_steps=4),
            "the fork to wait for its message",
        )
        await client.send(fork, "note", "new")
        assert await client.result(fork, timeout=WAIT) == "receipt-7/70/new"
        assert CALLS == {"charge": 1, "pack": 2, "notify": 2}
        child = (await client.list_steps(fork))[1].child_workflow_id
        assert child is not None and child.startswith(fork)


async def _status_is(
    client: durable.Client, workflow_id: str, status: WorkflowStatus, *, at_least_steps: int
) -> bool:
    info = await client.get_workflow(workflow_id)
    return info.status is status and len(await client.list_steps(workflow_id)) >= at_least_steps


async def test_bad_forks_are_refused_naming_what_was_wrong(backend_url: str) -> None:
    async with runtime(backend_url) as rt:
        await rt.start_worker(concurrency=2, poll_interval=0.02)
        client = rt.client
        original = await failed_order(rt)
        with pytest.raises(durable.InvalidArgumentError, match=r"from_step=7 .* between 0 and 6"):
            await client.fork(original, from_step=7)
        with pytest.raises(durable.InvalidArgumentError, match="from_step"):
            await client.fork(original, from_step=-1)
        with pytest.raises(durable.InvalidArgumentError, match="from_step"):
            await client.fork(original, from_step="2")  # type: ignore[arg-type]
        with pytest.raises(durable.WorkflowNotFoundError) as missing:
            await client.fork("no-such-workflow", from_step=0)
        assert missing.value.workflow_id == "no-such-workflow"
        with pytest.raises(durable.WorkflowAlreadyExistsError):
            await client.fork(original, from_step=0, new_workflow_id=original)
        page = await client.list_workflows(name=order.name)
        assert [i.id for i in page.items] == [original]  # nothing was created


async def test_resume_continues_a_dead_lettered_execution_from_its_history(
    backend_url: str,
) -> None:
    async with runtime(backend_url) as rt:
        await rt.start_worker(concurrency=2, poll_interval=0.02)
        client = rt.client
        original = await failed_order(rt)
        BUGGY["notify"] = False
        info = await rt.resume(original)  # the runtime delegates to its client
        assert info.status is WorkflowStatus.PENDING
        assert await client.result(original, timeout=WAIT) == "receipt-7/70/fragile"
        assert CALLS == {"charge": 1, "pack": 1, "notify": 2}


async def test_resume_continues_a_cancelled_execution_from_its_history(
    backend_url: str,
) -> None:
    async with runtime(backend_url) as rt:
        await rt.start_worker(concurrency=2, poll_interval=0.02)
        client = rt.client
        workflow_id = await client.enqueue(gated, 3)
        await until(
            lambda: _status_is(client, workflow_id, WorkflowStatus.PENDING, at_least_steps=2),
            "the workflow to wait for its message",
        )
        await client.cancel(workflow_id)
        with pytest.raises(durable.WorkflowCancelledError):
            await client.result(workflow_id, timeout=WAIT)
        info = await client.resume(workflow_id)
        assert info.status is WorkflowStatus.PENDING
        await client.send(workflow_id, "go", "yes")
        assert await client.result(workflow_id, timeout=WAIT) == "receipt-3:yes:30"
        assert CALLS == {"charge": 1, "pack": 1}  # charge was not run again
        with pytest.raises(durable.InvalidArgumentError):
            await client.resume(workflow_id)  # it succeeded: nothing to resume


@durable.workflow(name="tests.fork.two.v1", registry=REG)
async def two(n: int) -> int:
    return await pack(n) + await pack(n + 1)


@pytest.mark.postgres
async def test_retention_does_not_delete_a_forks_source_under_it(pg_url: str) -> None:
    """A fork read its source's history, then copied the steps: retention deleting the source
    in between (it skips locked rows, and nothing was locked) left a fork without steps, which
    ran again the steps it was to replay. The fork now holds the source's row until it commits.
    A trigger holds the fork between its read and its copy."""
    async with runtime(pg_url) as rt:
        assert await rt.run(two, 1, workflow_id="src") == 30
        backend = rt.client.backend
        assert isinstance(backend, durable.backends.SQLAlchemyBackend)
        async with backend.engine.begin() as conn:
            await conn.exec_driver_sql(
                "CREATE FUNCTION durable_test_hold() RETURNS trigger AS $$ BEGIN"
                " IF NEW.id = 'fork-held' THEN PERFORM pg_sleep(1); END IF; RETURN NEW; END"
                " $$ LANGUAGE plpgsql"
            )
            await conn.exec_driver_sql(
                "CREATE TRIGGER durable_test_hold BEFORE INSERT ON durable_workflows"
                " FOR EACH ROW EXECUTE FUNCTION durable_test_hold()"
            )
        forking = asyncio.ensure_future(
            rt.client.fork("src", from_step=2, new_workflow_id="fork-held")
        )
        await asyncio.sleep(0.4)  # the fork has read its source and waits in the trigger
        later = await backend.now() + timedelta(days=1)
        gc = durable.connect(pg_url)
        try:
            deleted = await gc.delete_finished_workflows(later, names=[two.name])
        finally:
            await gc.close()
        assert await forking == "fork-held"
        assert deleted == 0  # skipped: the fork held the row
        assert [s.position for s in await rt.client.list_steps("fork-held")] == [0, 1]
