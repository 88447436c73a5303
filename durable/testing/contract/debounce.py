"""Debouncing (:meth:`PersistentBackend.debounce_workflow`): a burst of calls with one key is
one execution, due after the last call, with the last call's input; a burst ends when its
execution is claimed; racing callers and claims never lose or run stale arguments."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta

import pytest

from durable.backends.base import PersistentBackend
from durable.errors import InvalidArgumentError
from durable.models import TaskSpec, WorkflowInfo, WorkflowSnapshot
from durable.testing.contract._support import LONG, T0, ContractBase, W

DELAY = timedelta(seconds=30)


async def _call(
    backend: PersistentBackend,
    instance_id: str,
    value: object,
    *,
    key: str = "k",
    name: str = "wf",
    delay: timedelta = DELAY,
    deadline: datetime | None = None,
) -> tuple[WorkflowInfo, bool]:
    snapshot = WorkflowSnapshot(
        id=instance_id, name=name, input={"args": [value], "kwargs": {}}, deadline=deadline
    )
    task = TaskSpec(instance_id=instance_id, name=name)
    return await backend.debounce_workflow(snapshot, task, key, delay)


class DebounceContract(ContractBase):
    """One execution per burst (:meth:`PersistentBackend.debounce_workflow`)."""

    async def test_debounce_a_burst_is_one_execution_with_the_last_input(
        self, backend: PersistentBackend
    ) -> None:
        before = await backend.now()
        first, created = await _call(backend, "d-1", 1)
        assert (first.id, created) == ("d-1", True)
        due = (await backend.get_task("d-1", W)).run_after
        assert due >= before + DELAY
        for n in (2, 3):
            before = await backend.now()
            info, created = await _call(backend, f"d-{n}", n)
            assert (info.id, created) == ("d-1", False)
            assert info.input == {"args": [n], "kwargs": {}}
            # pushed back: due the delay after this call, not the first
            assert (await backend.get_task("d-1", W)).run_after >= before + DELAY
        assert (await backend.load_snapshot("d-1")).input == {"args": [3], "kwargs": {}}
        assert (await backend.get_workflow("d-1")).version > first.version
        assert [w.id for w in (await backend.list_snapshots()).items] == ["d-1"]
        # the deadline follows the last call too (a timeout counts from it)
        later = T0 + timedelta(days=1000)
        info, created = await _call(backend, "d-4", 4, deadline=later)
        assert (info.id, created, info.deadline) == ("d-1", False, later)
        assert (await backend.get_workflow("d-1")).deadline == later
        # not due yet: no worker takes it
        assert await backend.claim_available_tasks("w", 10, LONG) == []

    async def test_debounce_keys_and_names_are_separate_bursts(
        self, backend: PersistentBackend
    ) -> None:
        assert (await _call(backend, "a", 1, key="k1"))[1]
        assert (await _call(backend, "b", 2, key="k2"))[1]
        assert (await _call(backend, "c", 3, key="k1", name="other"))[1]
        info, created = await _call(backend, "d", 4, key="k1")
        assert (info.id, created) == ("a", False)
        assert (await backend.load_snapshot("b")).input == {"args": [2], "kwargs": {}}
        assert (await backend.load_snapshot("c")).input == {"args": [3], "kwargs": {}}

    async def test_debounce_a_claimed_execution_ends_its_burst(
        self, backend: PersistentBackend
    ) -> None:
        await _call(backend, "d-1", 1)
        await _call(backend, "d-2", 2)
        claim = await backend.claim_task("d-1", W, "worker", LONG)
        assert claim is not None
        info, created = await _call(backend, "d-3", 3)
        assert (info.id, created) == ("d-3", True)
        # the claimed execution keeps the arguments it was claimed with
        assert (await backend.load_snapshot("d-1")).input == {"args": [2], "kwargs": {}}
        await backend.begin_execution("d-1", "worker")
        info, created = await _call(backend, "d-4", 4)
        assert (info.id, created) == ("d-3", False)
        assert (await backend.load_snapshot("d-3")).input == {"args": [4], "kwargs": {}}

    async def test_debounce_a_started_or_gone_execution_ends_its_burst(
        self, backend: PersistentBackend
    ) -> None:
        await _call(backend, "d-1", 1)
        assert await backend.claim_task("d-1", W, "worker", LONG) is not None
        await backend.begin_execution("d-1", "worker")
        await backend.release_task_claim("d-1", W, "worker")  # started, then handed back
        info, created = await _call(backend, "d-2", 2)
        assert (info.id, created) == ("d-2", True)
        assert await backend.delete_snapshot("d-2")
        info, created = await _call(backend, "d-3", 3)
        assert (info.id, created) == ("d-3", True)

    async def test_debounce_an_existing_id_is_not_created_again(
        self, backend: PersistentBackend
    ) -> None:
        await _call(backend, "d-1", 1)
        assert await backend.claim_task("d-1", W, "worker", LONG) is not None
        # a replayed call with the id of an execution that exists: nothing new
        info, created = await _call(backend, "d-1", 9)
        assert (info.id, created) == ("d-1", False)
        assert (await backend.load_snapshot("d-1")).input == {"args": [1], "kwargs": {}}

    async def test_debounce_concurrent_callers_make_one_execution(
        self, backend: PersistentBackend
    ) -> None:
        results = await asyncio.gather(*(_call(backend, f"d-{n}", n) for n in range(20)))
        ids = {info.id for info, _ in results}
        assert len(ids) == 1
        assert sum(created for _, created in results) == 1
        (only,) = ids
        stored = await backend.load_snapshot(only)
        assert stored.input["args"][0] in range(20)
        assert len((await backend.list_snapshots()).items) == 1

    async def test_debounce_racing_claims_never_see_arguments_change(
        self, backend: PersistentBackend
    ) -> None:
        """Callers and a worker race with a tiny delay: every call's id is an execution, each
        execution's input never changes once claimed, and it is the input of a call that
        returned its id."""
        tiny = timedelta(milliseconds=5)
        calls: dict[str, list[object]] = {}
        claimed: dict[str, object] = {}
        done = asyncio.Event()

        async def caller(c: int) -> None:
            for n in range(15):
                value = f"{c}-{n}"
                info, _ = await _call(backend, f"d-{value}", value, delay=tiny)
                calls.setdefault(info.id, []).append(value)
                await asyncio.sleep(0.002)

        async def worker() -> None:
            while not done.is_set():
                for claim in await backend.claim_available_tasks("worker", 10, LONG):
                    snap = await backend.load_snapshot(claim.instance_id)
                    claimed[claim.instance_id] = snap.input["args"][0]
                await asyncio.sleep(0.001)

        claiming = asyncio.ensure_future(worker())
        await asyncio.gather(*(caller(c) for c in range(3)))
        done.set()
        await claiming
        for instance_id, values in calls.items():
            final = (await backend.load_snapshot(instance_id)).input["args"][0]
            assert final in values
            if instance_id in claimed:
                assert claimed[instance_id] == final, instance_id
        created = [w.id for w in (await backend.list_snapshots(limit=1000)).items]
        assert sorted(created) == sorted(calls)

    @pytest.mark.parametrize(
        ("key", "delay", "idempotency_key", "named"),
        [
            ("", DELAY, None, "debounce_key"),
            ("k", timedelta(0), None, "debounce"),
            ("k", timedelta(seconds=-1), None, "debounce"),
            ("k", DELAY, "idem", "idempotency_key"),
        ],
    )
    async def test_debounce_refused(
        self,
        backend: PersistentBackend,
        key: str,
        delay: timedelta,
        idempotency_key: str | None,
        named: str,
    ) -> None:
        snapshot = WorkflowSnapshot(id="d", name="wf", idempotency_key=idempotency_key)
        with pytest.raises(InvalidArgumentError, match=named):
            await backend.debounce_workflow(
                snapshot, TaskSpec(instance_id="d", name="wf"), key, delay
            )
        assert (await backend.list_snapshots()).items == []
