"""How attempts end, and what the next attempt (or a redrive) runs again, on every backend.

* a database outage while checkpointing hands the attempt back, due again after a short pause,
  without counting it; if even the hand-back cannot reach the database, the worker does not
  hang: the lease expires and the execution is resumed;
* interrupted attempts (executor died, lease lost) are counted apart from failed ones, with
  their own limit (``max_recoveries``), so crashes do not use up the failure budget (worker
  processes of tests/workerprog.py SIGKILLed mid-step three times);
* a failed step whose failure ended the attempt runs again on the next attempt and on a redrive
  wherever it is (beside a recorded step in ``asyncio.gather``, a ``durable.map`` item); a
  failure the workflow handled keeps replaying;
* a child workflow that failed is redriven by its parent's next attempt;
* a return value that cannot be stored fails the execution at once.

Retries are made due at once with a retry policy without delay, and the outage pause is
shortened, so nothing waits on a clock.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest

import durable
import durable.runtime
from durable.context import rebuild_exception
from durable.models import WORKFLOW_TASK, StepStatus, WorkflowStatus

T = TypeVar("T")

WAIT = 60.0  # an upper bound for anything the tests wait for, never reached when green
WORKERPROG = Path(__file__).with_name("workerprog.py")
PIPELINE = "workerprog.pipeline.v1"  # served by workerprog.py, not registered here
REG = durable.Registry()
CALLS: Counter[str] = Counter()
RUNTIMES: list[durable.Runtime] = []
AT_ONCE = durable.RetryPolicy(max_attempts=3, initial_delay=0.0)


class Boom(Exception):
    pass


@pytest.fixture(autouse=True)
def _reset() -> Iterator[None]:
    CALLS.clear()
    RUNTIMES.clear()
    yield


# -- steps and workflows -------------------------------------------------------------------------


@durable.step(name="tests.retries.first")
async def first(x: int) -> int:
    CALLS["first"] += 1
    return x + 1


@durable.step(name="tests.retries.second")
async def second(x: int) -> int:
    CALLS["second"] += 1
    return x * 10


@durable.workflow(name="tests.retries.two_steps.v1", registry=REG)
async def two_steps(x: int) -> int:
    return await second(await first(x))


@durable.step(name="tests.retries.first_sync")
def first_sync(x: int) -> int:
    CALLS["first"] += 1
    return x + 1


@durable.step(name="tests.retries.second_sync")
def second_sync(x: int) -> int:
    CALLS["second"] += 1
    return x * 10


@durable.workflow(name="tests.retries.two_steps_sync.v1", registry=REG)
def two_steps_sync(x: int) -> int:
    return second_sync(first_sync(x))


@durable.step(name="tests.retries.flaky_beside")
async def flaky_beside() -> str:
    """Fails the first time, after the step started beside it was recorded."""
    CALLS["flaky_beside"] += 1
    if CALLS["flaky_beside"] == 1:
        backend = RUNTIMES[0].backend
        workflow_id = durable.workflow_id()

        async def sibling_recorded() -> bool:
            steps = await backend.list_steps(workflow_id)
            return any(s.position == 1 and s.status is StepStatus.SUCCEEDED for s in steps)

        await until(sibling_recorded, "the step beside it to be recorded")
        raise Boom("transient")
    return "flaky"


@durable.step(name="tests.retries.steady")
async def steady() -> str:
    CALLS["steady"] += 1
    return "steady"


@durable.workflow(name="tests.retries.gathered.v1", registry=REG, retry=AT_ONCE)
async def gathered() -> str:
    a, b = await asyncio.gather(flaky_beside(), steady())
    return f"{a}+{b}"


@durable.workflow(name="tests.retries.gathered_once.v1", registry=REG, max_attempts=1)
async def gathered_once() -> str:
    a, b = await asyncio.gather(flaky_beside(), steady())
    return f"{a}+{b}"


@durable.step(name="tests.retries.item")
async def item(x: int) -> int:
    CALLS[f"item-{x}"] += 1
    if x in (0, 1) and CALLS[f"item-{x}"] == 1:
        raise Boom(f"item {x} failed once")
    return x * x


REG.register_step(item)


@durable.workflow(name="tests.retries.mapped.v1", registry=REG, retry=AT_ONCE)
async def mapped(n: int) -> int:
    return sum(await durable.map(item, range(n)))


@durable.step(name="tests.retries.always_fails")
async def always_fails() -> str:
    CALLS["always_fails"] += 1
    raise Boom("always")


@durable.step(name="tests.retries.fallback")
async def fallback() -> str:
    CALLS["fallback"] += 1
    return "fallback"


@durable.step(name="tests.retries.fails_once")
async def fails_once(value: str) -> str:
    CALLS["fails_once"] += 1
    if CALLS["fails_once"] == 1:
        raise Boom("once")
    return f"done({value})"


@durable.workflow(name="tests.retries.handled.v1", registry=REG, retry=AT_ONCE)
async def handled() -> str:
    try:
        a, _ = await asyncio.gather(always_fails(), steady())
    except Boom:
        a = await fallback()
    return await fails_once(a)


@durable.step(name="tests.retries.child_step")
async def child_step(x: int) -> int:
    CALLS["child_step"] += 1
    if CALLS["child_step"] == 1:
        raise Boom("the child failed once")
    return x * 2


@durable.workflow(name="tests.retries.child.v1", registry=REG)
async def child(x: int) -> int:
    await first(x)
    return await child_step(x)


@durable.workflow(name="tests.retries.parent.v1", registry=REG, retry=AT_ONCE)
async def parent(x: int) -> int:
    return await child(x) + 1


@durable.workflow(name="tests.retries.parent_once.v1", registry=REG, max_attempts=1)
async def parent_once(x: int) -> int:
    return await child(x) + 1


@durable.workflow(name="tests.retries.crash_tolerant.v1", registry=REG)
async def crash_tolerant(x: int) -> int:
    return await first(x)


@durable.workflow(name="tests.retries.crash_prone.v1", registry=REG, max_recoveries=2)
async def crash_prone(x: int) -> int:
    return await first(x)


class Opaque:
    """A value no serializer stores."""

    def __reduce__(self) -> Any:
        raise TypeError("Opaque values cannot be stored")


@durable.workflow(name="tests.retries.unstorable.v1", registry=REG)
async def unstorable(x: int) -> Any:
    await first(x)
    return Opaque()


# -- helpers -------------------------------------------------------------------------------------


def runtime(backend: durable.PersistentBackend, **options: Any) -> durable.Runtime:
    options.setdefault("recover", False)
    options.setdefault("poll_interval", 0.02)
    rt = durable.Runtime(backend, executor_id="exec-1", registry=REG, **options)
    RUNTIMES.append(rt)
    return rt


async def until(check: Callable[[], Awaitable[T]], what: str, timeout: float = WAIT) -> T:
    """Poll ``check`` until it returns something truthy, and return that."""
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


async def steps_of(rt: durable.Runtime, workflow_id: str) -> list[tuple[str, StepStatus]]:
    return [(s.name, s.status) for s in await rt.list_steps(workflow_id)]


# -- 2. outages ----------------------------------------------------------------------------------


def cut_off_once(backend: durable.PersistentBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the first record of the second step fail as if the database had gone away (from
    the event loop, and from a sync workflow's thread where the backend records there)."""
    record_step, record_step_blocking = backend.record_step, backend.record_step_blocking

    def outage(step: durable.StepRecord) -> None:
        if step.name in (second.name, second_sync.name) and CALLS["outage"] == 0:
            CALLS["outage"] += 1
            raise durable.BackendUnavailableError("the database went away")

    async def flaky_record(instance_id: str, step: durable.StepRecord, **kw: Any) -> None:
        outage(step)
        await record_step(instance_id, step, **kw)

    def flaky_record_blocking(instance_id: str, step: durable.StepRecord, **kw: Any) -> None:
        outage(step)
        record_step_blocking(instance_id, step, **kw)

    monkeypatch.setattr(backend, "record_step", flaky_record)
    monkeypatch.setattr(backend, "record_step_blocking", flaky_record_blocking)


