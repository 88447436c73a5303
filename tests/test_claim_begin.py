"""A worker's claim that also starts what it claims (PersistentBackend.claim_and_begin_tasks):
one statement on PostgreSQL's direct path, a plain claim elsewhere. What must hold: a started
claim is exactly what begin_execution right after the claim would have made (status, attempt,
interruption, history), fenced by the claim itself (a live claim of another worker is not
taken); a started claim handed back does not count its attempt; a backend whose claims or
starts are replaced by a subclass only claims, through them."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import durable
from durable.backends import SQLAlchemyBackend
from durable.backends.sql.runners import InlineRunner
from durable.engine.attempts import ClaimedStarts
from durable.models import TaskClaim, WorkflowSnapshot, WorkflowStatus
from durable.testing.contract._support import LONG, W, create, step

RUNNING, PENDING = WorkflowStatus.RUNNING, WorkflowStatus.PENDING


def comparable(snapshot: WorkflowSnapshot) -> tuple[Any, ...]:
    return (
        snapshot.id,
        snapshot.status,
        snapshot.executor_id,
        snapshot.attempts,
        snapshot.interruptions,
        snapshot.input,
        [(s.position, s.output) for s in snapshot.steps],
    )


async def test_claimed_workflows_start_as_begin_execution_would(backend_url: str) -> None:
    async with durable.connect(backend_url) as backend:
        for i in range(4):
            await create(backend, f"wf{i}", input=[[i], {}])
        # wf1 was interrupted (begun, one step recorded, its claim then let go while running)
        assert await backend.claim_task("wf1", W, "old", LONG)
        await backend.begin_execution("wf1", "old")
        await backend.record_step("wf1", step(0, output="kept"), worker_id="old")
        await backend.release_task_claim("wf1", W, "old")
        # wf2 is held by a live worker: not claimable
        assert await backend.claim_task("wf2", W, "other", LONG)
        claimed = await backend.claim_and_begin_tasks("w1", 10, LONG)
        assert sorted(c.instance_id for c, _ in claimed) == ["wf0", "wf1", "wf3"]
        # PostgreSQL's direct path and SQLite's standard-library driver start them; the others
        # only claim
        starts = isinstance(backend, SQLAlchemyBackend) and (
            backend._direct or isinstance(backend._runner, InlineRunner)
        )
        for claim, began in claimed:
            assert (claim.worker_id, claim.task_id) == ("w1", W)
            assert (began is not None) == starts
            snapshot = began or await backend.begin_execution(claim.instance_id, "w1")
            expected = (1, 1 if claim.instance_id == "wf1" else 0)
            assert (snapshot.attempts, snapshot.interruptions) == expected
            stored = await backend.get_workflow(claim.instance_id)
            assert (stored.status, stored.executor_id, stored.version) == (
                RUNNING,
                "w1",
                snapshot.version,
            )
            history = [(0, "kept")] if claim.instance_id == "wf1" else []
            i = int(claim.instance_id[2:])
            assert comparable(snapshot) == (
                claim.instance_id,
                RUNNING,
                "w1",
                *expected,
                [[i], {}],
                history,
            )
        assert (await backend.get_workflow("wf2")).status is PENDING


async def test_a_started_claim_handed_back_does_not_count_its_attempt(backend_url: str) -> None:
    async with durable.connect(backend_url) as backend:
        await create(backend, "wf")
        [(_, began)] = await backend.claim_and_begin_tasks("w1", 1, LONG)
        if began is None:
            await backend.begin_execution("wf", "w1")
        await backend.reschedule_workflow(
            "wf", worker_id="w1", run_after=timedelta(0), consume_attempt=False
        )
        stored = await backend.get_workflow("wf")
        assert (stored.status, stored.attempts, stored.interruptions) == (PENDING, 0, 0)
        [(claim, again)] = await backend.claim_and_begin_tasks("w2", 1, LONG)
        snapshot = again or await backend.begin_execution("wf", "w2")
        assert (claim.worker_id, snapshot.attempts, snapshot.interruptions) == ("w2", 1, 0)


class CountingClaims(SQLAlchemyBackend):
    claims = 0

    async def claim_available_tasks(self, *args: Any, **kwargs: Any) -> Any:
        CountingClaims.claims += 1
        return await super().claim_available_tasks(*args, **kwargs)


async def test_replaced_claims_are_honoured(pg_url: str, sqlite_url: str) -> None:
    for url in (pg_url, sqlite_url):
        CountingClaims.claims = 0
        async with CountingClaims(url) as backend:
            await create(backend, "wf")
            [(claim, began)] = await backend.claim_and_begin_tasks("w1", 1, LONG)
            assert (claim.instance_id, began, CountingClaims.claims) == ("wf", None, 1)
            assert (await backend.get_workflow("wf")).status is PENDING


def _claim(instance_id: str) -> TaskClaim:
    return TaskClaim(
        instance_id=instance_id,
        task_id=W,
        worker_id="w1",
        expires_at=datetime.now(UTC) + LONG,
        attempts=1,
        name="wf",
    )


async def test_a_driver_waits_for_the_claims_in_flight_and_only_those() -> None:
    starts = ClaimedStarts()
    first, later = asyncio.Event(), asyncio.Event()

    async def claiming(event: asyncio.Event, instance_id: str) -> Any:
        await event.wait()
        return [(_claim(instance_id), WorkflowSnapshot(id=instance_id, name="wf"))]

    in_flight = asyncio.ensure_future(starts.claim(claiming(first, "wf")))
    await asyncio.sleep(0)  # the claim is sent
    taking = asyncio.ensure_future(starts.take_landed("wf"))
    await asyncio.sleep(0)
    sent_after = asyncio.ensure_future(starts.claim(claiming(later, "other")))
    await asyncio.sleep(0)
    assert not taking.done()  # it waits for the claim that was in flight
    first.set()
    began = await taking  # and not for the one sent after it
    assert began is not None and began.id == "wf"
    assert [c.instance_id for c in await in_flight] == ["wf"]
    assert starts.take("wf") is None  # taken once
    later.set()
    await sent_after
    assert starts.take("other") is not None
