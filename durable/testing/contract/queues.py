"""Queues with limits: stored, left alone by the ordinary claims, and claimed within their
limits (concurrency, per worker, rate, partitions), never beyond them under racing claims of
one process or of several."""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import Callable

import pytest

from durable.backends.base import PersistentBackend
from durable.errors import InvalidArgumentError, QueueNotFoundError
from durable.models import QueueInfo, TaskSpec, WorkflowSnapshot
from durable.testing._concurrency import ProcessClaimers, max_overlap, read_intervals
from durable.testing.contract._support import (
    LONG,
    SHORT,
    ContractBase,
    W,
    assert_each_once,
    create,
    ids_of,
)


async def _fill(
    backend: PersistentBackend,
    queue: str,
    count: int,
    *,
    prefix: str = "job",
    partitions: int = 0,
) -> list[str]:
    """``count`` new workflows with their tasks in ``queue`` (partition keys ``p0``, ``p1``,
    ... round robin when ``partitions``), created in id order; returns their ids."""
    ids = [f"{prefix}-{i:04d}" for i in range(count)]
    keys = [f"p{n % partitions}" if partitions else None for n in range(count)]
    batch = [
        (
            WorkflowSnapshot(id=i, name="wf", queue=queue, partition_key=key),
            TaskSpec(instance_id=i, name="wf", queue=queue, partition_key=key),
        )
        for i, key in zip(ids, keys, strict=True)
    ]
    await backend.create_workflows(batch)
    return ids


