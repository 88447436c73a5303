"""Cron schedules: stored and updated (a pause and a pending tick survive a re-declaration),
listed with their next runs, paused and resumed, deleted, found due, and fired: the advance of
``next_run_at`` is a compare-and-set done with the enqueue of the ticks, all or nothing, so that
each tick runs once however many schedulers race (in one process, and in several where the
storage allows); the missed-tick policies as a scheduler applies them."""

from __future__ import annotations

import asyncio
import multiprocessing
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from durable.backends.base import PersistentBackend
from durable.errors import InvalidArgumentError, ScheduleNotFoundError, SerializationError
from durable.executions import EnqueueOptions, execution_record
from durable.models import MissedTicks, ScheduleInfo, TaskSpec, WorkflowSnapshot
from durable.scheduler import Scheduler
from durable.testing.contract._support import (
    ContractBase,
    Unserializable,
    assert_aware,
    gather_all,
)

T0 = datetime(2030, 1, 1, tzinfo=UTC)


def schedule(name: str = "s", **fields: Any) -> ScheduleInfo:
    fields.setdefault("workflow", "wf")
    fields.setdefault("cron", "* * * * *")
    fields.setdefault("timezone", "UTC")
    fields.setdefault("next_run_at", T0)
    return ScheduleInfo(name=name, **fields)


def runs(name: str, *ticks: datetime, value: Any = None) -> list[tuple[WorkflowSnapshot, TaskSpec]]:
    """The executions a scheduler enqueues for ``ticks`` of schedule ``name``."""
    made = []
    for tick in ticks:
        key = f"schedule:{name}:{tick.isoformat()}"
        made.append(
            execution_record(
                "wf",
                key,
                [value],
                {"scheduled_at": tick.isoformat()},
                EnqueueOptions(idempotency_key=key),
            )
        )
    return made


def _race(factory: Callable[[], PersistentBackend], seconds: float) -> int:
    """In a process of its own: run a scheduler for ``seconds``; how many runs it created."""

    async def run() -> int:
        backend = factory()
        await backend.start()
        try:
            scheduler = Scheduler(backend)
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                await scheduler.run_once()
                await asyncio.sleep(0.01)
            return scheduler.fired
        finally:
            await backend.close()

    try:
        return asyncio.run(run())
    except BaseException:
        raise RuntimeError(f"a scheduler process failed:\n{traceback.format_exc()}") from None


