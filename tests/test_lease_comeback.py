"""An executor whose lease lapsed and came back to it: its old attempt is still running when its
own worker claims the execution again.

Writes are fenced by the executor id, so both attempts of that executor pass the fence: the
old one (its lease lapsed while a step body ran; another executor took the execution over and
lost it in turn) and the new one (this executor's worker claimed it back). The new attempt
used to run on the history its claim read, before the old attempt recorded the step it was
in: once the old attempt finished the workflow, the new one ran that step's body again. And the
old attempt's record of a step the other executor had recorded meanwhile counted as the
workflow's failure (dead-lettered with ``max_attempts=1``), although every step succeeded.

A lapsed lease is made by hand (``claim_expires_at`` set in the past), which is what a process
frozen past its ``claim_ttl`` looks like to the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa

import durable
from durable.backends.sql.schema import tasks

pytestmark = pytest.mark.timeout(180)

WAIT = 60.0  # a safety net only: every wait below ends on a state change

registry = durable.Registry()
bodies: Counter[tuple[str, str]] = Counter()  # (step, executor) -> body runs
gates: dict[str, asyncio.Event] = {}
running_as: list[str] = []  # the executor whose turn it is (set by the test)


@durable.step(name="tests.lease_comeback.first")
async def first() -> str:
    who = running_as[-1]
    bodies["first", who] += 1
    await gates[f"first-{who}"].wait()
    return "first"


@durable.step(name="tests.lease_comeback.second")
async def second() -> str:
    bodies["second", running_as[-1]] += 1
    await gates["second"].wait()
    return "second"


@durable.workflow(name="tests.lease_comeback.v1", registry=registry, max_attempts=1)
async def flow() -> list[str]:
    return [await first(), await second()]


async def _until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


async def _claims_no_more(worker: durable.Worker) -> None:
    """Stop the worker's claims, its executions left running (a claim in flight would take
    the execution back once its lease lapses: wait for its loop to end)."""
    worker.request_stop()
    assert worker._loop_task is not None
    await asyncio.wait({worker._loop_task})


def _lapse(engine: sa.Engine) -> None:
    """Every lease runs out now."""
    with engine.begin() as conn:
        conn.execute(sa.update(tasks).values(claim_expires_at=datetime(2000, 1, 1, tzinfo=UTC)))


def _holders(engine: sa.Engine) -> list[str | None]:
    with engine.connect() as conn:
        return [row[0] for row in conn.execute(sa.select(tasks.c.claimed_by))]


def _runtime(url: str, executor_id: str) -> durable.Runtime:
    # heartbeats far apart: the lapses below are the test's, not the heartbeats' to undo
    return durable.Runtime(
        durable.connect(url),
        executor_id=executor_id,
        registry=registry,
        claim_ttl=120,
        heartbeat_interval=100,
        recover=False,
    )


@pytest.fixture(autouse=True)
def _reset() -> None:
    bodies.clear()
    running_as.clear()
    gates.clear()


async def _comeback(url: str, *, b_records_first: bool) -> tuple[durable.WorkflowInfo, list[Any]]:
    for name in ("first-A", "first-B", "second"):
        gates[name] = asyncio.Event()
    engine = sa.create_engine(url)
    a, b = _runtime(url, "A"), _runtime(url, "B")
    try:
        async with a, b:
            running_as.append("A")
            worker_a = await a.start_worker(concurrency=2, poll_interval=0.05)
            wid = await a.enqueue(flow, workflow_id="comeback")
            await _until(lambda: bodies["first", "A"] == 1, "A to run the first step")
            await _claims_no_more(worker_a)  # (its attempt goes on)
            # A is frozen in the first step past its lease: B takes the execution over
            _lapse(engine)
            running_as.append("B")
            worker_b = await b.start_worker(concurrency=2, poll_interval=0.05)
            await _until(lambda: bodies["first", "B"] == 1, "B to run the first step")
            if b_records_first:
                gates["first-B"].set()
                await _until(lambda: bodies["second", "B"] == 1, "B to record the first step")
            await _claims_no_more(worker_b)
            # and B is frozen in its turn: a worker of A claims the execution back
            _lapse(engine)
            running_as.append("A")
            await a.start_worker(concurrency=2, poll_interval=0.05)
            await _until(lambda: _holders(engine) == ["A"], "A to claim the execution back")
            gates["first-A"].set()  # A's old attempt goes on
            gates["second"].set()
            with contextlib.suppress(durable.WorkflowError):  # judged below, as stored
                await a.result(wid, timeout=WAIT)
            await asyncio.sleep(0.5)  # a late attempt would run a body now
            info = await a.get_workflow(wid)
            steps = [(s.position, s.status.value, s.executor_id) for s in await a.list_steps(wid)]
            gates["first-B"].set()  # let B's frozen body end, so that B can close
            return info, steps
    finally:
        engine.dispose()


async def test_a_step_recorded_by_the_old_attempt_is_not_run_again_by_the_new_one(
    db_url: str,
) -> None:
    info, steps = await _comeback(db_url, b_records_first=False)
    assert info.status is durable.WorkflowStatus.SUCCEEDED, info.error
    assert info.output == ["first", "second"]
    assert steps == [(0, "succeeded", "A"), (1, "succeeded", "A")]
    # A's old attempt ran the first step and recorded it; B's run of it was never recorded
    # (B lost its lease in it); A's new attempt ran nothing (it used to run the first again)
    assert bodies == {("first", "A"): 1, ("first", "B"): 1, ("second", "A"): 1}


async def test_a_step_recorded_by_another_executor_ends_the_old_attempt_as_interrupted(
    db_url: str,
) -> None:
    info, steps = await _comeback(db_url, b_records_first=True)
    # the old attempt's record of the first step finds B's: interrupted, not failed (it used
    # to dead-letter the execution, max_attempts=1); A's new attempt replays B's first step
    assert info.status is durable.WorkflowStatus.SUCCEEDED, info.error
    assert info.output == ["first", "second"]
    assert info.attempts == 1
    assert steps == [(0, "succeeded", "B"), (1, "succeeded", "A")]
    assert bodies == {
        ("first", "A"): 1,
        ("first", "B"): 1,
        ("second", "B"): 1,  # B's lease ran out in it: never recorded
        ("second", "A"): 1,
    }