class QueueContract(ContractBase):
    """Queues with limits (:meth:`PersistentBackend.claim_queue_tasks` and the queue store)."""

    async def test_queue_limits_put_get_list_delete(self, backend: PersistentBackend) -> None:
        stored, created = await backend.put_queue(QueueInfo(name="b", concurrency=2))
        assert created and stored.concurrency == 2 and stored.created_at is not None
        await backend.put_queue(QueueInfo(name="a", rate_limit=5, rate_period=1.5))
        assert [q.name for q in await backend.list_queues()] == ["a", "b"]
        assert (await backend.get_queue("a")).rate_period == 1.5
        kept, created = await backend.put_queue(QueueInfo(name="b", concurrency=9), replace=False)
        assert not created and kept.concurrency == 2
        changed, _ = await backend.put_queue(QueueInfo(name="b", worker_concurrency=1))
        assert changed.concurrency is None and changed.worker_concurrency == 1
        assert changed.created_at == stored.created_at
        # only: those limits set, the others as stored (a concurrent change of them is kept)
        some, _ = await backend.put_queue(QueueInfo(name="b", concurrency=4), only=["concurrency"])
        assert (some.concurrency, some.worker_concurrency) == (4, 1)
        rated, _ = await backend.put_queue(
            QueueInfo(name="b", rate_limit=3, rate_period=2.0), only=("rate_limit",)
        )
        assert (rated.concurrency, rated.rate_limit, rated.rate_period) == (4, 3, 2.0)
        new, created = await backend.put_queue(
            QueueInfo(name="c", concurrency=1, worker_concurrency=2), only=["concurrency"]
        )
        assert created and (new.concurrency, new.worker_concurrency) == (1, 2)
        with pytest.raises(InvalidArgumentError, match="only must name limit fields"):
            await backend.put_queue(QueueInfo(name="b", concurrency=1), only=["name"])
        assert (await backend.get_queue("b")).concurrency == 4
        await backend.delete_queue("c")
        assert await backend.delete_queue("b") is True
        assert await backend.delete_queue("b") is False
        with pytest.raises(QueueNotFoundError):
            await backend.get_queue("b")

    async def test_bad_limits_refused(self, backend: PersistentBackend) -> None:
        for bad in (
            QueueInfo(name="q", concurrency=0),
            QueueInfo(name="q", rate_limit=5),
            QueueInfo(name="q", rate_period=1.0),
            QueueInfo(name="q", partition_concurrency=-1),
        ):
            with pytest.raises(InvalidArgumentError):
                await backend.put_queue(bad)
        assert await backend.list_queues() == []

    async def test_ordinary_claims_leave_limited_queues_alone(
        self, backend: PersistentBackend
    ) -> None:
        await _fill(backend, "limited", 3, prefix="l")
        await _fill(backend, "plain", 2, prefix="p")
        await backend.put_queue(QueueInfo(name="limited", concurrency=10))
        await backend.put_queue(QueueInfo(name="plain"))  # stored, no limit: ordinary
        got = await backend.claim_available_tasks("w", 10, LONG)
        assert sorted(ids_of(got)) == ["p-0000", "p-0001"]
        assert await backend.claim_queue_tasks("w", "plain", 10, LONG) == []
        await backend.delete_queue("limited")
        assert len(await backend.claim_available_tasks("w", 10, LONG, include_own=False)) == 3

    async def test_an_explicit_claim_keeping_limits(self, backend: PersistentBackend) -> None:
        ids = await _fill(backend, "q", 2)
        free = await _fill(backend, "free", 1, prefix="free")
        await backend.put_queue(QueueInfo(name="q", concurrency=1))
        # a limited queue's workflow task is left to claim_queue_tasks
        assert await backend.claim_task(ids[0], W, "a", LONG, keep_limits=True) is None
        assert (
            await backend.claim_task(ids[0], W, "a", LONG, due_only=True, keep_limits=True) is None
        )
        assert (await backend.get_task(ids[0], W)).claimed_by is None
        # a queue without limits is claimed as usual
        claim = await backend.claim_task(free[0], W, "a", LONG, keep_limits=True)
        assert claim is not None and claim.worker_id == "a"
        # the holder of a limited claim may renew it by id (re-entrant)
        [held] = await backend.claim_queue_tasks("b", "q", 10, LONG)
        again = await backend.claim_task(held.instance_id, W, "b", LONG, keep_limits=True)
        assert again is not None and again.attempts == 1
        # without keep_limits the explicit claim is what it always was
        other = ids[1] if held.instance_id == ids[0] else ids[0]
        assert await backend.claim_task(other, W, "c", LONG) is not None
        await backend.delete_queue("q")  # no limits any more: claimed by id as usual
        await backend.release_task_claim(other, W, "c")
        assert await backend.claim_task(other, W, "d", LONG, keep_limits=True) is not None

    async def test_concurrency_counts_live_claims_only(self, backend: PersistentBackend) -> None:
        ids = await _fill(backend, "q", 6)
        await backend.put_queue(QueueInfo(name="q", concurrency=2))
        first = await backend.claim_queue_tasks("a", "q", 10, LONG)
        assert ids_of(first) == ids[:2]
        assert await backend.claim_queue_tasks("b", "q", 10, LONG) == []
        await backend.complete_task(ids[0], W, "a")  # finished: its slot is free
        assert ids_of(await backend.claim_queue_tasks("b", "q", 10, LONG)) == [ids[2]]
        # a suspended execution (its claim released) holds no slot
        await backend.release_task_claim(ids[1], W, "a")
        third = await backend.claim_queue_tasks("c", "q", 10, SHORT)
        assert len(third) == 1
        await asyncio.sleep(SHORT.total_seconds() + 0.2)  # an expired lease holds none either
        assert len(await backend.claim_queue_tasks("d", "q", 10, LONG)) == 1

    async def test_a_lapsed_claim_is_not_kept_by_its_old_holder(
        self, backend: PersistentBackend
    ) -> None:
        """A worker restarted under its old id: once its claim lapsed, others took its slot,
        and its recovery's explicit claim must wait for a slot too (it went past the limit)."""
        ids = await _fill(backend, "q", 2)
        await backend.put_queue(QueueInfo(name="q", concurrency=1))
        [held] = await backend.claim_queue_tasks("a", "q", 10, SHORT)
        assert held.instance_id == ids[0]
        await asyncio.sleep(SHORT.total_seconds() + 0.2)  # "a" dies; its lease lapses
        # the slot, to another worker (an explicit claim holds one as any live claim does)
        assert await backend.claim_task(ids[1], W, "b", LONG) is not None
        assert await backend.claim_task(ids[0], W, "a", LONG, keep_limits=True) is None
        assert (await backend.get_task(ids[0], W)).claimed_by == "a"  # left as it was
        await backend.complete_task(ids[1], W, "b")  # the slot is free: handed out again
        assert ids_of(await backend.claim_queue_tasks("a", "q", 10, LONG)) == [ids[0]]

    async def test_worker_concurrency(self, backend: PersistentBackend) -> None:
        await _fill(backend, "q", 6)
        await backend.put_queue(QueueInfo(name="q", concurrency=5, worker_concurrency=2))
        assert len(await backend.claim_queue_tasks("a", "q", 10, LONG)) == 2
        assert await backend.claim_queue_tasks("a", "q", 10, LONG) == []
        assert len(await backend.claim_queue_tasks("b", "q", 10, LONG)) == 2
        assert len(await backend.claim_queue_tasks("c", "q", 10, LONG)) == 1  # global cap

    async def test_rate_limit_over_a_window(self, backend: PersistentBackend) -> None:
        ids = await _fill(backend, "q", 8)
        await backend.put_queue(QueueInfo(name="q", rate_limit=3, rate_period=0.6))
        got = await backend.claim_queue_tasks("a", "q", 2, LONG)
        got += await backend.claim_queue_tasks("b", "q", 10, LONG)
        assert ids_of(got) == ids[:3]
        for i in ids[:3]:  # finished: a rate limit counts starts, not running executions
            await backend.complete_task(i, W, "a" if i in ids[:2] else "b")
        assert await backend.claim_queue_tasks("c", "q", 10, LONG) == []
        await asyncio.sleep(0.8)
        assert ids_of(await backend.claim_queue_tasks("c", "q", 10, LONG)) == ids[3:6]

    async def test_partitions_in_order(self, backend: PersistentBackend) -> None:
        ids = await _fill(backend, "q", 6, partitions=2)  # p0: 0, 2, 4; p1: 1, 3, 5
        await _fill(backend, "q", 1, prefix="solo")  # no partition key: not limited by one
        await backend.put_queue(QueueInfo(name="q", partition_concurrency=1))
        first = ids_of(await backend.claim_queue_tasks("a", "q", 10, LONG))
        assert sorted(first) == [ids[0], ids[1], "solo-0000"]
        assert await backend.claim_queue_tasks("a", "q", 10, LONG) == []
        await backend.complete_task(ids[0], W, "a")
        assert ids_of(await backend.claim_queue_tasks("b", "q", 10, LONG)) == [ids[2]]
        await backend.complete_task(ids[1], W, "a")
        await backend.complete_task(ids[2], W, "b")
        assert sorted(ids_of(await backend.claim_queue_tasks("b", "q", 10, LONG))) == [
            ids[3],
            ids[4],
        ]

    async def test_a_redrive_stays_in_its_partition(self, backend: PersistentBackend) -> None:
        """The partition key is the workflow's: a cancelled execution run again (its task made
        anew) still counts in its partition."""
        ids = await _fill(backend, "q", 2, partitions=1)  # both in p0
        assert (await backend.get_workflow(ids[0])).partition_key == "p0"
        await backend.cancel_workflow(ids[0])
        await backend.requeue_workflow(ids[0])
        await backend.put_queue(QueueInfo(name="q", partition_concurrency=1))
        assert len(await backend.claim_queue_tasks("a", "q", 10, LONG)) == 1

    async def test_limit_change_applies_at_the_next_claim(self, backend: PersistentBackend) -> None:
        await _fill(backend, "q", 6)
        await backend.put_queue(QueueInfo(name="q", concurrency=1))
        assert len(await backend.claim_queue_tasks("a", "q", 10, LONG)) == 1
        assert await backend.claim_queue_tasks("a", "q", 10, LONG) == []
        await backend.put_queue(QueueInfo(name="q", concurrency=3))
        assert len(await backend.claim_queue_tasks("a", "q", 10, LONG)) == 2
        await backend.put_queue(QueueInfo(name="q"))  # no limit left: the ordinary claims
        assert await backend.claim_queue_tasks("a", "q", 10, LONG) == []
        assert len(await backend.claim_available_tasks("b", 10, LONG)) == 3

    async def test_racing_claims_in_one_process_never_exceed(
        self, backend: PersistentBackend
    ) -> None:
        ids = await _fill(backend, "q", 60)
        await backend.put_queue(QueueInfo(name="q", concurrency=4))
        held = 0
        most = 0
        got: dict[str, list[tuple[str, str]]] = {}

        async def worker(name: str) -> None:
            nonlocal held, most
            mine = got.setdefault(name, [])
            while sum(len(g) for g in got.values()) + held < len(ids):
                claims = await backend.claim_queue_tasks(name, "q", 2, LONG)
                if not claims:
                    await asyncio.sleep(0.002)
                    continue
                held += len(claims)
                most = max(most, held)
                await asyncio.sleep(0.001)
                for claim in claims:
                    mine.append((claim.instance_id, W))
                    held -= 1
                    await backend.complete_task(claim.instance_id, W, name)

        await asyncio.gather(*(worker(f"w{i}") for i in range(10)))
        assert_each_once(got, [(i, W) for i in ids])
        assert most <= 4

    async def test_racing_processes_never_exceed(
        self,
        backend: PersistentBackend,
        backend_factory: Callable[[], PersistentBackend] | None,
        _contract_processes: ProcessClaimers,
    ) -> None:
        if backend_factory is None:
            pytest.skip("no backend_factory fixture: the backend cannot be shared by processes")
        ids = await _fill(backend, "q", 120)
        await backend.put_queue(QueueInfo(name="q", concurrency=3))
        fd, log_path = tempfile.mkstemp(prefix="durable-queue-", suffix=".log")
        os.close(fd)
        try:
            got = await asyncio.to_thread(
                _contract_processes.run_queue, backend_factory, "q", log_path
            )
            intervals = read_intervals(log_path)
        finally:
            os.unlink(log_path)
        assert_each_once(got, [(i, W) for i in ids])
        assert len(intervals) == len(ids)
        assert max_overlap(intervals) <= 3
        await create(backend, "after", queue="q")
        assert ids_of(await backend.claim_queue_tasks("x", "q", 10, LONG)) == ["after"]
