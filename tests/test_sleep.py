"""Durable sleep: ``durable.sleep`` / ``sleep_until`` (and their ``_sync`` forms) in workflows.

* a sleeping workflow resumes and returns, through ``run`` and through a worker, on every
  backend; a replay after the wake-up does not sleep again (steps and suspensions counted);
  a replay that reaches a pending sleep early waits for the recorded time, not a new one;
* it holds no claim and no worker slot while it sleeps (a worker of concurrency 1 runs another
  workflow meanwhile);
* on the in-memory backend's fake clock a 3-day sleep is crossed in milliseconds, and nothing
  runs a millisecond early;
* a worker process SIGKILLed while a workflow sleeps (SQLite file, PostgreSQL): another one
  resumes it after its wake-up time, no completed step runs again, nothing sleeps twice, and
  no interruption is counted;
* sync workflows sleep with ``sleep_sync`` / ``sleep_until_sync``; the wrong flavour is a clear
  error; bad arguments raise InvalidArgumentError naming the argument; a sleep where the history
  has a step (or a step where it has a sleep) is a divergence.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import subprocess
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from support import Processes, eventually, quick_runtime

import durable
from durable.context import ExecutionContext
from durable.models import WORKFLOW_TASK, StepStatus, WorkflowStatus
from durable.timers import SLEEP_STEP, WorkflowSleeping

REG = durable.Registry()
CALLS: Counter[str] = Counter()
MODE: list[str] = ["sleep-first"]
FAIL_ONCE: set[str] = set()
WAIT = 60.0  # an upper bound for anything the tests wait for, never reached when green
PROG = Path(__file__).with_name("sleepprog.py")


@pytest.fixture(autouse=True)
def _reset() -> Iterator[None]:
    CALLS.clear()
    FAIL_ONCE.clear()
    MODE[:] = ["sleep-first"]
    yield


@pytest.fixture
def suspensions(caplog: pytest.LogCaptureFixture) -> Callable[[str], int]:
    """How many times a workflow suspended to sleep (the runtime logs each, at DEBUG)."""
    caplog.set_level(logging.DEBUG, logger="durable.timers")

    def count(workflow_id: str) -> int:
        return sum(
            1
            for r in caplog.records
            if getattr(r, "action", None) == "workflow.sleep"
            and getattr(r, "workflow_id", None) == workflow_id
        )

    return count


@durable.step(name="sleep.a")
async def step_a(x: int) -> int:
    CALLS["a"] += 1
    return x + 1


@durable.step(name="sleep.b")
async def step_b(x: int) -> int:
    CALLS["b"] += 1
    if "b" in FAIL_ONCE:
        FAIL_ONCE.discard("b")
        raise RuntimeError("b fails once")
    return x * 10


@durable.workflow(name="sleep.nap", registry=REG)
async def nap(x: int, seconds: float) -> int:
    a = await step_a(x)
    await durable.sleep(seconds)
    return await step_b(a)


@durable.workflow(
    name="sleep.retried",
    registry=REG,
    retry=durable.RetryPolicy(max_attempts=2, initial_delay=0.01),
)
async def retried(x: int) -> int:
    a = await step_a(x)
    await durable.sleep(timedelta(milliseconds=50))
    return await step_b(a)


@durable.workflow(name="sleep.days", registry=REG)
async def days(x: int) -> int:
    a = await step_a(x)
    await durable.sleep(timedelta(days=3))
    return await step_b(a)


@durable.workflow(name="sleep.quick", registry=REG)
async def quick(x: int) -> int:
    return await step_a(x)


@durable.workflow(name="sleep.no_wait", registry=REG)
async def no_wait(x: int) -> int:
    await durable.sleep(0)
    await durable.sleep(-5)
    await durable.sleep_until(datetime(2000, 1, 1, tzinfo=UTC))
    return await step_a(x)


@durable.workflow(name="sleep.diverge", registry=REG)
async def diverge() -> str:
    await step_a(0)
    if MODE[0] == "sleep-first":
        await durable.sleep(3600)
        await step_b(0)
    else:
        await step_b(0)
        await durable.sleep(3600)
    return "done"


@durable.step(name="sleep.sync.a")
def sync_a(x: int) -> int:
    CALLS["sync.a"] += 1
    return x + 1


@durable.workflow(name="sleep.sync", registry=REG)
def sync_nap(x: int) -> int:
    a = sync_a(x)
    durable.sleep_sync(0.05)
    durable.sleep_until_sync(datetime.now(UTC) - timedelta(days=1))  # not deterministic: past
    return sync_a(a)


@durable.workflow(name="sleep.wrong.async", registry=REG)
async def wrong_async() -> None:
    durable.sleep_sync(1)


@durable.workflow(name="sleep.wrong.sync", registry=REG)
def wrong_sync() -> None:
    durable.sleep(1)  # type: ignore[unused-coroutine]


@durable.workflow(name="sleep.bad", registry=REG)
async def bad_argument() -> None:
    await step_a(0)
    await durable.sleep("soon")  # type: ignore[arg-type]


def runtime(
    backend: durable.PersistentBackend, executor_id: str = "sleeper", *, recover: bool = True
) -> durable.Runtime:
    """A runtime for these tests (see :func:`support.quick_runtime` for ``recover``)."""
    return quick_runtime(backend, registry=REG, executor_id=executor_id, recover=recover)


async def sleeping(rt: durable.Runtime, workflow_id: str) -> bool:
    """The workflow suspended on a pending sleep, and nobody holds it."""
    steps = await rt.list_steps(workflow_id)
    info = await rt.get_workflow(workflow_id)
    return (
        info.status is WorkflowStatus.PENDING
        and bool(steps)
        and steps[-1].name == SLEEP_STEP
        and steps[-1].status is StepStatus.PENDING
    )


def wake_time(step: durable.StepRecord) -> datetime:
    assert step.name == SLEEP_STEP and isinstance(step.output, str)
    return datetime.fromisoformat(step.output)


# -- resuming ------------------------------------------------------------------------------


async def test_a_sleep_resumes_and_run_returns(
    backend_url: str, suspensions: Callable[[str], int]
) -> None:
    async with runtime(durable.connect(backend_url)) as rt:
        assert await rt.run(nap, 1, 0.05, workflow_id="n-1") == 20
        info = await rt.get_workflow("n-1")
        steps = await rt.list_steps("n-1")
    assert (CALLS["a"], CALLS["b"], suspensions("n-1")) == (1, 1, 1)
    # not a failed attempt, nor an interruption
    assert (info.status, info.attempts, info.interruptions) == (WorkflowStatus.SUCCEEDED, 1, 0)
    assert [(s.name, s.status) for s in steps] == [
        ("sleep.a", StepStatus.SUCCEEDED),
        (SLEEP_STEP, StepStatus.SUCCEEDED),
        ("sleep.b", StepStatus.SUCCEEDED),
    ]
    woke = wake_time(steps[1])
    assert steps[0].completed_at is not None and steps[2].started_at is not None
    assert steps[0].completed_at < woke <= steps[2].started_at


async def test_a_sleep_resumes_through_a_worker(
    backend_url: str, suspensions: Callable[[str], int]
) -> None:
    async with runtime(durable.connect(backend_url)) as rt:
        await rt.start_worker(concurrency=2, poll_interval=0.01)
        workflow_id = await rt.enqueue(nap, 2, 0.05)
        assert await rt.result(workflow_id, timeout=WAIT) == 30
        info = await rt.get_workflow(workflow_id)
    assert (CALLS["a"], CALLS["b"], suspensions(workflow_id)) == (1, 1, 1)
    assert (info.attempts, info.interruptions) == (1, 0)


async def test_workers_are_woken_when_a_sleep_is_due(backend_url: str) -> None:
    """Not at their next poll: this worker polls once an hour. The hand-back wakes it at once
    (too early, nothing is due); the process's timer wakes it again at the wake-up time."""
    async with runtime(durable.connect(backend_url)) as rt:
        await rt.start_worker(concurrency=2, poll_interval=3600)
        workflow_id = await rt.enqueue(nap, 2, 0.05)
        assert await rt.result(workflow_id, timeout=WAIT) == 30