class ScheduleContract(ContractBase):
    """Cron schedules (see the module's docstring)."""

    async def test_schedules_put_get_list_delete(self, backend: PersistentBackend) -> None:
        stored, created = await backend.put_schedule(
            schedule("b", args=[1, "x", None], kwargs={"k": {"n": [1]}}, max_catchup=5)
        )
        assert created is True
        assert (stored.args, stored.kwargs, stored.max_catchup) == (
            [1, "x", None],
            {"k": {"n": [1]}},
            5,
        )
        assert stored.next_run_at == T0 and stored.last_tick_at is None and not stored.paused
        assert_aware(stored.created_at, stored.updated_at, stored.next_run_at)
        assert await backend.get_schedule("b") == stored
        await backend.put_schedule(schedule("a"))
        assert [s.name for s in await backend.list_schedules()] == ["a", "b"]

        # a re-declaration: the definition changes, a pause and the pending tick are kept
        await backend.set_schedule_paused("b", True)
        again, created = await backend.put_schedule(
            schedule("b", workflow="wf2", args=[2], next_run_at=T0 + timedelta(days=1))
        )
        assert created is False
        assert (again.workflow, again.args, again.kwargs) == ("wf2", [2], {})
        assert again.paused is True and again.next_run_at == T0
        assert again.created_at == stored.created_at
        assert stored.declared is False and again.declared is False
        # whether code declared it is part of the definition: the last put says
        declared, _ = await backend.put_schedule(schedule("b", workflow="wf2", declared=True))
        assert declared.declared is True and (await backend.get_schedule("b")).declared is True
        undeclared, _ = await backend.put_schedule(schedule("b", workflow="wf2"))
        assert undeclared.declared is False
        # a new cron expression (or zone) moves the next run
        moved, _ = await backend.put_schedule(
            schedule("b", cron="0 * * * *", next_run_at=T0 + timedelta(hours=1))
        )
        assert moved.next_run_at == T0 + timedelta(hours=1)
        zoned, _ = await backend.put_schedule(
            schedule("b", cron="0 * * * *", timezone="Asia/Kolkata", next_run_at=T0)
        )
        assert zoned.next_run_at == T0 and zoned.timezone == "Asia/Kolkata"

        assert await backend.delete_schedule("b") is True
        assert await backend.delete_schedule("b") is False
        with pytest.raises(ScheduleNotFoundError) as caught:
            await backend.get_schedule("b")
        assert caught.value.name == "b"
        assert [s.name for s in await backend.list_schedules()] == ["a"]

    async def test_refused_puts_write_nothing(self, backend: PersistentBackend) -> None:
        with pytest.raises(SerializationError):
            await backend.put_schedule(schedule(args=[Unserializable()]))
        with pytest.raises(InvalidArgumentError, match="naive"):
            await backend.put_schedule(schedule(next_run_at=datetime(2030, 1, 1)))
        assert await backend.list_schedules() == []

    async def test_pause_resume_and_due(self, backend: PersistentBackend) -> None:
        now = await backend.now()
        past = now - timedelta(minutes=5)
        await backend.put_schedule(schedule("late", next_run_at=past))
        await backend.put_schedule(schedule("later", next_run_at=past + timedelta(seconds=1)))
        await backend.put_schedule(schedule("future", next_run_at=now + timedelta(days=1)))
        await backend.put_schedule(schedule("never", next_run_at=None))
        assert [s.name for s in await backend.due_schedules(now)] == ["late", "later"]
        assert [s.name for s in await backend.due_schedules(now, limit=1)] == ["late"]

        paused = await backend.set_schedule_paused("late", True)
        assert paused.paused is True and paused.next_run_at == past
        assert [s.name for s in await backend.due_schedules(now)] == ["later"]
        fired = await backend.fire_schedule(
            "late", expected_next_run_at=past, next_run_at=now, runs=runs("late", past)
        )
        assert fired is None, "a paused schedule fired"
        assert (await backend.list_snapshots()).items == []
        resumed = await backend.set_schedule_paused("late", False, next_run_at=now)
        assert resumed.paused is False and resumed.next_run_at == now
        # resuming one that is not paused keeps its next tick: a due tick still runs
        again = await backend.set_schedule_paused("later", False, next_run_at=now)
        assert again.paused is False and again.next_run_at == past + timedelta(seconds=1)

        with pytest.raises(ScheduleNotFoundError):
            await backend.set_schedule_paused("nope", True)
        with pytest.raises(InvalidArgumentError):
            await backend.due_schedules(now, limit=0)
        with pytest.raises(InvalidArgumentError, match="naive"):
            await backend.due_schedules(datetime(2030, 1, 1))

    async def test_fire_is_a_compare_and_set_with_the_enqueue(
        self, backend: PersistentBackend
    ) -> None:
        await backend.put_schedule(schedule("s", next_run_at=T0))
        ticks = [T0, T0 + timedelta(minutes=1)]
        nxt = T0 + timedelta(minutes=2)
        wrong = await backend.fire_schedule(
            "s",
            expected_next_run_at=T0 - timedelta(minutes=1),
            next_run_at=nxt,
            runs=runs("s", *ticks),
        )
        assert wrong is None
        assert (await backend.list_snapshots()).items == []

        # a refused run writes nothing, and the schedule does not move
        with pytest.raises(SerializationError):
            await backend.fire_schedule(
                "s",
                expected_next_run_at=T0,
                next_run_at=nxt,
                runs=runs("s", T0, value=Unserializable()),
            )
        assert (await backend.get_schedule("s")).next_run_at == T0
        assert (await backend.list_snapshots()).items == []

        fired = await backend.fire_schedule(
            "s",
            expected_next_run_at=T0,
            next_run_at=nxt,
            runs=runs("s", *ticks),
            last_tick_at=ticks[-1],
        )
        assert fired is not None
        assert [created for _, created in fired] == [True, True]
        stored = await backend.get_schedule("s")
        assert stored.next_run_at == nxt and stored.last_tick_at == ticks[-1]
        ids = sorted(i.id for i in (await backend.list_snapshots()).items)
        assert ids == sorted(f"schedule:s:{t.isoformat()}" for t in ticks)
        info = await backend.get_workflow(ids[0])
        assert info.input == {"args": [None], "kwargs": {"scheduled_at": T0.isoformat()}}
        task = await backend.get_task(ids[0], "workflow")
        assert task.claimed_by is None

        # from the same read again: refused; a tick enqueued already is found, not created
        assert (
            await backend.fire_schedule(
                "s", expected_next_run_at=T0, next_run_at=nxt, runs=runs("s", *ticks)
            )
            is None
        )
        again = await backend.fire_schedule(
            "s",
            expected_next_run_at=nxt,
            next_run_at=nxt + timedelta(minutes=1),
            runs=runs("s", ticks[-1]),
        )
        assert again is not None and [created for _, created in again] == [False]
        # no runs: the schedule moves on (missed ticks skipped), last tick kept
        skipped = await backend.fire_schedule(
            "s", expected_next_run_at=nxt + timedelta(minutes=1), next_run_at=None, runs=[]
        )
        assert skipped == []
        stored = await backend.get_schedule("s")
        assert stored.next_run_at is None and stored.last_tick_at == ticks[-1]
        assert await backend.due_schedules(T0 + timedelta(days=3650)) == []
        # gone: nothing fires
        await backend.delete_schedule("s")
        assert (
            await backend.fire_schedule("s", expected_next_run_at=T0, next_run_at=nxt, runs=[])
            is None
        )

    async def test_concurrent_fires_have_one_winner(self, backend: PersistentBackend) -> None:
        await backend.put_schedule(schedule("s", next_run_at=T0))
        nxt = T0 + timedelta(minutes=1)
        results = await gather_all(
            backend.fire_schedule("s", expected_next_run_at=T0, next_run_at=nxt, runs=runs("s", T0))
            for _ in range(12)
        )
        winners = [r for r in results if r is not None]
        assert len(winners) == 1, f"{len(winners)} fires won from one read"
        assert len((await backend.list_snapshots()).items) == 1

    async def test_missed_tick_policies(self, backend: PersistentBackend) -> None:
        """Every minute, ten minutes behind: the tick of the last minute is late, not missed,
        and runs whatever the policy; of the nine missed ones, skip runs none, latest none (a
        late one runs), all the ``max_catchup`` most recent."""
        now = await backend.now()
        behind = now - timedelta(minutes=10)
        for policy in MissedTicks:
            await backend.put_schedule(
                schedule(policy.value, missed=policy, max_catchup=3, next_run_at=behind)
            )
        await Scheduler(backend).run_once()
        counts: dict[str, int] = {p.value: 0 for p in MissedTicks}
        for info in (await backend.list_snapshots(limit=100)).items:
            counts[info.id.split(":")[1]] += 1
        assert counts == {"skip": 1, "latest": 1, "all": 4}
        for stored in await backend.list_schedules():
            assert stored.next_run_at is not None and stored.next_run_at > now
            assert stored.next_run_at - now <= timedelta(minutes=1, seconds=30)

    async def test_schedulers_racing_in_processes(
        self,
        backend: PersistentBackend,
        backend_factory: Callable[[], PersistentBackend] | None,
    ) -> None:
        """Four processes fire an every-second schedule that starts 20 s behind (every tick
        runs: missed="all") for 3 s: each tick from the first to the last fired is enqueued
        once, and every run was created by exactly one process."""
        if backend_factory is None:
            pytest.skip("no backend_factory: the storage is not shared between processes")
        now = await backend.now()
        start = now.replace(microsecond=0) - timedelta(seconds=20)
        await backend.put_schedule(
            schedule(
                "race",
                cron="* * * * * *",
                missed=MissedTicks.ALL,
                max_catchup=100,
                next_run_at=start,
            )
        )
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(4, mp_context=ctx) as pool:
            futures = [pool.submit(_race, backend_factory, 3.0) for _ in range(4)]
            created = [f.result(timeout=120) for f in futures]
        stored = await backend.get_schedule("race")
        assert stored.next_run_at is not None
        expected = int((stored.next_run_at - start).total_seconds())
        items = []
        cursor = None
        while True:
            page = await backend.list_snapshots(limit=500, cursor=cursor)
            items.extend(page.items)
            if page.next_cursor is None:
                break
            cursor = page.next_cursor
        ticks = sorted(datetime.fromisoformat(i.input["kwargs"]["scheduled_at"]) for i in items)
        assert ticks == [start + timedelta(seconds=n) for n in range(expected)], (
            "ticks missing or enqueued twice"
        )
        assert sum(created) == expected, f"runs created per process: {created}"