@pytest.mark.parametrize("kind", ["async", "sync"])
async def test_an_outage_while_checkpointing_hands_the_attempt_back_without_counting_it(
    backend_url: str, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    """Recording step 2 cannot reach the database: the attempt is handed back (due again after
    the short outage pause), not counted, and resumed; with max_attempts=1 a counted attempt
    would have dead-lettered it."""
    monkeypatch.setattr(durable.runtime, "OUTAGE_BACKOFF", timedelta(milliseconds=50))
    backend = durable.connect(backend_url)
    cut_off_once(backend, monkeypatch)
    reschedule = backend.reschedule_workflow
    handed_back: list[dict[str, Any]] = []

    async def spy(instance_id: str, **kw: Any) -> durable.WorkflowInfo:
        handed_back.append(kw)
        return await reschedule(instance_id, **kw)

    monkeypatch.setattr(backend, "reschedule_workflow", spy)
    async with runtime(backend) as rt:
        await rt.start_worker(concurrency=2, poll_interval=0.02)
        wf = two_steps if kind == "async" else two_steps_sync
        workflow_id = await rt.enqueue(wf, 1, max_attempts=1)
        assert await rt.result(workflow_id, timeout=WAIT) == 20
        info = await rt.get_workflow(workflow_id)
        assert (info.status, info.attempts, info.interruptions, info.error) == (
            WorkflowStatus.SUCCEEDED,
            1,
            0,
            None,
        )
    assert handed_back == [
        {
            "worker_id": "exec-1",
            "run_after": timedelta(milliseconds=50),
            "consume_attempt": False,
        }
    ]
    # the step whose record was lost ran again; the recorded one did not
    assert (CALLS["first"], CALLS["second"]) == (1, 2)


async def test_a_hand_back_that_cannot_reach_the_database_does_not_hang_the_worker(
    backend_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hand-back after the outage never answers: the worker gives up on it, the lease
    expires, and the execution is resumed as an interrupted attempt."""
    backend = durable.connect(backend_url)
    cut_off_once(backend, monkeypatch)
    reschedule = backend.reschedule_workflow
    unblock = asyncio.Event()

    async def unreachable(instance_id: str, **kw: Any) -> durable.WorkflowInfo:
        if CALLS["hung"] == 0:
            CALLS["hung"] += 1
            await unblock.wait()  # as a connection attempt to a vanished server would
        return await reschedule(instance_id, **kw)

    monkeypatch.setattr(backend, "reschedule_workflow", unreachable)
    try:
        async with runtime(backend, claim_ttl=1.0) as rt:
            await rt.start_worker(concurrency=2, poll_interval=0.02)
            workflow_id = await rt.enqueue(two_steps, 1, max_attempts=1)
            assert await rt.result(workflow_id, timeout=WAIT) == 20
            info = await rt.get_workflow(workflow_id)
            assert (info.status, info.attempts, info.interruptions) == (
                WorkflowStatus.SUCCEEDED,
                1,
                1,
            )
    finally:
        unblock.set()
    assert CALLS["hung"] == 1 and (CALLS["first"], CALLS["second"]) == (1, 2)


async def begin_with_releases_away(
    backend_url: str, monkeypatch: pytest.MonkeyPatch, away: int
) -> list[str]:
    """Run ``two_steps`` once on a worker (leases of 30 s) whose first start of an attempt
    cannot reach the database, and whose first ``away`` releases of a claim cannot either;
    returns the executors whose releases were tried, after checking the workflow ran once,
    within 10 s (before its lease could have expired)."""
    backend = durable.connect(backend_url)
    begin, release = backend.begin_execution, backend.release_task_claim
    tries: list[str] = []

    async def flaky_begin(instance_id: str, worker_id: str, **kw: Any) -> Any:
        if CALLS["outage"] == 0:
            CALLS["outage"] += 1
            raise durable.BackendUnavailableError("the database went away")
        return await begin(instance_id, worker_id, **kw)

    async def flaky_release(instance_id: str, task_id: str, worker_id: str) -> None:
        tries.append(worker_id)
        if len(tries) <= away:
            raise durable.BackendUnavailableError("still away")
        await release(instance_id, task_id, worker_id)

    monkeypatch.setattr(backend, "begin_execution", flaky_begin)
    monkeypatch.setattr(backend, "release_task_claim", flaky_release)
    async with runtime(backend, claim_ttl=30.0) as rt:
        await rt.start_worker(concurrency=1, poll_interval=0.02)
        workflow_id = await rt.enqueue(two_steps, 1, max_attempts=1)
        assert await rt.result(workflow_id, timeout=10) == 20
        info = await rt.get_workflow(workflow_id)
        assert (info.attempts, info.interruptions) == (1, 0)
    return tries


async def test_an_outage_when_an_attempt_begins_gives_the_claim_back(
    backend_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Starting the attempt cannot reach the database: nothing ran, and the claim is given back
    at once instead of being held until the lease expires (30 s here)."""
    assert await begin_with_releases_away(backend_url, monkeypatch, away=0) == ["exec-1"]


async def test_a_claim_an_outage_kept_from_beginning_is_given_back_once_the_database_answers(
    backend_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The database is still away when the claim is given back: the release is tried again
    until it answers (found restarting MariaDB under two workers: such claims waited out their
    30 s leases), and the execution runs at once after."""
    tries = await begin_with_releases_away(backend_url, monkeypatch, away=2)
    assert tries == ["exec-1"] * 3


# -- 3. interrupted attempts ---------------------------------------------------------------------


async def interrupt(backend: durable.PersistentBackend, workflow_id: str, times: int) -> None:
    """Executors that start the execution and die: each claims it, begins it and is gone (its
    claim given up, as an expired lease would be), leaving it running."""
    for n in range(times):
        ghost = f"ghost-{n}"
        claim = await backend.claim_task(workflow_id, WORKFLOW_TASK, ghost, timedelta(seconds=30))
        assert claim is not None
        await backend.begin_execution(workflow_id, ghost)
        await backend.release_task_claim(workflow_id, WORKFLOW_TASK, ghost)


async def test_interrupted_attempts_do_not_use_up_the_failure_budget(backend_url: str) -> None:
    async with runtime(durable.connect(backend_url)) as rt:
        workflow_id = await rt.enqueue(crash_tolerant, 1)  # 3 attempts allowed
        await interrupt(rt.backend, workflow_id, 3)
        info = await rt.get_workflow(workflow_id)
        # one attempt, resumed twice after its executor died
        assert (info.status, info.attempts, info.interruptions) == (WorkflowStatus.RUNNING, 1, 2)
        await rt.start_worker(concurrency=1, poll_interval=0.02)
        assert await rt.result(workflow_id, timeout=WAIT) == 2
        info = await rt.get_workflow(workflow_id)
        assert (info.status, info.attempts, info.interruptions) == (WorkflowStatus.SUCCEEDED, 1, 3)


async def test_a_crash_loop_is_dead_lettered_after_max_recoveries(backend_url: str) -> None:
    async with runtime(durable.connect(backend_url)) as rt:
        workflow_id = await rt.enqueue(crash_prone, 1)
        await interrupt(rt.backend, workflow_id, 3)  # resumed twice, interrupted a third time
        await rt.start_worker(concurrency=1, poll_interval=0.02)
        with pytest.raises(durable.WorkflowDeadLetteredError, match="max_recoveries is 2"):
            await rt.result(workflow_id, timeout=WAIT)
        info = await rt.get_workflow(workflow_id)
        assert (info.status, info.attempts, info.interruptions) == (
            WorkflowStatus.DEAD_LETTER,
            1,
            3,
        )
        assert info.error is not None
        assert info.error.type == "durable.errors.RecoveriesExhaustedError"
        assert isinstance(rebuild_exception(info.error), durable.errors.RecoveriesExhaustedError)
        assert CALLS["first"] == 0
        # a redrive starts the count again
        await rt.retry(workflow_id)
        assert await rt.result(workflow_id, timeout=WAIT) == 2
        info = await rt.get_workflow(workflow_id)
        assert (info.attempts, info.interruptions) == (1, 0)


@pytest.mark.slow
@pytest.mark.parametrize("db", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_three_killed_workers_do_not_dead_letter_a_healthy_workflow(
    request: pytest.FixtureRequest, db: str, tmp_path: Path
) -> None:
    """Real worker processes are SIGKILLed mid-step three times; with the default 3 attempts the
    fourth worker still finishes the execution: crashes are interruptions, not failures."""
    url = str(request.getfixturevalue("sqlite_url" if db == "sqlite" else "pg_url"))
    log = tmp_path / "steps.log"

    def b_started_by(pid: int) -> bool:
        lines = log.read_text(encoding="utf-8").splitlines() if log.exists() else []
        return any(line.split(" ")[1:3] == ["b", str(pid)] for line in lines)

    async def enqueue() -> str:
        async with producer(url) as rt:
            return await rt.enqueue(PIPELINE, 1, 600.0, served_elsewhere=True)

    workflow_id = asyncio.run(enqueue())
    workers: list[subprocess.Popen[bytes]] = []
    try:
        for n in range(1, 5):
            last = n == 4
            with (tmp_path / f"worker-{n}.txt").open("wb") as stderr:
                worker = subprocess.Popen(
                    [
                        *(sys.executable, str(WORKERPROG), "serve", "--url", url),
                        *("--log", str(log), "--executor-id", f"worker-{n}"),
                        *("--claim-ttl", "1", "--poll-interval", "0.05"),
                        *(["--no-pause"] if last else []),
                    ],
                    cwd=tmp_path,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=stderr,
                )
            workers.append(worker)
            if last:
                break
            deadline = time.monotonic() + WAIT
            while not b_started_by(worker.pid):  # mid-step b, which sleeps for 600 s
                assert worker.poll() is None, (tmp_path / f"worker-{n}.txt").read_text()
                assert time.monotonic() < deadline, "timed out waiting for step b"
                time.sleep(0.01)
            os.kill(worker.pid, signal.SIGKILL)
            worker.wait(timeout=WAIT)

        async def outcome() -> tuple[Any, durable.WorkflowInfo]:
            async with producer(url) as rt:
                result = await rt.result(workflow_id, timeout=WAIT)
                return result, await rt.get_workflow(workflow_id)

        result, info = asyncio.run(outcome())
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
    assert result == {"n": 1, "out": 1}
    assert (info.status, info.max_attempts, info.attempts, info.interruptions) == (
        WorkflowStatus.SUCCEEDED,
        3,
        1,
        3,
    )
    steps = [line.split(" ")[1] for line in log.read_text(encoding="utf-8").splitlines()]
    assert Counter(steps) == {"a": 1, "b": 4, "c": 1}


def producer(url: str) -> durable.Runtime:
    """A runtime of this process without the pipeline's code."""
    return durable.Runtime(
        durable.connect(url),
        executor_id="producer",
        recover=False,
        registry=durable.Registry(),
        poll_interval=0.05,
    )


def test_max_recoveries_must_not_be_negative() -> None:
    with pytest.raises(durable.InvalidArgumentError, match="max_recoveries"):
        durable.workflow(
            name="tests.retries.bad.v1", registry=durable.Registry(), max_recoveries=-1
        )(two_steps.fn)


# -- 4. failed steps that ended the attempt run again, wherever they are ------------------------


async def test_a_failed_step_beside_a_recorded_one_runs_again_on_the_next_attempt(
    backend_url: str,
) -> None:
    async with runtime(durable.connect(backend_url)) as rt:
        await rt.start_worker(concurrency=2, poll_interval=0.02)
        workflow_id = await rt.enqueue(gathered)
        assert await rt.result(workflow_id, timeout=WAIT) == "flaky+steady"
        assert (CALLS["flaky_beside"], CALLS["steady"]) == (2, 1)
        assert (await rt.get_workflow(workflow_id)).attempts == 2
        assert await steps_of(rt, workflow_id) == [
            (flaky_beside.name, StepStatus.SUCCEEDED),
            (steady.name, StepStatus.SUCCEEDED),
        ]


async def test_failed_map_items_run_again_on_the_next_attempt(backend_url: str) -> None:
    async with runtime(durable.connect(backend_url)) as rt:
        await rt.start_worker(concurrency=3, poll_interval=0.02)
        workflow_id = await rt.enqueue(mapped, 3)
        assert await rt.result(workflow_id, timeout=WAIT) == 0 + 1 + 4
        # both failed items ran again on the second attempt; the other one did not
        assert (CALLS["item-0"], CALLS["item-1"], CALLS["item-2"]) == (2, 2, 1)
        info = await rt.get_workflow(workflow_id)
        # the suspensions while the items ran are not attempts; the failed one is
        assert (info.status, info.attempts) == (WorkflowStatus.SUCCEEDED, 2)


async def test_a_handled_failure_keeps_replaying_on_the_next_attempt(backend_url: str) -> None:
    """The workflow caught a failure and went on with a fallback step; a later step fails once.
    The next attempt replays the handled failure (running it again would diverge)."""
    async with runtime(durable.connect(backend_url)) as rt:
        await rt.start_worker(concurrency=2, poll_interval=0.02)
        workflow_id = await rt.enqueue(handled)
        assert await rt.result(workflow_id, timeout=WAIT) == "done(fallback)"
        assert (CALLS["always_fails"], CALLS["fallback"], CALLS["fails_once"]) == (1, 1, 2)
        assert await steps_of(rt, workflow_id) == [
            (always_fails.name, StepStatus.FAILED),
            (steady.name, StepStatus.SUCCEEDED),
            (fallback.name, StepStatus.SUCCEEDED),
            (fails_once.name, StepStatus.SUCCEEDED),
        ]
        assert (await rt.get_workflow(workflow_id)).attempts == 2


async def test_a_redrive_runs_again_the_failed_step_that_ended_the_last_attempt(
    backend_url: str,
) -> None:
    async with runtime(durable.connect(backend_url)) as rt:
        await rt.start_worker(concurrency=2, poll_interval=0.02)
        workflow_id = await rt.enqueue(gathered_once)
        with pytest.raises(durable.WorkflowDeadLetteredError, match="transient"):
            await rt.result(workflow_id, timeout=WAIT)
        # the failure stays visible to operators, marked to run again
        steps = await rt.list_steps(workflow_id)
        assert [(s.name, s.status, s.rerun) for s in steps] == [
            (flaky_beside.name, StepStatus.FAILED, True),
            (steady.name, StepStatus.SUCCEEDED, False),
        ]
        await rt.retry(workflow_id)
        assert await rt.result(workflow_id, timeout=WAIT) == "flaky+steady"
        assert (CALLS["flaky_beside"], CALLS["steady"]) == (2, 1)


# -- 5. child workflows --------------------------------------------------------------------------


async def test_a_child_that_failed_is_run_again_by_its_parents_next_attempt(
    backend_url: str,
) -> None:
    async with runtime(durable.connect(backend_url)) as rt:
        await rt.start_worker(concurrency=2, poll_interval=0.02)
        workflow_id = await rt.enqueue(parent, 5)
        assert await rt.result(workflow_id, timeout=WAIT) == 11
        child_id = f"{workflow_id}/0"
        info = await rt.get_workflow(child_id)
        assert (info.status, info.output, info.parent_id) == (
            WorkflowStatus.SUCCEEDED,
            10,
            workflow_id,
        )
        # the child's completed step did not run again; its failed one did
        assert (CALLS["first"], CALLS["child_step"]) == (1, 2)
        assert await steps_of(rt, child_id) == [
            (first.name, StepStatus.SUCCEEDED),
            (child_step.name, StepStatus.SUCCEEDED),
        ]
        assert (await rt.get_workflow(workflow_id)).attempts == 2


async def test_redriving_a_parent_runs_its_failed_child_again(backend_url: str) -> None:
    async with runtime(durable.connect(backend_url)) as rt:
        await rt.start_worker(concurrency=2, poll_interval=0.02)
        workflow_id = await rt.enqueue(parent_once, 5)
        with pytest.raises(durable.WorkflowDeadLetteredError, match="the child failed once"):
            await rt.result(workflow_id, timeout=WAIT)
        child_id = f"{workflow_id}/0"
        assert (await rt.get_workflow(child_id)).status is WorkflowStatus.FAILED
        await rt.retry(workflow_id)
        assert await rt.result(workflow_id, timeout=WAIT) == 11
        assert (await rt.get_workflow(child_id)).status is WorkflowStatus.SUCCEEDED
        assert (CALLS["first"], CALLS["child_step"]) == (1, 2)


# -- 9. outputs that cannot be stored ------------------------------------------------------------


async def test_a_return_value_that_cannot_be_stored_fails_at_once(backend_url: str) -> None:
    async with runtime(durable.connect(backend_url)) as rt:
        await rt.start_worker(concurrency=1, poll_interval=0.02)
        workflow_id = await rt.enqueue(unstorable, 1)  # 3 attempts allowed
        with pytest.raises(durable.SerializationError, match="cannot be stored"):
            await rt.result(workflow_id, timeout=WAIT)
        info = await rt.get_workflow(workflow_id)
        assert (info.status, info.attempts) == (WorkflowStatus.FAILED, 1)
        assert info.error is not None and info.error.type == "durable.errors.SerializationError"
        assert CALLS["first"] == 1
