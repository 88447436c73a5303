"""The lease check before each step (``ExecutionContext.ensure_lease``), fast.

An executor whose lease ran out while its workflow waited between two steps (a long pause, a
blocked loop, heartbeats off here) and was taken over by another executor must not run the next
step's body: it finds out before the body runs, and the workflow's run raises ClaimLostError.
Without the check the body would run (and only its record would be refused), so a side effect
would happen twice. ``tests/test_crash_recovery.py`` covers the same race with two real runtimes,
as a slow test.
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

import durable
from durable.backends import SQLAlchemyBackend
from durable.context import ExecutionContext, current
from durable.models import WORKFLOW_TASK, StepStatus

pytestmark = pytest.mark.timeout(120)

TTL = 0.2  # seconds: A's lease, short so that the test waits little for it to run out
WAIT = 60.0  # a safety net only: every wait below ends on a state change

registry = durable.Registry()
bodies: Counter[str] = Counter()
#: The execution context of the running workflow, published from its body.
contexts: list[ExecutionContext] = []
between = threading.Event()  # the workflow waits here, between its two steps
go_on = threading.Event()  # ... until the test sets this


@pytest.fixture(autouse=True)
def _reset() -> None:
    clock.offset = timedelta()
    bodies.clear()
    contexts.clear()
    between.clear()
    go_on.clear()


@durable.step(name="tests.lease_check.first")
def first() -> str:
    bodies["first"] += 1
    return "first"


@durable.step(name="tests.lease_check.second")
def second() -> str:
    bodies["second"] += 1  # must not happen once the lease is gone
    return "second"


def _wait_between() -> None:
    ctx = current()
    assert ctx is not None
    contexts.append(ctx)
    between.set()
    assert go_on.wait(WAIT)


@durable.workflow(name="tests.lease_check.async.v1", registry=registry)
async def async_flow() -> list[str]:
    done = [await first.aio()]
    await asyncio.to_thread(_wait_between)
    done.append(await second.aio())
    return done


@durable.workflow(name="tests.lease_check.sync.v1", registry=registry)
def sync_flow() -> list[str]:
    done = [first()]
    _wait_between()
    done.append(second())
    return done


class FakeClock:
    """The in-memory backend's clock: real time plus an offset the test moves forward."""

    def __init__(self) -> None:
        self.offset = timedelta()

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset


#: The store's clock in the tests of a lease that ran out with nobody taking over: the lease
#: runs out when the test moves it, not when a loaded machine is slow (a 0.05 s lease ran out
#: under load between its renewal and the write it was renewed for).
clock = FakeClock()
LAPSE = timedelta(hours=1)  # a move of the store's clock past any lease here
LONG_TTL = 60.0  # the leases of those tests: real time never outlasts them


def on_clock(backend_url: str) -> durable.PersistentBackend:
    """The backend for ``backend_url``, judging time by :data:`clock`."""
    if backend_url == "memory://":
        return durable.InMemoryBackend(clock=clock)
    return SQLAlchemyBackend(backend_url, clock=clock)


async def _take_over(backend: durable.PersistentBackend, workflow_id: str) -> None:
    """Claim the workflow for another executor once A's claim has expired in the database."""
    async with asyncio.timeout(WAIT):
        while (  # noqa: ASYNC110 - polls the database: A's claim expires there just after TTL
            await backend.claim_task(workflow_id, WORKFLOW_TASK, "exec-B", timedelta(minutes=5))
            is None
        ):
            await asyncio.sleep(0.02)


@pytest.mark.parametrize("workflow", [async_flow, sync_flow], ids=["async", "sync"])
async def test_a_step_does_not_run_once_the_lease_was_taken_over(
    backend_url: str, workflow: Any
) -> None:
    clock = FakeClock()
    backend = (
        durable.InMemoryBackend(clock=clock)
        if backend_url == "memory://"
        else durable.connect(backend_url)
    )
    runtime = durable.Runtime(
        backend,
        executor_id="exec-A",
        claim_ttl=TTL,
        recover=False,
        registry=registry,
    )
    runtime.heartbeat_interval = 3600  # no heartbeat: A's lease runs out while the workflow waits
    async with runtime, asyncio.timeout(WAIT):
        run = asyncio.create_task(runtime.run(workflow, workflow_id="wf"))
        waiting = asyncio.create_task(asyncio.to_thread(between.wait, WAIT))
        await asyncio.wait([run, waiting], return_when=asyncio.FIRST_COMPLETED)
        if run.done():  # it ended before it reached the pause: show why
            go_on.set()
            pytest.fail(f"the workflow ended before its pause: {run.result()!r}")
        assert await waiting
        [ctx] = contexts
        while ctx.lease_fresh():  # noqa: ASYNC110 - A's own deadline, on the monotonic clock
            await asyncio.sleep(0.02)
        clock.offset = timedelta(hours=1)  # the in-memory backend's view too
        await _take_over(backend, "wf")
        go_on.set()

        with pytest.raises(durable.ClaimLostError) as lost:
            await run
        assert lost.value.worker_id == "exec-A"
        assert lost.value.holder == "exec-B"
        assert bodies == {"first": 1}  # the second step's body never ran

        [record] = await runtime.list_steps("wf")  # nothing recorded past the first step
        assert (record.name, record.status) == ("tests.lease_check.first", StepStatus.SUCCEEDED)
        claim = await backend.claim_task("wf", WORKFLOW_TASK, "exec-C", timedelta(minutes=5))
        assert claim is None  # B still holds the workflow: A did not release or finish it