async def test_a_replay_after_the_wake_up_does_not_sleep_again(
    backend_url: str, suspensions: Callable[[str], int]
) -> None:
    """The step after the sleep fails once: the second attempt replays the sleep (already
    over) without suspending, and runs only the failed step again."""
    FAIL_ONCE.add("b")
    async with runtime(durable.connect(backend_url)) as rt:
        await rt.start_worker(concurrency=2, poll_interval=0.01)
        await rt.enqueue(retried, 3, workflow_id="r-1")
        assert await rt.result("r-1", timeout=WAIT) == 40
        info = await rt.get_workflow("r-1")
        steps = await rt.list_steps("r-1")
    assert (CALLS["a"], CALLS["b"], suspensions("r-1")) == (1, 2, 1)
    assert (info.attempts, info.interruptions) == (2, 0)
    assert [s.name for s in steps] == ["sleep.a", SLEEP_STEP, "sleep.b"]


async def test_sleeps_whose_time_has_passed_go_on_at_once(
    backend_url: str, suspensions: Callable[[str], int]
) -> None:
    async with runtime(durable.connect(backend_url)) as rt:
        assert await rt.run(no_wait, 4, workflow_id="z-1") == 5
        steps = await rt.list_steps("z-1")
        info = await rt.get_workflow("z-1")
    assert suspensions("z-1") == 0
    assert info.attempts == 1
    assert [(s.name, s.status) for s in steps] == [
        (SLEEP_STEP, StepStatus.SUCCEEDED),
        (SLEEP_STEP, StepStatus.SUCCEEDED),
        (SLEEP_STEP, StepStatus.SUCCEEDED),
        ("sleep.a", StepStatus.SUCCEEDED),
    ]
    assert wake_time(steps[2]) == datetime(2000, 1, 1, tzinfo=UTC)


