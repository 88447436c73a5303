"""Timeouts and deadlines: ``@durable.workflow(timeout=...)``, a start's ``timeout`` /
``deadline``, ``@durable.step(timeout=...)``, and cancellation down to a workflow's children.

* a workflow that sleeps past its 7-day timeout is cancelled when the deadline comes, on the
  in-memory backend's fake clock (crossed in milliseconds): its hand-back is due at the deadline,
  not later, and the claim past the deadline cancels it, recording DeadlineExceededError;
* one no worker runs (queued for a name nobody serves; its runtime closed while it sleeps) is
  cancelled by ``Client.cancel_expired`` and by a worker's sweep, on SQLite files and PostgreSQL;
* a running one is stopped by its executor at the deadline (an async body cancelled where it
  awaits, a sync one at its next step), its child workflows with it; children inherit the
  deadline; ``Client.cancel`` of a parent cancels its children;
* a step attempt past its timeout fails with StepTimeoutError and is retried by its policy
  (async, sync in a thread, sync from a sync workflow; a late result is ignored);
* bad arguments raise InvalidArgumentError naming the argument.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from support import Processes, eventually

import durable
from durable.errors import (
    DeadlineExceededError,
    InvalidArgumentError,
    StepTimeoutError,
    WorkflowCancelledError,
)
from durable.models import WORKFLOW_TASK, StepStatus, WorkflowStatus
from durable.timers import SLEEP_STEP

REG = durable.Registry()
CALLS: Counter[str] = Counter()
HANGS: Counter[str] = Counter()  # how many more attempts of a step hang
WAIT = 60.0  # an upper bound for anything the tests wait for, never reached when green
RELEASE = threading.Event()  # lets the abandoned sync attempts end
GATE: list[asyncio.Event] = []  # lets the hanging async step end (one per test)
DEADLINE_TYPE = "durable.errors.DeadlineExceededError"
#: Seconds: the deadline of a workflow that must reach a step before it (and be stopped there):
#: room for a pause of the machine of up to 3 s on the way (CI's is busy).
ROOM = 5.0
PROG = Path(__file__).with_name("deadlineprog.py")


@pytest.fixture(autouse=True)
def _reset() -> Iterator[None]:
    CALLS.clear()
    HANGS.clear()
    RELEASE.clear()
    GATE[:] = [asyncio.Event()]
    yield
    RELEASE.set()


class FakeClock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@durable.step(name="to.work")
async def work(x: int) -> int:
    CALLS["work"] += 1
    return x + 1


@durable.step(name="to.hang")
async def hang(x: int) -> int:
    CALLS["hang"] += 1
    await GATE[0].wait()  # until the test lets it go (or it is cancelled)
    CALLS["hang.done"] += 1
    return x


@durable.workflow(name="to.approval", registry=REG, timeout=timedelta(days=7))
async def approval(x: int) -> int:
    a = await work(x)
    await durable.sleep(timedelta(days=30))
    return await work(a)


@durable.workflow(name="to.napper", registry=REG)
async def napper(x: int) -> int:
    a = await work(x)
    await durable.sleep(3600)
    return await work(a)


@durable.workflow(name="to.child", registry=REG)
async def child(x: int) -> int:
    return await hang(x)


@durable.workflow(name="to.parent", registry=REG)
async def parent(x: int) -> int:
    a = await work(x)
    return await child(a)


@durable.workflow(name="to.busy", registry=REG)
async def busy(x: int) -> int:
    return await hang(x)


@durable.step(name="to.sync.slow")
def sync_slow(x: int) -> int:
    CALLS["sync.slow"] += 1
    RELEASE.wait(WAIT)
    return x


@durable.workflow(name="to.sync.busy", registry=REG)
def sync_busy(x: int) -> int:
    sync_slow(x)
    CALLS["sync.after"] += 1
    return x


@durable.step(name="to.flaky", timeout=0.1, max_attempts=3, initial_delay=0.01)
async def flaky(x: int) -> int:
    CALLS["flaky"] += 1
    if HANGS["flaky"] > 0:
        HANGS["flaky"] -= 1
        await asyncio.sleep(3600)
    return x * 2


@durable.step(name="to.flaky.sync", timeout=timedelta(milliseconds=100), max_attempts=2)
def flaky_sync(x: int) -> int:
    CALLS["flaky.sync"] += 1
    if HANGS["flaky.sync"] > 0:
        HANGS["flaky.sync"] -= 1
        RELEASE.wait(WAIT)
        CALLS["flaky.sync.late"] += 1
        return -1  # the abandoned attempt's result, never recorded
    return x * 3


@durable.step(name="to.never", timeout=0.05)
async def never(x: int) -> int:
    await asyncio.sleep(3600)
    return x


@durable.workflow(name="to.flaky.wf", registry=REG)
async def flaky_wf(x: int) -> int:
    return await flaky(x) + await flaky_sync.aio(x)


@durable.workflow(name="to.flaky.sync.wf", registry=REG)
def flaky_sync_wf(x: int) -> int:
    return flaky_sync(x)


@durable.workflow(name="to.never.wf", registry=REG)
async def never_wf(x: int) -> int:
    try:
        return await never(x)
    except TimeoutError as exc:  # a StepTimeoutError is a TimeoutError
        return -len(str(exc))


def runtime(backend: durable.PersistentBackend, executor_id: str = "timer") -> durable.Runtime:
    rt = durable.Runtime(
        backend, executor_id=executor_id, registry=REG, poll_interval=0.01, claim_ttl=5.0
    )
    rt.deadline_sweep_interval = 0.02
    return rt


async def sleeping(rt: durable.Runtime | durable.Client, workflow_id: str) -> bool:
    steps = await rt.list_steps(workflow_id)
    info = await rt.get_workflow(workflow_id)
    return (
        info.status is WorkflowStatus.PENDING
        and bool(steps)
        and steps[-1].name == SLEEP_STEP
        and steps[-1].status is StepStatus.PENDING
    )


def assert_expired(info: durable.WorkflowInfo) -> None:
    assert info.status is WorkflowStatus.CANCELLED, info
    assert info.error is not None and info.error.type == DEADLINE_TYPE, info.error
    assert "deadline" in info.error.message and repr(info.id) in info.error.message


# -- a workflow's timeout, crossed on a fake clock ------------------------------------------


async def test_a_seven_day_timeout_cancels_a_sleeping_workflow_on_a_fake_clock() -> None:
    clock = FakeClock(datetime(2030, 1, 1, 12, 0, tzinfo=UTC))
    t0 = clock.now
    backend = durable.InMemoryBackend(clock=clock)
    async with runtime(backend) as rt:
        rt.deadline_sweep_interval = 3600.0  # the claim past the deadline does it here
        await rt.start_worker(concurrency=2, poll_interval=0.01)
        workflow_id = await rt.enqueue(approval, 1)
        await eventually(lambda: sleeping(rt, workflow_id), "the workflow to sleep")
        info = await rt.get_workflow(workflow_id)
        assert info.deadline == t0 + timedelta(days=7)
        # the sleep recorded 30 days, but the hand-back is due at the deadline, not later
        task = await backend.get_task(workflow_id, WORKFLOW_TASK)
        assert task.run_after == t0 + timedelta(days=7)
        clock.now = t0 + timedelta(days=7) - timedelta(milliseconds=1)
        backend.notify_work()
        await asyncio.sleep(0.1)
        assert await sleeping(rt, workflow_id)
        clock.now = t0 + timedelta(days=7)
        backend.notify_work()
        with pytest.raises(WorkflowCancelledError, match="deadline") as caught:
            await rt.result(workflow_id, timeout=WAIT)
        info = await rt.get_workflow(workflow_id)
    assert_expired(info)
    assert caught.value.error == info.error
    assert info.completed_at == t0 + timedelta(days=7)
    assert CALLS["work"] == 1  # the step after the sleep never ran


async def test_a_start_gives_its_own_timeout_or_deadline() -> None:
    clock = FakeClock(datetime(2030, 1, 1, 12, 0, tzinfo=UTC))
    t0 = clock.now
    async with durable.Client(durable.InMemoryBackend(clock=clock)) as client:
        own = await client.enqueue(approval, 1, timeout=timedelta(days=30))
        assert (await client.get_workflow(own)).deadline == t0 + timedelta(days=30)
        by_name = await client.enqueue("to.approval", 1)  # the decorator is not known by name
        assert (await client.get_workflow(by_name)).deadline is None
        seconds = await client.enqueue("to.approval", 1, timeout=90)
        assert (await client.get_workflow(seconds)).deadline == t0 + timedelta(seconds=90)
        at = t0 + timedelta(hours=5)
        earlier = await client.enqueue(approval, 1, deadline=at)  # before now + 7 days
        assert (await client.get_workflow(earlier)).deadline == at
        later = await client.enqueue(approval, 1, deadline=t0 + timedelta(days=9))
        assert (await client.get_workflow(later)).deadline == t0 + timedelta(days=7)


async def test_a_batch_gives_timeouts_and_deadlines_per_row() -> None:
    clock = FakeClock(datetime(2030, 1, 1, 12, 0, tzinfo=UTC))
    t0 = clock.now
    at = t0 + timedelta(hours=2)
    async with durable.Client(durable.InMemoryBackend(clock=clock)) as client:
        ids = await client.enqueue_many(
            approval,
            [
                (1,),  # the batch's timeout
                durable.Enqueue(args=(2,), timeout=timedelta(hours=1)),  # its own
                durable.Enqueue(args=(3,), deadline=at),  # its own deadline, the batch's timeout
                durable.Enqueue(fn="to.approval", args=(4,)),  # by name: the batch's only
            ],
            timeout=timedelta(days=1),
        )
        deadlines = [(await client.get_workflow(i)).deadline for i in ids]
        assert deadlines == [
            t0 + timedelta(days=1),
            t0 + timedelta(hours=1),
            at,
            t0 + timedelta(days=1),
        ]
        plain = await client.enqueue_many(approval, [(5,)])  # the workflow's own, 7 days
        assert (await client.get_workflow(plain[0])).deadline == t0 + timedelta(days=7)
        with pytest.raises(InvalidArgumentError, match=r"inputs\[0\]: .*deadline"):
            await client.enqueue_many(
                approval, [durable.Enqueue(args=(1,), deadline=datetime(2030, 1, 1))]
            )
        with pytest.raises(InvalidArgumentError, match="timeout"):
            await client.enqueue_many(approval, [(1,)], timeout=-1)


# -- cancelled while no worker runs it --------------------------------------------------------


async def test_a_sleeping_workflow_whose_runtime_is_gone_is_cancelled(db_url: str) -> None:
    async with runtime(durable.connect(db_url), "first") as rt:
        await rt.start_worker(concurrency=2, poll_interval=0.01)
        # long enough to be seen asleep on a loaded machine (at 600 ms, then at 3 s, its own
        # runtime's sweep could cancel it first, and it was never seen asleep)
        workflow_id = await rt.enqueue(napper, 1, timeout=ROOM)
        await eventually(lambda: sleeping(rt, workflow_id), "the workflow to sleep")
    # no runtime, no worker: the client cancels it once its deadline has passed
    async with durable.Client(db_url) as client:
        info = await client.get_workflow(workflow_id)
        assert info.deadline is not None
        early = await client.cancel_expired()
        if early:  # a machine slow enough to get here after the deadline: still correct
            assert [w.id for w in early] == [workflow_id]
        else:
            deadline = info.deadline

            async def passed() -> bool:
                return await client.backend.now() >= deadline

            await eventually(passed, "the deadline to pass")
            [expired] = await client.cancel_expired()
            assert expired.id == workflow_id
        assert_expired(await client.get_workflow(workflow_id))
        assert await client.cancel_expired() == []
        with pytest.raises(WorkflowCancelledError):
            await client.result(workflow_id, timeout=WAIT)


async def test_a_workers_sweep_cancels_what_nobody_runs(db_url: str) -> None:
    async with runtime(durable.connect(db_url)) as rt:
        await rt.start_worker(concurrency=2, poll_interval=0.01, names=["to.napper"])
        queued = await rt.enqueue(
            "to.unserved", 1, timeout=0.3, served_elsewhere=True
        )  # no worker serves it: it waits in the queue until it expires
        sleeper = await rt.enqueue(napper, 1, timeout=0.5)

        async def both_cancelled() -> bool:
            statuses = [(await rt.get_workflow(i)).status for i in (queued, sleeper)]
            return statuses == [WorkflowStatus.CANCELLED] * 2

        await eventually(both_cancelled, "the sweep to cancel both")
        assert_expired(await rt.get_workflow(queued))
        assert_expired(await rt.get_workflow(sleeper))


@pytest.fixture
def workers(processes: Processes, tmp_path: Path) -> Callable[[str, str], subprocess.Popen[bytes]]:
    def start(url: str, executor_id: str) -> subprocess.Popen[bytes]:
        return processes(
            PROG,
            *("serve", "--url", url, "--executor-id", executor_id),
            "--log",
            str(tmp_path / "effects.log"),
            name=executor_id,
        )

    return start


@pytest.mark.slow
async def test_a_worker_killed_mid_run_leaves_it_to_another_workers_sweep(
    db_url: str, tmp_path: Path, workers: Callable[[str, str], subprocess.Popen[bytes]]
) -> None:
    """SIGKILL the worker running a workflow with a deadline: its lease (60 s) outlives the
    deadline (2 s), yet once the deadline passes another worker's sweep cancels it, without
    running its step again."""
    effects = tmp_path / "effects.log"
    async with durable.Client(durable.connect(db_url), poll_interval=0.05) as client:
        first = workers(db_url, "dl-1")

        async def serving() -> bool:  # before the enqueue: the 2 s deadline is not its start's
            return any(e.id == "dl-1" for e in await client.list_executors())

        await eventually(serving, "the first worker to start")
        workflow_id = await client.enqueue("deadlineprog.slow.v1", workflow_id="slow", timeout=2)

        async def started() -> bool:
            return await asyncio.to_thread(effects.exists)

        await eventually(started, "the step to start")
        os.kill(first.pid, signal.SIGKILL)
        assert await asyncio.to_thread(first.wait, WAIT) == -signal.SIGKILL
        info = await client.get_workflow(workflow_id)
        assert info.status is WorkflowStatus.RUNNING and info.deadline is not None
        task = await client.backend.get_task(workflow_id, WORKFLOW_TASK)
        assert task.claim_expires_at is not None and task.claim_expires_at > info.deadline
        second = workers(db_url, "dl-2")
        with pytest.raises(WorkflowCancelledError, match="deadline"):
            await client.result(workflow_id, timeout=WAIT)
        cancelled = await client.get_workflow(workflow_id)
        assert cancelled.completed_at is not None and cancelled.completed_at >= info.deadline
        second.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(second.wait, WAIT) == 0
    assert_expired(cancelled)
    lines = (await asyncio.to_thread(effects.read_text)).splitlines()
    assert lines == [f"{workflow_id} {first.pid}"]  # the step never ran again


# -- cancelled while it runs --------------------------------------------------------------------


async def test_a_running_workflow_is_stopped_at_its_deadline_with_its_child(
    backend_url: str,
) -> None:
    async with runtime(durable.connect(backend_url)) as rt:
        started = time.monotonic()
        with pytest.raises(WorkflowCancelledError, match="deadline"):
            # room for the child to start (at 1.5 s a loaded machine's pause of a second or
            # two came first, and the child did not exist: WorkflowNotFoundError 'p/1')
            await rt.run(parent, 1, workflow_id="p", timeout=ROOM)
        assert time.monotonic() - started < WAIT / 2
        info = await rt.get_workflow("p")
        assert_expired(info)
        kid = await rt.get_workflow("p/1")
        assert kid.deadline == info.deadline  # inherited
        # cancelled with its parent, or by its own drive's timer for the same deadline when
        # that one fired first (the two are due at the same moment): either way for it
        assert kid.status is WorkflowStatus.CANCELLED
        assert info.error is not None and kid.error is not None
        assert kid.error.type == DEADLINE_TYPE
        assert kid.error.message in (
            info.error.message,
            info.error.message.replace(repr(info.id), repr(kid.id)),
        )
        steps = await rt.list_steps("p")
        assert [(s.name, s.status) for s in steps] == [
            ("to.work", StepStatus.SUCCEEDED),
            ("to.child", StepStatus.PENDING),
        ]
        assert await rt.list_steps("p/1") == []  # the hanging step was cancelled, not recorded
    assert (CALLS["hang"], CALLS["hang.done"]) == (1, 0)


CLOCKS: list[FakeClock] = []


@durable.step(name="to.advance")
async def advance(seconds: float) -> float:
    CLOCKS[0].now += timedelta(seconds=seconds)
    return seconds


@durable.workflow(name="to.late.parent", registry=REG)
async def late_parent(x: int) -> int:
    await advance(0.4)  # the child starts with 0.1 s of the inherited deadline left
    return await child(x)


@durable.workflow(name="to.own.child", registry=REG, timeout=0.1)
async def own_child(x: int) -> int:
    return await hang(x)


@durable.workflow(name="to.patient.parent", registry=REG)
async def patient_parent(x: int) -> str:
    try:
        return str(await own_child(x))
    except WorkflowCancelledError as exc:
        return f"child gave up: {exc.error.type if exc.error else None}"


async def test_a_child_that_expires_first_with_the_inherited_deadline_expires_its_parent() -> None:
    clock = FakeClock(datetime(2030, 1, 1, 12, 0, tzinfo=UTC))
    CLOCKS[:] = [clock]
    t0 = clock.now
    async with runtime(durable.InMemoryBackend(clock=clock)) as rt:

        async def the_deadline_passes() -> None:  # on the fake clock, as the child expires
            await eventually(lambda: _true(CALLS["hang"] == 1), "the child's step to start")
            clock.now = t0 + timedelta(seconds=0.5)

        mover = asyncio.create_task(the_deadline_passes())
        with pytest.raises(WorkflowCancelledError, match="deadline"):
            await rt.run(late_parent, 1, workflow_id="lp", timeout=0.5)
        await mover
        assert_expired(await rt.get_workflow("lp"))
        assert_expired(await rt.get_workflow("lp/1"))
        steps = await rt.list_steps("lp")
        # the child's expiry is the parent's own: not recorded as a failure of its step
        assert [(s.name, s.status) for s in steps] == [
            ("to.advance", StepStatus.SUCCEEDED),
            ("to.child", StepStatus.PENDING),
        ]
        info = await rt.get_workflow("lp")
    assert info.attempts == 1


async def test_a_child_that_expires_by_its_own_timeout_fails_its_step(backend_url: str) -> None:
    async with runtime(durable.connect(backend_url)) as rt:
        result = await rt.run(patient_parent, 1, workflow_id="pp", timeout=WAIT)
        parent_info = await rt.get_workflow("pp")
        kid = await rt.get_workflow("pp/0")
        steps = await rt.list_steps("pp")
    assert result == f"child gave up: {DEADLINE_TYPE}"
    assert parent_info.status is WorkflowStatus.SUCCEEDED
    assert kid.deadline is not None and parent_info.deadline is not None
    assert kid.deadline < parent_info.deadline  # its own timeout came first
    assert_expired(kid)
    assert [(s.name, s.status) for s in steps] == [("to.own.child", StepStatus.FAILED)]


async def test_a_sync_workflow_stops_at_its_next_step_after_its_deadline(
    backend_url: str,
) -> None:
    async with runtime(durable.connect(backend_url)) as rt:
        run = asyncio.ensure_future(rt.run(sync_busy, 1, workflow_id="s", timeout=ROOM))
        # the deadline passes while the step's body runs (it waits for RELEASE)
        await eventually(lambda: _true(CALLS["sync.slow"] == 1), "the step to start")
        with pytest.raises(WorkflowCancelledError, match="deadline"):
            await run
        assert_expired(await rt.get_workflow("s"))
        RELEASE.set()  # its thread goes on to its next write, which is refused
        await asyncio.sleep(0.2)
        assert await rt.list_steps("s") == []
        assert (await rt.get_workflow("s")).status is WorkflowStatus.CANCELLED
    assert CALLS["sync.after"] == 0


async def _true(value: bool) -> bool:
    return value


async def test_cancelling_a_parent_cancels_its_children(backend_url: str) -> None:
    async with runtime(durable.connect(backend_url)) as rt:
        await rt.start_worker(concurrency=4, poll_interval=0.01)
        workflow_id = await rt.enqueue(parent, 1, workflow_id="parent")

        async def child_running() -> bool:
            try:
                return (await rt.get_workflow("parent/1")).status is WorkflowStatus.RUNNING
            except durable.WorkflowNotFoundError:
                return False

        await eventually(child_running, "the child to run")
        await eventually(lambda: _true(CALLS["hang"] == 1), "the child's step to start")
        info = await rt.client.cancel(workflow_id)
        assert info.status is WorkflowStatus.CANCELLED and info.error is None
        kid = await rt.get_workflow("parent/1")
        assert kid.status is WorkflowStatus.CANCELLED
        with pytest.raises(WorkflowCancelledError):
            await rt.result("parent/1", timeout=WAIT)
        GATE[0].set()  # the child's step ends; its record is refused
        await eventually(lambda: _true(CALLS["hang.done"] == 1), "the step to end")
        await asyncio.sleep(0.1)
        assert await rt.list_steps("parent/1") == []
        assert (await rt.get_workflow("parent/1")).status is WorkflowStatus.CANCELLED


# -- step timeouts ------------------------------------------------------------------------------


async def test_a_step_attempt_past_its_timeout_fails_and_is_retried(backend_url: str) -> None:
    HANGS["flaky"] = 2
    HANGS["flaky.sync"] = 1
    async with runtime(durable.connect(backend_url)) as rt:
        assert await rt.run(flaky_wf, 5, workflow_id="f") == 10 + 15
        steps = await rt.list_steps("f")
    assert [(s.name, s.status, s.attempts) for s in steps] == [
        ("to.flaky", StepStatus.SUCCEEDED, 3),
        ("to.flaky.sync", StepStatus.SUCCEEDED, 2),
    ]
    assert CALLS["flaky"] == 3 and CALLS["flaky.sync"] == 2
    RELEASE.set()  # the abandoned sync attempt ends; its result is ignored
    await eventually(lambda: _true(CALLS["flaky.sync.late"] == 1), "the late attempt to end")


async def test_a_sync_step_in_a_sync_workflow_times_out(backend_url: str) -> None:
    HANGS["flaky.sync"] = 1
    async with runtime(durable.connect(backend_url)) as rt:
        assert await rt.run(flaky_sync_wf, 2, workflow_id="fs") == 6
        [record] = await rt.list_steps("fs")
    assert (record.status, record.attempts, record.output) == (StepStatus.SUCCEEDED, 2, 6)


async def test_a_step_that_always_times_out_records_a_clear_error(backend_url: str) -> None:
    async with runtime(durable.connect(backend_url)) as rt:
        result = await rt.run(never_wf, 1, workflow_id="n")
        [record] = await rt.list_steps("n")
    assert record.status is StepStatus.FAILED and record.error is not None
    assert record.error.type == "durable.errors.StepTimeoutError"
    assert "'to.never'" in record.error.message and "timeout" in record.error.message
    assert result == -len(record.error.message)
    assert issubclass(StepTimeoutError, TimeoutError)


@durable.step(name="to.stuck.sync", timeout=0.05, max_attempts=12, initial_delay=0)
def stuck_sync() -> int:
    CALLS["stuck"] += 1
    RELEASE.wait(WAIT)  # never returns in time: every attempt is abandoned
    return 0


@durable.step(name="to.quick.sync")
def quick_sync(x: int) -> int:
    CALLS["quick"] += 1
    return x + 1


@durable.workflow(name="to.stuck.wf", registry=REG, max_attempts=1)
async def stuck_wf() -> int:
    try:
        return await stuck_sync.aio()
    except TimeoutError:
        return -1


@durable.workflow(name="to.quick.wf", registry=REG)
async def quick_wf(x: int) -> int:
    return await quick_sync.aio(x)


async def test_abandoned_sync_attempts_leave_the_other_sync_steps_their_threads(
    sqlite_url: str,
) -> None:
    """Each abandoned attempt of a sync step awaited from async code kept a thread of
    asyncio's default pool (6 on a 2-core machine): once 12 had timed out, no other sync
    step of the process started (one waited for ever). An attempt with a timeout now runs in
    a thread of its own, and the others in the runtime's ``max_threads``."""
    async with runtime(durable.connect(sqlite_url)) as rt:
        assert await rt.run(stuck_wf, workflow_id="stuck") == -1
        assert CALLS["stuck"] == 12
        quick = asyncio.ensure_future(
            asyncio.gather(*(rt.run(quick_wf, n, workflow_id=f"q{n}") for n in range(8)))
        )
        try:
            assert await asyncio.wait_for(asyncio.shield(quick), 20) == [n + 1 for n in range(8)]
        finally:
            RELEASE.set()  # the abandoned attempts end (their results are ignored)
            await quick
    assert CALLS["quick"] == 8


