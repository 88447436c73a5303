"""Robustness under concurrency: connections returned, claims atomic under many tasks of one
process and under several processes, creates racing for one idempotency key or id creating one
workflow, and 200 concurrent calls of every kind all succeeding."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Coroutine
from typing import Any, cast

import pytest

from durable.backends.base import PersistentBackend
from durable.errors import (
    DurableError,
)
from durable.models import (
    TaskSpec,
    WorkflowInfo,
    WorkflowSnapshot,
    WorkflowStatus,
)
from durable.testing._concurrency import ProcessClaimers, TaskKey, claim_each, claim_until_empty
from durable.testing.contract._support import (
    LONG,
    Call,
    ContractBase,
    Unserializable,
    W,
    assert_each_once,
    create,
    gather_all,
    ids_of,
    running,
    step,
)


class ConcurrencyContract(ContractBase):
    """Robustness under concurrency: connections returned, claims atomic under many tasks of
    one process and under several processes, one workflow per idempotency key (or id) under
    racing creates, 200 concurrent calls all succeeding."""

    async def test_no_connections_leaked(self, backend: PersistentBackend) -> None:
        checked_out = getattr(backend, "checked_out_connections", None)
        if not callable(checked_out):
            pytest.skip(f"{type(backend).__name__} has no checked_out_connections()")
        await running(backend, "wf", "w1")
        await backend.record_step("wf", step(0), worker_id="w1")
        failing: list[Call] = [
            lambda: backend.get_workflow("ghost"),
            lambda: backend.load_snapshot("ghost"),
            lambda: backend.list_steps("ghost"),
            lambda: backend.save_snapshot(WorkflowSnapshot(id="wf", name="wf")),
            lambda: backend.save_snapshot(WorkflowSnapshot(id="wf", name="wf", version=99)),
            lambda: backend.record_step("wf", step(0), worker_id="w1"),
            lambda: backend.record_step("wf", step(1), worker_id="w2"),
            lambda: backend.record_step("wf", step(1, output=Unserializable()), worker_id="w1"),
            lambda: backend.claim_task("ghost", W, "w1", LONG),
            lambda: backend.extend_task_claim("wf", W, "w2", LONG),
            lambda: backend.release_task_claim("wf", W, "w2"),
            lambda: backend.complete_task("wf", W, "w2"),
            lambda: backend.finish_workflow("wf", worker_id="w2", status=WorkflowStatus.SUCCEEDED),
            lambda: backend.list_snapshots(cursor="not a cursor!"),
            lambda: backend.find_available_tasks("w1", 0),
        ]
        for call in failing:
            with pytest.raises(DurableError):
                await call()
            assert checked_out() == 0
        await asyncio.gather(*(backend.get_workflow("wf") for _ in range(20)))
        await asyncio.gather(
            *(backend.get_workflow("ghost") for _ in range(20)), return_exceptions=True
        )
        assert checked_out() == 0

    async def _create_tasks(self, backend: PersistentBackend, count: int) -> list[TaskKey]:
        keys: list[TaskKey] = []
        for i in range(count):
            instance_id = f"job-{i:04d}"
            await create(backend, instance_id, name="job", priority=i % 3)
            keys.append((instance_id, W))
        return keys

    async def test_concurrent_batch_claims_in_one_process(self, backend: PersistentBackend) -> None:
        keys = await self._create_tasks(backend, 150)
        workers = [f"task-{i}" for i in range(12)]
        got = await gather_all(claim_until_empty(backend, w, batch=7, ttl=LONG) for w in workers)
        assert_each_once(dict(zip(workers, got, strict=True)), keys)
        assert await backend.find_available_tasks("anyone", 10) == []

    async def test_concurrent_single_claims_in_one_process(
        self, backend: PersistentBackend
    ) -> None:
        keys = await self._create_tasks(backend, 40)
        workers = [f"task-{i}" for i in range(8)]
        orders = [random.Random(i).sample(keys, len(keys)) for i in range(len(workers))]
        got = await gather_all(
            claim_each(backend, w, order, ttl=LONG)
            for w, order in zip(workers, orders, strict=True)
        )
        assert_each_once(dict(zip(workers, got, strict=True)), keys)
        for instance_id, task_id in keys:
            assert await backend.claim_task(instance_id, task_id, "late", LONG) is None

    async def test_concurrent_batch_claims_across_processes(
        self,
        backend: PersistentBackend,
        backend_factory: Callable[[], PersistentBackend] | None,
        _contract_processes: ProcessClaimers,
    ) -> None:
        if backend_factory is None:
            pytest.skip("no backend_factory fixture: the backend cannot be shared by processes")
        keys = await self._create_tasks(backend, 200)
        got = await asyncio.to_thread(
            _contract_processes.run, backend_factory, mode="batch", batch=5
        )
        assert_each_once(got, keys)
        assert await backend.find_available_tasks("anyone", 10) == []

    async def test_concurrent_single_claims_across_processes(
        self,
        backend: PersistentBackend,
        backend_factory: Callable[[], PersistentBackend] | None,
        _contract_processes: ProcessClaimers,
    ) -> None:
        if backend_factory is None:
            pytest.skip("no backend_factory fixture: the backend cannot be shared by processes")
        keys = await self._create_tasks(backend, 100)
        got = await asyncio.to_thread(
            _contract_processes.run, backend_factory, mode="single", keys=keys
        )
        assert_each_once(got, keys)
        assert await backend.find_available_tasks("anyone", 10) == []

    @pytest.mark.parametrize("by", ["key", "id"])
    async def test_concurrent_creates_of_one_workflow_create_it_once(
        self, backend: PersistentBackend, by: str
    ) -> None:
        """Creates racing for one idempotency key (each with its own id), or for one id, have
        the results they would have had one at a time: exactly one creates the workflow and its
        task, every other finds it (``created`` False) and returns its header. So in three
        races: single calls (``create_workflow``), batches (``create_workflows``, each with a
        row of its own besides), and the two interleaved. A backend that looks the key up and
        inserts in separate round trips fails this: the check and the insert must be one
        atomic step (a unique index on the key, say)."""

        def row(race: str, i: int) -> tuple[WorkflowSnapshot, TaskSpec]:
            instance_id = f"{race}-{i:02d}" if by == "key" else race
            key = race if by == "key" else None
            snapshot = WorkflowSnapshot(id=instance_id, name="wf", input=i, idempotency_key=key)
            return snapshot, TaskSpec(instance_id=instance_id, name="wf")

        async def single(race: str, i: int) -> tuple[WorkflowInfo, bool]:
            snapshot, task = row(race, i)
            return await backend.create_workflow(snapshot, task=task)

        async def batch(race: str, i: int) -> tuple[WorkflowInfo, bool]:
            own_id = f"own-{race}-{i:02d}"
            own = (WorkflowSnapshot(id=own_id, name="wf"), TaskSpec(instance_id=own_id, name="wf"))
            (own_info, own_created), raced = await backend.create_workflows([own, row(race, i)])
            assert (own_info.id, own_created) == (own_id, True)
            return raced

        races = {  # the order each race's calls start in
            "singles": [single] * 10,
            "batches": [batch] * 6,
            "mixed": [single, batch] * 5,
        }
        for race, kinds in races.items():
            racing = await gather_all(call(race, i) for i, call in enumerate(kinds))
            winners = sorted(info.id for info, created in racing if created)
            assert len(winners) == 1, (
                f"{race}: {len(winners)} of {len(racing)} concurrent creates of one workflow "
                f"created it: {winners}"
            )
            stored = await backend.get_workflow(winners[0])
            assert stored.version == 1 and stored.input in range(len(kinds))
            for info, _ in racing:
                assert (info.id, info.name, info.input, info.idempotency_key, info.version) == (
                    stored.id,
                    stored.name,
                    stored.input,
                    stored.idempotency_key,
                    1,
                ), f"{race}: a caller got another workflow than the one created"
        page = await backend.list_snapshots(name="wf")
        workflows = {info.id: info for info in page.items}
        for race in races:
            raced = [info for info in workflows.values() if info.id.startswith(race)]
            assert len(raced) == 1, f"{race}: {len(raced)} workflows stored: {sorted(workflows)}"
        assert len(workflows) == 3 + races["batches"].count(batch) + races["mixed"].count(batch)
        tasks = await backend.find_available_tasks("w", 100)
        assert sorted(ids_of(tasks)) == sorted(workflows)

    async def test_two_hundred_concurrent_calls(self, backend: PersistentBackend) -> None:
        """200 calls at once on one backend object (creates, steps, claims, reads, mixed) all
        succeed, with the results they would have had one at a time."""
        running_ids = [f"run-{i}" for i in range(10)]
        for instance_id in running_ids:
            await running(backend, instance_id, f"holder-{instance_id}")
        pending_ids = [f"pend-{i:02d}" for i in range(50)]
        for instance_id in pending_ids:
            await create(backend, instance_id)

        calls: list[tuple[str, Coroutine[Any, Any, Any]]] = []
        for i in range(50):
            spec = TaskSpec(instance_id=f"new-{i:02d}", name="new")
            snapshot = WorkflowSnapshot(id=f"new-{i:02d}", name="new", input=i)
            calls.append((f"create new-{i:02d}", backend.create_workflow(snapshot, task=spec)))
        for instance_id in running_ids:
            for position in range(5):
                record = step(position, output=[instance_id, position])
                holder = f"holder-{instance_id}"
                calls.append(
                    (
                        f"record_step {instance_id}/{position}",
                        backend.record_step(instance_id, record, worker_id=holder),
                    )
                )
        for instance_id in pending_ids:
            claim = backend.claim_task(instance_id, W, f"claimer-{instance_id}", LONG)
            calls.append((f"claim_task {instance_id}", claim))
        for i in range(25):
            instance_id = running_ids[i % len(running_ids)]
            calls.append((f"get_workflow {instance_id}", backend.get_workflow(instance_id)))
            calls.append((f"list_steps {pending_ids[i]}", backend.list_steps(pending_ids[i])))
        assert len(calls) == 200
        random.Random(0).shuffle(calls)

        outcomes = await asyncio.gather(*(call for _, call in calls), return_exceptions=True)
        failed = [
            f"{what}: {outcome!r}"
            for (what, _), outcome in zip(calls, outcomes, strict=True)
            if isinstance(outcome, BaseException)
        ]
        assert not failed, f"{len(failed)} of 200 concurrent calls failed: {failed[:5]}"
        for (what, _), outcome in zip(calls, cast(list[Any], outcomes), strict=True):
            kind, _, target = what.partition(" ")
            if kind == "create":
                info, created = outcome
                assert created is True and info.id == target and info.version == 1
            elif kind == "claim_task":
                assert outcome is not None, f"{what}: refused, though nobody else claimed it"
                assert (outcome.instance_id, outcome.worker_id) == (target, f"claimer-{target}")
                assert outcome.attempts == 1
            elif kind == "get_workflow":
                assert outcome.id == target and outcome.status is WorkflowStatus.RUNNING
                assert outcome.executor_id == f"holder-{target}"
            elif kind == "list_steps":
                assert outcome == []
        for instance_id in running_ids:
            recorded = await backend.list_steps(instance_id)
            assert recorded == [step(p, output=[instance_id, p]) for p in range(5)]
        for i in range(50):
            assert (await backend.get_workflow(f"new-{i:02d}")).input == i
        for instance_id in pending_ids:
            task = await backend.get_task(instance_id, W)
            assert task.claimed_by == f"claimer-{instance_id}"