async def test_a_sync_workflow_sleeps(backend_url: str, suspensions: Callable[[str], int]) -> None:
    async with runtime(durable.connect(backend_url)) as rt:
        assert await rt.run(sync_nap, 1, workflow_id="s-1") == 3
        steps = await rt.list_steps("s-1")
        info = await rt.get_workflow("s-1")
    assert (CALLS["sync.a"], suspensions("s-1")) == (2, 1)
    assert (info.attempts, info.interruptions) == (1, 0)
    assert [(s.name, s.status) for s in steps] == [
        ("sleep.sync.a", StepStatus.SUCCEEDED),
        (SLEEP_STEP, StepStatus.SUCCEEDED),
        (SLEEP_STEP, StepStatus.SUCCEEDED),
        ("sleep.sync.a", StepStatus.SUCCEEDED),
    ]


# -- holding nothing while asleep ------------------------------------------------------------


async def test_a_sleeping_workflow_holds_no_claim_and_no_slot(backend_url: str) -> None:
    backend = durable.connect(backend_url)
    async with runtime(backend) as rt:
        worker = await rt.start_worker(concurrency=1, poll_interval=0.01)
        sleeper = await rt.enqueue(nap, 1, 3600.0)
        await eventually(lambda: sleeping(rt, sleeper), "the workflow to sleep")
        task = await backend.get_task(sleeper, WORKFLOW_TASK)
        assert (task.claimed_by, task.claim_expires_at) == (None, None)
        assert task.run_after > await backend.now() + timedelta(minutes=59)
        # the one slot is free: another workflow runs to its end while the first sleeps
        other = await rt.enqueue(quick, 7)
        assert await rt.result(other, timeout=WAIT) == 8
        assert worker.running == 0
        assert (await rt.get_workflow(sleeper)).status is WorkflowStatus.PENDING
        assert CALLS["b"] == 0
        await rt.cancel(sleeper)


async def test_a_sleeping_workflow_keeps_no_execution_state_in_memory(backend_url: str) -> None:
    """While it sleeps, nothing of the execution stays in this process: no context, no
    history (the wake-up timer runs in an empty context; before, it held the execution's
    context, and so its whole history, for the length of the sleep)."""
    backend = durable.connect(backend_url)
    async with runtime(backend) as rt:
        await rt.start_worker(concurrency=4, poll_interval=0.01)
        sleepers = [await rt.enqueue(nap, n, 3600.0) for n in range(5)]
        for sleeper in sleepers:
            await eventually(lambda s=sleeper: sleeping(rt, s), "the workflows to sleep")

        async def released() -> bool:  # the workers' tasks end just after the hand-backs
            gc.collect()
            # issubclass(type(o)), not isinstance: isinstance reads a lazy object's __class__
            # (Django's settings, once the integrations' tests imported it) and sets it up
            return not any(
                issubclass(type(o), ExecutionContext) and o.workflow_id in sleepers
                for o in gc.get_objects()
            )

        await eventually(released, "no execution context to be left in memory")
        for sleeper in sleepers:
            await rt.cancel(sleeper)


class FakeClock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


