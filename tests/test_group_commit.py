"""Group commit (durable.backends.sql.batch): step records pending at the same moment share one
statement (PostgreSQL) or one transaction (SQLite), and each still stands or falls alone."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from durable.backends.sql import SQLAlchemyBackend, feed
from durable.backends.sql.batch import GroupCommit
from durable.errors import (
    BackendError,
    ClaimLostError,
    StepAlreadyRecordedError,
    WorkflowNotFoundError,
)
from durable.models import StepRecord, TaskSpec, WorkflowSnapshot, WorkflowStatus
from durable.testing.contract._support import LONG, W, create, step

SUCCEEDED = WorkflowStatus.SUCCEEDED


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def url(request: pytest.FixtureRequest) -> str:
    return str(
        request.getfixturevalue({"sqlite": "sqlite_url", "postgres": "pg_url"}[request.param])
    )


def group_of(backend: SQLAlchemyBackend) -> GroupCommit[Any, Any]:
    group = backend._record_group or getattr(backend._runner, "_group", None)
    assert group is not None
    return group


async def claimed(backend: SQLAlchemyBackend, ids: list[str], worker: str = "w1") -> None:
    for wid in ids:
        await create(backend, wid)
        assert await backend.claim_task(wid, W, worker, LONG) is not None


async def test_concurrent_records_share_a_flush_and_all_land(url: str) -> None:
    async with SQLAlchemyBackend(url) as backend:
        ids = [f"wf{i}" for i in range(12)]
        await claimed(backend, ids)
        group = group_of(backend)
        before = group.flushes
        await asyncio.gather(
            *(backend.record_step(wid, step(0, output=wid), worker_id="w1") for wid in ids)
        )
        assert group.flushes - before < len(ids)  # some records shared a flush
        for wid in ids:
            assert [(s.position, s.output) for s in await backend.list_steps(wid)] == [(0, wid)]


async def test_a_lost_lease_fails_that_caller_alone(url: str) -> None:
    async with SQLAlchemyBackend(url) as backend:
        ids = [f"wf{i}" for i in range(6)]
        await claimed(backend, ids)
        await create(backend, "other")
        assert await backend.claim_task("other", W, "w2", LONG) is not None
        await backend.record_step("wf0", step(0), worker_id="w1")
        results = await asyncio.gather(
            *(backend.record_step(wid, step(1), worker_id="w1") for wid in ids),
            backend.record_step("other", step(0), worker_id="w1"),  # held by w2
            backend.record_step("wf0", step(0, output="again"), worker_id="w1"),  # recorded
            return_exceptions=True,
        )
        assert results[: len(ids)] == [None] * len(ids)
        assert isinstance(results[len(ids)], ClaimLostError)
        assert results[len(ids)].holder == "w2"
        assert isinstance(results[len(ids) + 1], StepAlreadyRecordedError)
        assert await backend.list_steps("other") == []
        assert [s.position for s in await backend.list_steps("wf0")] == [0, 1]
        for wid in ids[1:]:
            assert [s.position for s in await backend.list_steps(wid)] == [1]


async def test_a_row_the_database_rejects_fails_alone(url: str) -> None:
    async with SQLAlchemyBackend(url) as backend:
        ids = [f"wf{i}" for i in range(5)]
        await claimed(backend, ids)
        bad = StepRecord(position=0, name=None)  # type: ignore[arg-type]  # NOT NULL
        results = await asyncio.gather(
            *(backend.record_step(wid, step(0), worker_id="w1") for wid in ids[1:]),
            backend.record_step(ids[0], bad, worker_id="w1"),
            return_exceptions=True,
        )
        assert results[:-1] == [None] * (len(ids) - 1)
        assert isinstance(results[-1], BackendError)
        assert await backend.list_steps(ids[0]) == []
        for wid in ids[1:]:
            assert len(await backend.list_steps(wid)) == 1


async def test_a_failed_flush_fails_every_caller_of_its_batch() -> None:
    calls: list[list[int]] = []

    async def flush(items: list[int]) -> list[int | BaseException]:
        calls.append(items)
        if 3 in items:
            raise OSError("gone")
        await asyncio.sleep(0)
        return [i * 10 for i in items]

    group: GroupCommit[int, int] = GroupCommit(flush)
    first = asyncio.ensure_future(group.submit(1))
    await asyncio.sleep(0)  # the first flush is in flight: the next ones wait for it
    rest = [asyncio.ensure_future(group.submit(i)) for i in (2, 3, 4)]
    assert await first == 10
    outcomes = await asyncio.gather(*rest, return_exceptions=True)
    assert calls == [[1], [2, 3, 4]]
    assert all(isinstance(o, OSError) for o in outcomes)
    assert len({id(o) for o in outcomes}) == 1  # the same error for the whole batch


async def test_inline_when_idle_a_lone_write_is_flushed_by_its_own_task() -> None:
    calls: list[tuple[list[int], asyncio.Task[Any] | None]] = []
    gate = asyncio.Event()

    async def flush(items: list[int]) -> list[int | BaseException]:
        calls.append((items, asyncio.current_task()))
        if items == [1]:
            await gate.wait()  # in flight: what is submitted meanwhile queues
        return [ValueError(f"refused {i}") if i == 5 else i * 10 for i in items]

    group: GroupCommit[int, int] = GroupCommit(flush, inline_when_idle=True)
    first = asyncio.ensure_future(group.submit(1))
    await asyncio.sleep(0)
    rest = [asyncio.ensure_future(group.submit(i)) for i in (2, 3)]
    await asyncio.sleep(0)
    assert [items for items, _ in calls] == [[1]]  # the others wait for the lone flush
    gate.set()
    assert await first == 10 and await asyncio.gather(*rest) == [20, 30]
    assert calls[0][1] is first  # the lone write: flushed by its caller's task
    assert [items for items, _ in calls] == [[1], [2, 3]]  # then the others, together
    assert calls[1][1] not in (first, *rest)  # by a flush task of the batcher's own
    # after a batch of several, a write goes through a flush task again (writes that arrive in
    # the same turn of the loop join it); after a batch of one, inline again
    assert await group.submit(4) == 40
    assert calls[2][1] is not asyncio.current_task()
    with pytest.raises(ValueError, match="refused 5"):  # an item's own refusal, raised alone
        await group.submit(5)
    assert calls[3][1] is asyncio.current_task()
    assert (group.flushes, group.items) == (4, 5)


async def test_inline_when_alone_a_write_is_flushed_by_its_task_if_nothing_else_runs() -> None:
    """A flush that blocks the loop (SQLite's): a write made while no other callback is ready
    is flushed by its caller's task; writes made by tasks that are ready together go in one
    flush task's batch, as without the option."""
    calls: list[tuple[list[int], asyncio.Task[Any] | None]] = []

    async def flush(items: list[int]) -> list[int | BaseException]:
        calls.append((items, asyncio.current_task()))  # never awaits: blocks the loop
        return [i * 10 for i in items]

    group: GroupCommit[int, int] = GroupCommit(flush, inline_when_alone=True)
    await asyncio.sleep(0)  # nothing else is ready now
    assert await group.submit(1) == 10
    assert calls[-1] == ([1], asyncio.current_task())
    together = await asyncio.gather(*(group.submit(i) for i in (2, 3, 4)))
    assert together == [20, 30, 40]
    assert [items for items, _ in calls[1:]] == [[2, 3, 4]]  # one flush task's batch
    assert calls[1][1] is not asyncio.current_task()
    asyncio.get_running_loop().call_soon(lambda: None)  # something else is ready to run
    assert await group.submit(5) == 50
    assert calls[-1][1] is not asyncio.current_task()
    assert (group.flushes, group.items) == (3, 5)


async def test_a_caller_cancelled_in_its_inline_flush_leaves_the_queued_writes_flushed() -> None:
    calls: list[list[int]] = []
    entered = asyncio.Event()

    async def flush(items: list[int]) -> list[int | BaseException]:
        calls.append(items)
        if items == [1]:
            entered.set()
            await asyncio.sleep(3600)
        return [i * 10 for i in items]

    group: GroupCommit[int, int] = GroupCommit(flush, inline_when_idle=True)
    first = asyncio.ensure_future(group.submit(1))
    await entered.wait()
    later = asyncio.ensure_future(group.submit(2))
    await asyncio.sleep(0)
    first.cancel()
    assert await later == 20
    assert first.cancelled() and calls == [[1], [2]]
    await group.close()


async def test_concurrent_finishes_share_a_flush_and_a_lost_lease_fails_alone(url: str) -> None:
    async with SQLAlchemyBackend(url) as backend:
        ids = [f"wf{i}" for i in range(8)]
        await claimed(backend, ids)
        for wid in ids:
            await backend.begin_execution(wid, "w1")
        results = await asyncio.gather(
            *(
                backend.finish_workflow(
                    wid, worker_id="w2" if wid == "wf3" else "w1", status=SUCCEEDED, output=wid
                )
                for wid in ids
            ),
            return_exceptions=True,
        )
        for wid, result in zip(ids, results, strict=True):
            if wid == "wf3":
                assert isinstance(result, ClaimLostError) and result.holder == "w1"
                assert (await backend.get_workflow(wid)).status is WorkflowStatus.RUNNING
            else:
                assert not isinstance(result, BaseException)
                assert (result.id, result.status, result.output) == (wid, SUCCEEDED, wid)
                stored = await backend.get_workflow(wid)
                assert (stored.status, stored.output) == (SUCCEEDED, wid)


async def test_concurrent_begins_share_a_flush_each_with_its_history(url: str) -> None:
    async with SQLAlchemyBackend(url) as backend:
        ids = [f"wf{i}" for i in range(8)]
        await claimed(backend, ids)
        for wid in ids[:4]:  # an earlier attempt recorded steps
            await backend.begin_execution(wid, "w1")
            for position in range(int(wid[2:]) + 1):
                await backend.record_step(wid, step(position, output=wid), worker_id="w1")
        group = backend._begin_group
        before = group.flushes if group is not None else 0
        results = await asyncio.gather(
            *(backend.begin_execution(wid, "w2" if wid == "wf5" else "w1") for wid in ids),
            backend.begin_execution("missing", "w1"),
            return_exceptions=True,
        )
        if group is not None:  # PostgreSQL's direct path: the starts shared a statement
            assert group.flushes - before < len(ids)
        for wid, result in zip(ids, results[:-1], strict=True):
            if wid == "wf5":
                assert isinstance(result, ClaimLostError) and result.holder == "w1"
                continue
            assert not isinstance(result, BaseException)
            assert (result.id, result.status) == (wid, WorkflowStatus.RUNNING)
            expected = [(p, wid) for p in range(int(wid[2:]) + 1)] if wid in ids[:4] else []
            assert [(s.position, s.output) for s in result.steps] == expected
            assert (result.attempts, result.interruptions) == (1, 1 if wid in ids[:4] else 0)
        assert isinstance(results[-1], WorkflowNotFoundError)
        assert (await backend.get_workflow("wf5")).executor_id is None


#: values that text-format arrays must quote or escape (braces, quotes, backslashes, commas,
#: the word NULL, blanks, non-ASCII); the batched statements send arrays in binary
AWKWARD = ['{"a": [1, 2]}', 'say "hi", then \\ leave', "NULL", "", " padded ", "naïve ✓"]


async def test_batched_values_land_exactly_as_given(url: str) -> None:
    async with SQLAlchemyBackend(url) as backend:
        ids = [f"wf {i}, {{x}}" for i in range(len(AWKWARD))]
        await claimed(backend, ids)
        began = await asyncio.gather(*(backend.begin_execution(wid, "w1") for wid in ids))
        assert [s.id for s in began] == ids
        await asyncio.gather(
            *(
                backend.record_step(wid, step(0, output=value), worker_id="w1")
                for wid, value in zip(ids, AWKWARD, strict=True)
            ),
            backend.record_step(ids[0], step(1, output=None), worker_id="w1"),
        )
        finished = await asyncio.gather(
            *(
                backend.finish_workflow(wid, worker_id="w1", status=SUCCEEDED, output=value)
                for wid, value in zip(ids, AWKWARD, strict=True)
            )
        )
        assert [(f.id, f.output) for f in finished] == list(zip(ids, AWKWARD, strict=True))
        for wid, value in zip(ids, AWKWARD, strict=True):
            outputs = [s.output for s in await backend.list_steps(wid)]
            assert outputs == ([value, None] if wid == ids[0] else [value])
            assert (await backend.get_workflow(wid)).output == value


async def test_sqlite_enqueues_at_the_same_moment_share_a_transaction(sqlite_url: str) -> None:
    """SQLite: single enqueues pending at the same moment go in one write transaction, each
    created with its task as given; one that exists (even of another name: the caller
    compares) returns the stored workflow."""
    async with SQLAlchemyBackend(sqlite_url) as backend:
        await create(backend, "taken", name="other")
        group = group_of(backend)
        before, items = group.flushes, group.items

        def enqueue(instance_id: str, name: str = "wf", **task: Any) -> Any:
            return backend.create_workflow(
                WorkflowSnapshot(id=instance_id, name=name, input={"args": [instance_id]}),
                task=TaskSpec(instance_id=instance_id, name=name, **task),
            )

        ids = [f"e{i}" for i in range(10)]
        results = await asyncio.gather(
            *(enqueue(i, priority=n) for n, i in enumerate(ids)),
            enqueue("taken"),
        )
        assert group.items - items == len(ids) + 1  # each through the group commit
        assert group.flushes - before < len(ids)  # some shared a transaction
        for wid, (info, created) in zip(ids, results[:-1], strict=True):
            assert created is True and info == await backend.get_workflow(wid)
            assert info.input == {"args": [wid]}
        assert results[-1] == (await backend.get_workflow("taken"), False)
        assert results[-1][0].name == "other"
        tasks = await backend.find_available_tasks("w9", limit=20)
        assert sorted((t.instance_id, t.priority) for t in tasks) == sorted(
            [(wid, n) for n, wid in enumerate(ids)] + [("taken", 0)]
        )


async def test_sqlite_a_chain_that_fails_midway_is_undone_alone(sqlite_url: str) -> None:
    """SQLite: a chain of statements (an enqueue: the workflow, then its task) that fails
    after its first statement ran is undone whole (no workflow without its task), and the
    writes that shared its transaction are committed; the transaction is then run again with
    a savepoint around each chain."""
    async with SQLAlchemyBackend(sqlite_url) as backend:
        await claimed(backend, ["running"])
        group = group_of(backend)
        flushes = group.flushes

        def enqueue(instance_id: str, task_name: Any = "wf") -> Any:
            return backend.create_workflow(
                WorkflowSnapshot(id=instance_id, name="wf"),
                task=TaskSpec(instance_id=instance_id, name=task_name),
            )

        results = await asyncio.gather(
            enqueue("e0"),
            backend.record_step("running", step(0, output="kept"), worker_id="w1"),
            enqueue("bad", task_name=None),  # the task's name is NOT NULL
            enqueue("e1"),
            return_exceptions=True,
        )
        assert group.flushes - flushes < 4  # they shared a transaction
        assert isinstance(results[2], BackendError) and "NOT NULL" in str(results[2])
        with pytest.raises(WorkflowNotFoundError):
            await backend.get_workflow("bad")
        assert [r[1] for r in (results[0], results[3])] == [True, True]  # type: ignore[index]
        assert results[1] is None
        assert [s.output for s in await backend.list_steps("running")] == ["kept"]
        tasks = await backend.find_available_tasks("w9", limit=10)
        assert sorted(t.instance_id for t in tasks) == ["e0", "e1"]


async def test_sqlite_a_batch_computes_the_highest_position_twice_and_numbers_the_rest(
    sqlite_url: str,
) -> None:
    """SQLite: the writes of one transaction take their change feed positions from a counter
    (see runners._Positions): the highest position is computed twice a transaction (by its
    first write, then once for the counter), not once a write. Every write still gets a
    position of its own, above every position committed before (also by another connection),
    and the feed lists them all, in the order they were written; a chain undone midway (the
    transaction then runs again, with savepoints) leaves no position twice."""
    async with SQLAlchemyBackend(sqlite_url) as backend:
        ids = [f"wf{i}" for i in range(12)]
        await claimed(backend, ids)
        # another connection writes a position first: the batch must number above it
        async with SQLAlchemyBackend(sqlite_url) as other:
            await create(other, "elsewhere")
        highest = max(c.position for c in await backend.list_changes(limit=1000))
        runner: Any = backend._runner
        computed: list[str] = []
        runner._own_connection().set_trace_callback(
            lambda sql: computed.append(sql) if feed.SQLITE_NEXT_POSITION in sql else None
        )
        try:
            group = group_of(backend)
            flushes = group.flushes
            results = await asyncio.gather(
                *(backend.record_step(wid, step(0, output=wid), worker_id="w1") for wid in ids),
                backend.create_workflow(
                    WorkflowSnapshot(id="bad", name="wf"),
                    task=TaskSpec(instance_id="bad", name=None),  # type: ignore[arg-type]
                ),
                *(backend.record_step(wid, step(1, output=wid), worker_id="w1") for wid in ids),
                return_exceptions=True,
            )
        finally:
            runner._own_connection().set_trace_callback(None)
        assert group.flushes - flushes <= 2  # at most two transactions
        assert isinstance(results[len(ids)], BackendError)  # the undone chain
        assert all(r is None for i, r in enumerate(results) if i != len(ids))
        # first without savepoints, then again with them: at most twice each attempt
        assert 2 <= len(computed) <= 4 * (group.flushes - flushes)
        changes = [c for c in await backend.list_changes(after=highest, limit=1000)]
        positions = [c.position for c in changes]
        assert len(positions) == len(set(positions)) == 2 * len(ids)
        assert positions == sorted(positions) and positions[0] > highest
        steps_in_order = [(c.workflow_id, c.step_position) for c in changes]
        assert steps_in_order == [(wid, 0) for wid in ids] + [(wid, 1) for wid in ids]