@durable.step(name="tests.lease_check.slow")
def slow() -> str:
    bodies["slow"] += 1
    clock.offset += LAPSE  # outlasts the lease, on the store's clock: nobody renews it
    return "slow"


@durable.workflow(name="tests.lease_check.slow.async.v1", registry=registry)
async def slow_async_flow() -> list[str]:
    return [await slow.aio(), await first.aio()]


@durable.workflow(name="tests.lease_check.slow.sync.v1", registry=registry)
def slow_sync_flow() -> list[str]:
    return [slow(), first()]


@pytest.mark.parametrize("workflow", [slow_async_flow, slow_sync_flow], ids=["async", "sync"])
async def test_a_lease_that_ran_out_with_nobody_taking_over_is_renewed_for_the_write(
    backend_url: str, workflow: Any
) -> None:
    """A step that outlasts its lease (no heartbeat; a long pause does the same) while no other
    executor takes the workflow over: its result is recorded once the lease is renewed, instead
    of the attempt being given up and the step's body run again by the next one."""
    runtime = durable.Runtime(
        on_clock(backend_url),
        executor_id="exec-A",
        claim_ttl=LONG_TTL,
        recover=False,
        registry=registry,
    )
    runtime.heartbeat_interval = 3600  # no heartbeat
    async with runtime:
        assert await runtime.run(workflow, workflow_id="wf") == ["slow", "first"]
        assert bodies == {"slow": 1, "first": 1}
        steps = await runtime.list_steps("wf")
        assert [(s.name, s.status) for s in steps] == [
            ("tests.lease_check.slow", StepStatus.SUCCEEDED),
            ("tests.lease_check.first", StepStatus.SUCCEEDED),
        ]


@durable.workflow(name="tests.lease_check.one.async.v1", registry=registry)
async def one_step_async_flow() -> list[str]:
    return [await first.aio()]


@durable.workflow(name="tests.lease_check.one.sync.v1", registry=registry)
def one_step_sync_flow() -> list[str]:
    return [first()]


@pytest.mark.parametrize(
    "workflow", [one_step_async_flow, one_step_sync_flow], ids=["async", "sync"]
)
@pytest.mark.parametrize("late", ["begin_execution", "finish_workflow"])
async def test_a_lease_that_ran_out_before_the_start_or_the_outcome_is_renewed_for_it(
    backend_url: str, workflow: Any, late: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same between the claim and the execution's start, and between the last step and
    the outcome: a pause there longer than the lease (found by CI load with a 0.05 s lease:
    the start, then the outcome, was refused as "not held by anyone", and ``run`` raised
    ClaimLostError) renews the lease, and the workflow is started, or finished, once."""
    backend = on_clock(backend_url)
    runtime = durable.Runtime(
        backend, executor_id="exec-A", claim_ttl=LONG_TTL, recover=False, registry=registry
    )
    runtime.heartbeat_interval = 3600  # no heartbeat
    write = getattr(backend, late)
    paused: list[str] = []

    async def after_a_pause(*args: Any, **kwargs: Any) -> Any:
        if not paused:  # the first time only: the lease runs out first
            paused.append(late)
            clock.offset += LAPSE
        return await write(*args, **kwargs)

    monkeypatch.setattr(backend, late, after_a_pause)
    async with runtime:
        assert await runtime.run(workflow, workflow_id="wf") == ["first"]
        assert paused == [late]
        assert bodies == {"first": 1}
        info = await runtime.get_workflow("wf")
        assert (info.status, info.attempts, info.interruptions) == (
            durable.WorkflowStatus.SUCCEEDED,
            1,
            0,
        )
        [record] = await runtime.list_steps("wf")
        assert (record.name, record.status) == ("tests.lease_check.first", StepStatus.SUCCEEDED)