async def test_a_fake_clock_crosses_a_three_day_sleep() -> None:
    clock = FakeClock(datetime(2030, 1, 1, 12, 0, tzinfo=UTC))
    t0 = clock.now
    backend = durable.InMemoryBackend(clock=clock)
    async with runtime(backend) as rt:
        await rt.start_worker(concurrency=2, poll_interval=0.01)
        workflow_id = await rt.enqueue(days, 1)
        await eventually(lambda: sleeping(rt, workflow_id), "the workflow to sleep")
        steps = await rt.list_steps(workflow_id)
        assert wake_time(steps[-1]) == t0 + timedelta(days=3)
        clock.now = t0 + timedelta(days=3) - timedelta(milliseconds=1)
        backend.notify_work()
        await asyncio.sleep(0.1)  # workers look many times: nothing is due yet
        assert await sleeping(rt, workflow_id) and CALLS["b"] == 0
        clock.now = t0 + timedelta(days=3)
        assert await rt.result(workflow_id, timeout=WAIT) == 20
        info = await rt.get_workflow(workflow_id)
    assert (CALLS["a"], CALLS["b"]) == (1, 1)
    assert (info.attempts, info.interruptions) == (1, 0)
    assert info.completed_at == t0 + timedelta(days=3)


async def test_a_replay_that_reaches_a_pending_sleep_early_keeps_its_wake_up_time(
    suspensions: Callable[[str], int],
) -> None:
    """An executor that took the workflow before it was due (an explicit claim here; after a
    crash between the record and the hand-back, the lease's expiry) sleeps until the recorded
    time again, not for a new delta."""
    clock = FakeClock(datetime(2030, 1, 1, 12, 0, tzinfo=UTC))
    t0 = clock.now
    backend = durable.InMemoryBackend(clock=clock)
    async with runtime(backend, recover=False) as rt:
        workflow_id = await rt.enqueue(days, 1)
        for hours in (0, 1):
            clock.now = t0 + timedelta(hours=hours)
            assert await backend.claim_task(
                workflow_id, WORKFLOW_TASK, rt.executor_id, rt.claim_ttl
            )
            with pytest.raises(WorkflowSleeping) as slept:
                await rt.execute_claimed(days, workflow_id)
            assert slept.value.until == t0 + timedelta(days=3)
            task = await backend.get_task(workflow_id, WORKFLOW_TASK)
            assert task.run_after == t0 + timedelta(days=3)
        clock.now = t0 + timedelta(days=3)
        assert await backend.claim_task(workflow_id, WORKFLOW_TASK, rt.executor_id, rt.claim_ttl)
        assert await rt.execute_claimed(days, workflow_id) == 20
        steps = await rt.list_steps(workflow_id)
    assert wake_time(steps[1]) == t0 + timedelta(days=3)
    assert (CALLS["a"], CALLS["b"], suspensions(workflow_id)) == (1, 1, 2)


# -- divergence, flavours, arguments -----------------------------------------------------------


@pytest.mark.parametrize(
    ("recorded", "now"), [("sleep-first", "step-first"), ("step-first", "sleep-first")]
)
async def test_a_sleep_at_a_position_the_history_holds_otherwise_diverges(
    backend_url: str, recorded: str, now: str
) -> None:
    backend = durable.connect(backend_url)
    async with runtime(backend, recover=False) as rt:
        MODE[:] = [recorded]
        workflow_id = "d-1"
        await rt._create(diverge, workflow_id, [], {})  # as run() does: no retries
        assert await backend.claim_task(workflow_id, WORKFLOW_TASK, rt.executor_id, rt.claim_ttl)
        with pytest.raises(WorkflowSleeping):
            await rt.execute_claimed(diverge, workflow_id)
        MODE[:] = [now]  # the code changed while it slept
        assert await backend.claim_task(workflow_id, WORKFLOW_TASK, rt.executor_id, rt.claim_ttl)
        with pytest.raises(durable.NonDeterminismError, match="position 1"):
            await rt.execute_claimed(diverge, workflow_id)
        info = await rt.get_workflow(workflow_id)
    assert info.status is WorkflowStatus.FAILED
    assert info.error is not None and info.error.type.endswith("NonDeterminismError")


async def test_the_wrong_flavour_is_a_clear_error() -> None:
    async with runtime(durable.InMemoryBackend()) as rt:
        with pytest.raises(durable.DurableError, match=r"await durable.sleep\(...\)"):
            await rt.run(wrong_async)
        with pytest.raises(durable.DurableError, match=r"durable.sleep_sync\(\)"):
            await rt.run(wrong_sync)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: durable.sleep("soon"), "delta must be a number"),  # type: ignore[arg-type]
        (lambda: durable.sleep(True), "delta must be a number"),
        (lambda: durable.sleep(float("nan")), "delta must be finite"),
        (lambda: durable.sleep(timedelta(days=365 * 200)), "delta must be at most"),
        (lambda: durable.sleep_until(datetime(2030, 1, 1)), "when must be timezone-aware"),
        (lambda: durable.sleep_until("2030-01-01"), "when must be a timezone-aware datetime"),  # type: ignore[arg-type]
        (lambda: durable.sleep_until(3600), "when must be a timezone-aware datetime"),  # type: ignore[arg-type]
        (lambda: durable.sleep_sync(None), "delta must be a number"),  # type: ignore[arg-type]
        (lambda: durable.sleep_until_sync(datetime(2030, 1, 1)), "when must be timezone-aware"),
    ],
)
def test_bad_arguments_name_the_argument(call: Callable[[], Any], match: str) -> None:
    with pytest.raises(durable.InvalidArgumentError, match=match):
        call()