# -- bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [0, -1, timedelta(0), timedelta(seconds=-1), "soon", True, 1e300])
def test_a_bad_timeout_names_the_argument(bad: Any) -> None:
    with pytest.raises(InvalidArgumentError, match="timeout"):
        durable.workflow(name="to.bad", registry=durable.Registry(), timeout=bad)
    with pytest.raises(InvalidArgumentError, match="timeout"):
        durable.step(name="to.bad.step", timeout=bad)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"timeout": 0}, "timeout"),
        ({"timeout": "1h"}, "timeout"),
        ({"timeout": float("nan")}, "timeout"),
        ({"deadline": datetime(2030, 1, 1)}, "deadline"),
        ({"deadline": "2030-01-01T00:00:00+00:00"}, "deadline"),
    ],
)
async def test_a_bad_start_option_names_it_and_writes_nothing(
    options: dict[str, Any], match: str
) -> None:
    backend = durable.InMemoryBackend()
    async with durable.Client(backend) as client:
        with pytest.raises(InvalidArgumentError, match=match):
            await client.enqueue(approval, 1, **options)
        async with runtime(backend) as rt:
            with pytest.raises(InvalidArgumentError, match=match):
                await rt.enqueue(approval, 1, **options)
        assert backend.workflow_ids() == []


def test_the_errors_are_public() -> None:
    assert durable.DeadlineExceededError is DeadlineExceededError
    assert durable.StepTimeoutError is StepTimeoutError
    assert issubclass(DeadlineExceededError, durable.DurableError)