async def test_a_bad_argument_in_a_workflow_records_nothing(backend_url: str) -> None:
    async with runtime(durable.connect(backend_url)) as rt:
        with pytest.raises(durable.InvalidArgumentError, match="delta"):
            await rt.run(bad_argument, workflow_id="bad-1")
        steps = await rt.list_steps("bad-1")
    assert [s.name for s in steps] == ["sleep.a"]


async def test_outside_a_workflow_it_is_a_plain_sleep() -> None:
    await durable.sleep(0)
    await durable.sleep_until(datetime(2000, 1, 1, tzinfo=UTC))
    durable.sleep_sync(timedelta(0))
    durable.sleep_until_sync(datetime(2000, 1, 1, tzinfo=UTC))


# -- a worker killed while a workflow sleeps ---------------------------------------------------


@pytest.fixture
def workers(processes: Processes, tmp_path: Path) -> Callable[[str, str], subprocess.Popen[bytes]]:
    def start(url: str, executor_id: str) -> subprocess.Popen[bytes]:
        return processes(
            PROG,
            *("serve", "--url", url, "--executor-id", executor_id),
            "--log",
            str(tmp_path / "effects.log"),
            "--sleeps",
            str(tmp_path / "sleeps.log"),
            name=executor_id,
        )

    return start


@pytest.mark.slow
async def test_a_worker_killed_while_a_workflow_sleeps(
    db_url: str, tmp_path: Path, workers: Callable[[str, str], subprocess.Popen[bytes]]
) -> None:
    client = durable.Client(durable.connect(db_url), poll_interval=0.05)
    async with client:
        first = workers(db_url, "sleeper-1")
        workflow_id = await client.enqueue("sleepprog.nap.v1", 4, 3.0, workflow_id="nap-1")

        async def asleep() -> bool:
            steps = await client.list_steps(workflow_id)
            info = await client.get_workflow(workflow_id)
            # the worker logs the suspension right after the hand-back commits: wait for that
            # line too, so that the kill does not land between the two
            return (
                info.status is WorkflowStatus.PENDING
                and [(s.name, s.status) for s in steps]
                == [("nap.before", StepStatus.SUCCEEDED), (SLEEP_STEP, StepStatus.PENDING)]
                and (tmp_path / "sleeps.log").exists()
            )

        await eventually(asleep, "the workflow to sleep")
        os.kill(first.pid, signal.SIGKILL)
        assert first.wait(timeout=WAIT) == -signal.SIGKILL
        woke = wake_time((await client.list_steps(workflow_id))[1])
        assert woke > datetime.now(UTC)  # it was killed while the workflow slept

        second = workers(db_url, "sleeper-2")  # another executor id: nothing to take over
        assert await client.result(workflow_id, timeout=WAIT) == {"n": 4, "out": 50}
        info = await client.get_workflow(workflow_id)
        steps = await client.list_steps(workflow_id)
        second.send_signal(signal.SIGTERM)
        assert second.wait(timeout=WAIT) == 0

    effects = [line.split() for line in (tmp_path / "effects.log").read_text().splitlines()]
    assert [(e[0], e[1], int(e[2])) for e in effects] == [
        (workflow_id, "before", first.pid),
        (workflow_id, "after", second.pid),
    ]
    assert float(effects[1][3]) >= woke.timestamp() - 0.001  # not before its wake-up time
    sleeps = (tmp_path / "sleeps.log").read_text().splitlines()
    assert sleeps == [f"{first.pid} {workflow_id}"]  # it slept once, in the first worker
    assert [(s.name, s.status) for s in steps] == [
        ("nap.before", StepStatus.SUCCEEDED),
        (SLEEP_STEP, StepStatus.SUCCEEDED),
        ("nap.after", StepStatus.SUCCEEDED),
    ]
    assert wake_time(steps[1]) == woke
    # the kill interrupted nothing: the sleeping workflow was held by nobody
    assert (info.attempts, info.interruptions) == (1, 0)
