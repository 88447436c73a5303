"""Distributed workers and intents, with real processes where the point is many processes.

* workers in three processes share one queue (a SQLite file, PostgreSQL); one is SIGKILLed
  mid-step and the survivors take its work over once its leases expire, without running a
  checkpointed step again; SIGTERM stops the survivors cleanly;
* duplicate enqueues with one idempotency key, racing from several processes, create one
  execution;
* one worker runs queued work by priority, FIFO within a priority, and nothing before it is due;
* failed attempts are retried after 60 s, then 240 s, then dead-lettered (on a fake clock, and on
  SQL backends by reading the stored schedule), non-retryable errors fail at once, and
  ``runtime.retry`` runs a dead-lettered execution again without re-running completed steps;
* a graceful stop hands an interrupted execution back at once without counting the attempt;
  cancelling stops queued and running executions; enqueueing inside a workflow is a step that a
  replay does not repeat; a producer enqueues by name without the code, for a worker process
  that a SIGTERM mid-step stops cleanly, handing its execution back; disabled names are not
  claimed.

tests/workerprog.py is the worker (and producer) program the multi-process tests start.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
import sqlalchemy as sa

import durable
from durable.backends.sql.schema import tasks as tasks_table
from durable.backends.sql.schema import workflows as workflows_table
from durable.models import WORKFLOW_TASK, StepStatus, WorkflowStatus

T = TypeVar("T")

PROG = Path(__file__).with_name("workerprog.py")
PIPELINE = "workerprog.pipeline.v1"  # served by workerprog.py, not registered here
PIPELINE_STEPS = ("a", "b", "c")
WAIT = 60.0  # an upper bound for anything the tests wait for, never reached when green
TTL = 2.0  # the worker processes' lease duration (seconds)

REG = durable.Registry()  # every workflow of this module; the test runtimes serve these
CALLS: Counter[str] = Counter()
STARTS: list[tuple[str, float]] = []  # (label, time.time()) when tw.record.v1 started
RUNTIMES: list[durable.Runtime] = []  # the runtime tw.parent.v1 enqueues through
HOLD: dict[str, asyncio.Event] = {}  # tw.record.v1 with one of these labels waits for its event


class Gates:
    """Per-test events (bound to the test's event loop)."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()  # the hold step started
        self.release = asyncio.Event()  # the hold step may return
        self.fixed = False  # the attempt step stops failing


GATES = Gates()


@pytest.fixture(autouse=True)
def _reset() -> Iterator[None]:
    global GATES
    CALLS.clear()
    STARTS.clear()
    RUNTIMES.clear()
    HOLD.clear()
    GATES = Gates()
    yield
    for name in REG.names():
        REG.enable(name)


# -- workflows ---------------------------------------------------------------------------------


@durable.workflow(name="tw.record.v1", registry=REG)
async def record(label: str) -> str:
    STARTS.append((label, time.time()))
    if label in HOLD:
        await HOLD[label].wait()
    return label


@durable.workflow(name="tw.ping.v1", registry=REG)
async def ping(x: int) -> int:
    return x


@durable.step(name="first")
async def first(order: str) -> str:
    CALLS["first"] += 1
    return f"first({order})"


@durable.step(name="hold")
async def hold(value: str) -> str:
    CALLS["hold"] += 1
    GATES.entered.set()
    try:
        await GATES.release.wait()
    except asyncio.CancelledError:
        CALLS["hold.cancelled"] += 1
        raise
    return f"hold({value})"


@durable.step(name="last")
async def last(value: str) -> str:
    CALLS["last"] += 1
    return f"last({value})"


@durable.workflow(name="tw.blocking.v1", registry=REG)
async def blocking(order: str) -> str:
    return await last(await hold(await first(order)))


@durable.step(name="attempt")
async def attempt(value: str) -> str:
    CALLS["attempt"] += 1
    if not GATES.fixed:
        raise RuntimeError(f"boom {CALLS['attempt']}")
    return f"attempt({value})"


@durable.workflow(name="tw.flaky.v1", registry=REG)
async def flaky(order: str) -> str:
    return await attempt(await first(order))


@durable.step(name="refuse")
async def refuse(order: str) -> str:
    CALLS["refuse"] += 1
    raise durable.NonRetryableError(f"card of {order} reported stolen")


@durable.workflow(name="tw.fatal.v1", registry=REG)
async def fatal(order: str) -> str:
    return await refuse(await first(order))


@durable.workflow(name="tw.child.v1", registry=REG)
async def child(x: int) -> int:
    return x * 10


@durable.workflow(name="tw.parent.v1", registry=REG)
async def parent(x: int) -> str:
    await first(str(x))
    child_id = await RUNTIMES[0].enqueue(child, x)
    await hold(child_id)
    return child_id


@durable.step(name="occupy")
async def occupy(n: int) -> int:
    CALLS["running"] += 1
    CALLS["max_running"] = max(CALLS["max_running"], CALLS["running"])
    await asyncio.sleep(0.1)
    CALLS["running"] -= 1
    return n


@durable.workflow(name="tw.slot.v1", registry=REG)
async def slot(n: int) -> int:
    return await occupy(n)


# -- helpers -----------------------------------------------------------------------------------


def runtime(
    backend: durable.PersistentBackend, executor_id: str, **options: Any
) -> durable.Runtime:
    options.setdefault("recover", False)
    options.setdefault("poll_interval", 0.02)
    return durable.Runtime(backend, executor_id=executor_id, registry=REG, **options)


def second_backend(url: str, first_backend: durable.PersistentBackend) -> durable.PersistentBackend:
    """Another connection to the same storage (the same object for memory://)."""
    return first_backend if url == "memory://" else durable.connect(url)


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


async def reaches(
    rt: durable.Runtime, workflow_id: str, status: WorkflowStatus, attempts: int
) -> durable.WorkflowInfo:
    async def check() -> durable.WorkflowInfo | None:
        info = await rt.get_workflow(workflow_id)
        return info if (info.status, info.attempts) == (status, attempts) else None

    return await until(check, f"{workflow_id} to be {status.value} after {attempts} attempt(s)")


def sync_url(url: str) -> str:
    """The same database through a sync driver (MySQL: PyMySQL, which aiomysql is built on)."""
    url = url.replace("sqlite+aiosqlite://", "sqlite://")
    if url.startswith("mysql+aiomysql://"):
        url = url.replace("mysql+aiomysql://", "mysql+pymysql://", 1) + "?charset=utf8mb4"
    return url


def query(url: str, fn: Callable[[sa.Connection], T]) -> T:
    """Run ``fn`` in one transaction on the database behind ``url``, with a plain engine."""
    engine = sa.create_engine(sync_url(url))
    try:
        with engine.begin() as conn:
            return fn(conn)
    finally:
        engine.dispose()


def stored_run_after(url: str, workflow_id: str) -> datetime:
    stmt = sa.select(tasks_table.c.run_after).where(tasks_table.c.instance_id == workflow_id)
    return query(url, lambda conn: conn.execute(stmt).scalar_one())


def make_due(url: str, workflow_id: str, ago: timedelta = timedelta(seconds=1)) -> None:
    """Move the stored schedule of a task to the past: the database's way of moving time."""
    stmt = (
        sa.update(tasks_table)
        .where(tasks_table.c.instance_id == workflow_id)
        .values(run_after=datetime.now(UTC) - ago)
    )
    query(url, lambda conn: conn.execute(stmt))


async def make_due_on(
    backend: durable.PersistentBackend, url: str, workflow_id: str, ago: timedelta
) -> None:
    """:func:`make_due` on any backend (the in-memory one's stored task is changed in place)."""
    if isinstance(backend, durable.InMemoryBackend):
        with backend._lock:
            backend._tasks[(workflow_id, WORKFLOW_TASK)].run_after = datetime.now(UTC) - ago
    else:
        await asyncio.to_thread(make_due, url, workflow_id, ago)


class FakeClock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture(
    params=["sqlite", "aiosqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def sql_url(request: pytest.FixtureRequest) -> str:
    fixture = {"sqlite": "sqlite_url", "aiosqlite": "aiosqlite_url", "postgres": "pg_url"}
    return str(request.getfixturevalue(fixture[request.param]))


# -- processes ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Effect:
    """One line of the side-effect log: a step body started."""

    workflow_id: str
    step: str
    pid: int
    at: float


def read_log(path: Path) -> list[Effect]:
    if not path.exists():
        return []
    effects = []
    for line in path.read_text(encoding="utf-8").split("\n")[:-1]:  # complete lines only
        workflow_id, step, pid, at = line.split(" ")
        effects.append(Effect(workflow_id, step, int(pid), float(at)))
    return effects


class Program:
    """One run of tests/workerprog.py."""

    def __init__(self, workdir: Path, name: str, *args: str) -> None:
        self.name = name
        self.stderr = workdir / f"stderr-{name}.txt"
        with self.stderr.open("wb") as out:
            self.process = subprocess.Popen(
                [sys.executable, str(PROG), *args],
                cwd=workdir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    def output(self) -> str:
        return self.stderr.read_text(encoding="utf-8", errors="replace")

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            pytest.fail(f"{self.name} exited with {self.process.returncode}:\n{self.output()}")

    def kill(self) -> float:
        """SIGKILL: nothing released, nothing cleaned up. Returns when it happened."""
        self.check_alive()
        killed_at = time.time()
        os.kill(self.pid, signal.SIGKILL)
        assert self.process.wait(timeout=WAIT) == -signal.SIGKILL
        return killed_at

    def wait(self, timeout: float = WAIT) -> int:
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{self.name} did not exit within {timeout} s:\n{self.output()}")


@pytest.fixture
def programs(tmp_path: Path) -> Iterator[Callable[..., Program]]:
    """Start workerprog.py runs; any still alive at the end is killed."""
    started: list[Program] = []

    def start(name: str, *args: str) -> Program:
        program = Program(tmp_path, name, *args)
        started.append(program)
        return program

    yield start
    for program in started:
        if program.process.poll() is None:
            program.process.kill()
            program.process.wait()


def start_worker_process(
    programs: Callable[..., Program],
    url: str,
    executor_id: str,
    log: Path,
    concurrency: int,
    grace: float = 5.0,
) -> Program:
    return programs(
        executor_id,
        *("serve", "--url", url, "--executor-id", executor_id, "--log", str(log)),
        *("--claim-ttl", str(TTL), "--concurrency", str(concurrency), "--poll-interval", "0.1"),
        *("--grace", str(grace)),
    )


def wait_until(condition: Callable[[], T], what: str, *alive: Program) -> T:
    deadline = time.monotonic() + WAIT
    while True:
        value = condition()
        if value:
            return value
        for program in alive:
            program.check_alive()
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.01)


def producer(url: str, **options: Any) -> durable.Runtime:
    """A runtime of this process without the pipeline's code."""
    return durable.Runtime(
        durable.connect(url),
        executor_id="producer",
        recover=False,
        registry=durable.Registry(),
        poll_interval=0.05,
        **options,
    )


def pipeline_result(n: int) -> dict[str, Any]:
    return {"n": n, "out": (n + 1) * 2 - 3}


# -- 1. many worker processes, one killed mid-step ---------------------------------------------


@pytest.mark.slow
def test_worker_processes_take_over_a_killed_one_without_rerunning_checkpointed_steps(
    db_url: str, programs: Callable[..., Program], tmp_path: Path
) -> None:
    concurrency = 4
    pause = 1.2  # step b of every third workflow sleeps this long: there is always work mid-step
    log = tmp_path / "steps.log"
    inputs = {f"wf-{i:02d}": i for i in range(60)}
    slow = {w for w, n in inputs.items() if n % 3 == 1}
    workers = [
        start_worker_process(programs, db_url, f"worker-{k}", log, concurrency) for k in range(3)
    ]

    async def enqueue_when_ready() -> None:
        async with producer(db_url) as rt:
            # every worker is serving (its runtime has started) before the work arrives
            async def ready() -> bool:
                for worker in workers:
                    worker.check_alive()
                live = {e.id for e in await rt.list_executors() if e.stopped_at is None}
                return live >= {w.name for w in workers}

            await until(ready, "every worker to start")
            for workflow_id, n in inputs.items():
                await rt.enqueue(
                    PIPELINE,
                    n,
                    pause if workflow_id in slow else 0.0,
                    workflow_id=workflow_id,
                    served_elsewhere=True,
                )

    asyncio.run(enqueue_when_ready())
    by_pid = {w.pid: w for w in workers}

    # every worker runs steps; then the first one seen starting a slow step is killed in it
    wait_until(
        lambda: {e.pid for e in read_log(log)} >= set(by_pid), "every worker to run", *workers
    )
    seen = len(read_log(log))

    def slow_step_started() -> Effect | None:
        return next(
            (e for e in read_log(log)[seen:] if e.step == "b" and e.workflow_id in slow), None
        )

    target = wait_until(slow_step_started, "a slow step to start", *workers)
    victim = by_pid[target.pid]
    killed_at = victim.kill()
    survivors = [w for w in workers if w is not victim]

    async def outcomes() -> dict[str, Any]:
        async with producer(db_url) as rt:
            results = {w: await rt.result(w, timeout=WAIT) for w in inputs}
            infos = {w: await rt.get_workflow(w) for w in inputs}
            steps = {w: await rt.list_steps(w) for w in inputs}
        return {"results": results, "infos": infos, "steps": steps}

    state = asyncio.run(outcomes())
    for survivor in survivors:
        survivor.check_alive()

    # graceful shutdown: SIGTERM, exit status 0, promptly
    for survivor in survivors:
        os.kill(survivor.pid, signal.SIGTERM)
    stopped_at = time.monotonic()
    for survivor in survivors:
        assert survivor.wait() == 0, survivor.output()
    assert time.monotonic() - stopped_at < 5.0
    for survivor in survivors:
        assert "Traceback" not in survivor.output(), survivor.output()

    # every workflow finished with the right result
    assert state["results"] == {w: pipeline_result(n) for w, n in inputs.items()}
    executor_pid = {w.name: w.pid for w in workers}
    effects: dict[tuple[str, str], list[Effect]] = defaultdict(list)
    for effect in read_log(log):
        effects[effect.workflow_id, effect.step].append(effect)
    assert set(effects) == {(w, s) for w in inputs for s in PIPELINE_STEPS}

    ran_twice = set()
    for workflow_id in inputs:
        info, steps = state["infos"][workflow_id], state["steps"][workflow_id]
        assert info.status is WorkflowStatus.SUCCEEDED
        assert [(s.position, s.name, s.status) for s in steps] == [
            (i, name, StepStatus.SUCCEEDED) for i, name in enumerate(PIPELINE_STEPS)
        ]
        for stored in steps:
            assert stored.executor_id in executor_pid
            pids = [e.pid for e in effects[workflow_id, stored.name]]
            committed_by = executor_pid[stored.executor_id]
            # the step whose checkpoint committed ran once, in the process that recorded it
            assert pids.count(committed_by) == 1, (workflow_id, stored.name, pids)
            others = [p for p in pids if p != committed_by]
            if others:
                # only a step the killed worker was inside of ran again, by a survivor, once the
                # killed worker's lease expired: its last renewal was at most a heartbeat
                # interval (TTL/3) before the kill, and a lease lasts TTL (the lower bound
                # tolerates a heartbeat TTL/3 late on a loaded machine)
                assert others == [victim.pid], (workflow_id, stored.name, pids)
                assert stored.executor_id != victim.name
                first_run, again = effects[workflow_id, stored.name]
                assert first_run.pid == victim.pid and first_run.at < killed_at
                assert killed_at + TTL / 3 <= again.at <= killed_at + TTL + 15
                ran_twice.add((workflow_id, stored.name))
        # one attempt, resumed once (an interruption) when the killed worker had begun it
        assert info.attempts == 1 and info.interruptions in (0, 1)
        if any(w == workflow_id for w, _ in ran_twice):
            assert info.interruptions == 1
    # the step the victim was killed in is one of them; at most one per execution slot
    assert (target.workflow_id, "b") in ran_twice
    assert len(ran_twice) <= concurrency
    assert state["infos"][target.workflow_id].interruptions == 1
    assert state["infos"][target.workflow_id].executor_id != victim.name
    # the work was shared
    assert len({s.executor_id for steps in state["steps"].values() for s in steps}) == 3


# -- 2. idempotency under concurrent duplicate enqueues ----------------------------------------


@pytest.mark.slow
def test_duplicate_enqueues_racing_from_several_processes_create_one_execution(
    db_url: str, programs: Callable[..., Program], tmp_path: Path
) -> None:
    keys = [f"order-{k}" for k in range(5)]
    copies = 4  # per key and per process, all at once

    async def migrate() -> None:
        async with producer(db_url):
            pass

    asyncio.run(migrate())
    ready, go = tmp_path / "ready.txt", tmp_path / "go"
    enqueuers = [
        programs(
            f"enqueuer-{p}",
            *("enqueue", "--url", db_url, "--keys", ",".join(keys), "--copies", str(copies)),
            *("--ready", str(ready), "--go", str(go), "--out", str(tmp_path / f"ids-{p}.json")),
        )
        for p in range(3)
    ]
    wait_until(
        lambda: ready.exists() and len(ready.read_text().split()) == len(enqueuers),
        "every producer to be ready",
        *enqueuers,
    )
    go.touch()
    for enqueuer in enqueuers:
        assert enqueuer.wait() == 0, enqueuer.output()

    returned: dict[str, set[str]] = defaultdict(set)
    calls = 0
    for p in range(len(enqueuers)):
        for key, ids in json.loads((tmp_path / f"ids-{p}.json").read_text()).items():
            returned[key].update(ids)
            calls += len(ids)
    assert calls == len(keys) * copies * len(enqueuers)
    # every call for a key returned the same id
    assert {key: len(ids) for key, ids in returned.items()} == {key: 1 for key in keys}

    def rows(conn: sa.Connection) -> tuple[list[Any], list[Any]]:
        w = workflows_table.c
        stored = conn.execute(sa.select(w.id, w.idempotency_key, w.status, w.input)).all()
        queued = conn.execute(sa.select(tasks_table.c.instance_id)).scalars().all()
        return list(stored), list(queued)

    stored, queued = query(db_url, rows)
    # exactly one workflow row per key, the one every call returned, with one task
    assert sorted((key, workflow_id) for workflow_id, key, _, _ in stored) == sorted(
        (key, next(iter(ids))) for key, ids in returned.items()
    )
    assert {status for _, _, status, _ in stored} == {"pending"}
    assert sorted(queued) == sorted(workflow_id for workflow_id, *_ in stored)


async def test_duplicate_enqueues_racing_in_one_process_create_one_execution(
    backend_url: str,
) -> None:
    async with runtime(durable.connect(backend_url), "producer") as rt:
        ids = await asyncio.gather(
            *(rt.enqueue(ping, n, idempotency_key=f"k-{n % 3}") for n in range(30))
        )
        by_key = defaultdict(set)
        for n, workflow_id in enumerate(ids):
            by_key[n % 3].add(workflow_id)
        assert all(len(found) == 1 for found in by_key.values())
        listed = (await rt.list_workflows(name=ping.name)).items
        assert sorted(i.id for i in listed) == sorted(next(iter(s)) for s in by_key.values())
        # one caller per key won, and its arguments were stored with the execution
        assert sorted(i.input["args"][0] % 3 for i in listed) == [0, 1, 2]
        assert {i.idempotency_key for i in listed} == {"k-0", "k-1", "k-2"}
        # an explicit id that already exists is idempotent too: nothing is overwritten
        before = await rt.get_workflow(ids[0])
        assert await rt.enqueue(ping, 99, workflow_id=ids[0]) == ids[0]
        assert (await rt.get_workflow(ids[0])).input == before.input


# -- 3. priority, FIFO, run_after -------------------------------------------------------------


async def test_one_worker_runs_by_priority_then_fifo_and_nothing_before_it_is_due(
    backend_url: str,
) -> None:
    backend = durable.connect(backend_url)
    HOLD["p-3"] = asyncio.Event()  # the first execution holds the worker's only slot
    async with runtime(backend, "exec-1") as rt:
        late = await rt.enqueue(record, "late-delay", priority=-10, delay=3600)
        at = await rt.enqueue(record, "late-at", run_after=datetime.now(UTC) + timedelta(hours=1))
        plan = [("p5-a", 5), ("p1-a", 1), ("p5-b", 5), ("p0-a", 0), ("p1-b", 1), ("p5-c", 5)]
        plan += [("p0-b", 0), ("p-3", -3)]
        ids = [await rt.enqueue(record, label, priority=priority) for label, priority in plan]
        with pytest.raises(durable.InvalidArgumentError):
            await rt.enqueue(record, "naive", run_after=datetime.now() + timedelta(seconds=1))

        async def due() -> set[str]:
            return {t.instance_id for t in await rt.backend.find_available_tasks("probe", 100)}

        async def started() -> list[tuple[str, float]]:
            return STARTS

        worker = await rt.start_worker(concurrency=1, poll_interval=0.05)
        # the delayed work, first in the queue and of the highest priority, is not taken while
        # it is not due: the first claim took the highest-priority due work
        await until(started, "the first execution to start")
        assert [label for label, _ in STARTS] == ["p-3"]
        assert await due() == set(ids[:-1])  # the rest is due, the delayed work is not
        # now it becomes due (late-at the earliest of its priority), then the slot frees up
        await make_due_on(backend, backend_url, late, timedelta(hours=1))
        await make_due_on(backend, backend_url, at, timedelta(hours=1))
        assert await due() == {late, at, *ids[:-1]}
        HOLD["p-3"].set()
        for workflow_id in (late, at, *ids):
            await rt.result(workflow_id, timeout=WAIT)
        await worker.stop()

    # due work by priority, FIFO within a priority (by due time, then by enqueue order)
    assert [label for label, _ in STARTS] == [
        "p-3",
        "late-delay",
        "late-at",
        "p0-a",
        "p0-b",
        "p1-a",
        "p1-b",
        "p5-a",
        "p5-b",
        "p5-c",
    ]


async def test_starting_a_runtime_does_not_run_queued_work_outside_its_workers(
    backend_url: str,
) -> None:
    backend = durable.connect(backend_url)
    async with runtime(backend, "producer") as rt:
        ids = [await rt.enqueue(slot, n) for n in range(6)]
    async with runtime(second_backend(backend_url, backend), "exec-1", recover=True) as rt:
        await rt.start_worker(concurrency=1, poll_interval=0.05)
        assert [await rt.result(i, timeout=WAIT) for i in ids] == list(range(6))
    # one at a time, as the worker's concurrency says: recovery on start (recover=True) takes
    # started executions only, and leaves never-started work to the workers
    assert CALLS["max_running"] == 1


# -- 4. backoff, dead letter, non-retryable, max_attempts, retry ------------------------------


async def test_backoff_schedule_and_dead_letter_on_a_fake_clock() -> None:
    clock = FakeClock(datetime(2030, 1, 1, 12, 0, tzinfo=UTC))
    t0 = clock.now
    backend = durable.InMemoryBackend(clock=clock)
    async with runtime(backend, "exec-1") as rt:
        await rt.start_worker(concurrency=2, poll_interval=0.01)
        workflow_id = await rt.enqueue(flaky, "o-1")

        async def stays(attempts: int) -> None:
            """Not due yet: a worker that polls many times in the meantime starts nothing."""
            await asyncio.sleep(0.15)
            info = await rt.get_workflow(workflow_id)
            assert (info.status, info.attempts, CALLS["attempt"]) == (
                WorkflowStatus.PENDING,
                attempts,
                attempts,
            )
            assert await backend.find_available_tasks("probe", 10) == []

        # attempt 1 at once; it fails; attempt 2 is due exactly 60 s later
        info = await reaches(rt, workflow_id, WorkflowStatus.PENDING, 1)
        assert info.error is not None and info.error.message == "boom 1"
        assert info.error.type == "builtins.RuntimeError"
        await stays(1)
        clock.now = t0 + timedelta(seconds=60) - timedelta(milliseconds=1)
        await stays(1)
        clock.now = t0 + timedelta(seconds=60)
        info = await reaches(rt, workflow_id, WorkflowStatus.PENDING, 2)
        assert info.error is not None and info.error.message == "boom 2"
        # attempt 3 is due 240 s after attempt 2 failed
        clock.now = t0 + timedelta(seconds=60 + 240) - timedelta(milliseconds=1)
        await stays(2)
        clock.now = t0 + timedelta(seconds=60 + 240)
        info = await reaches(rt, workflow_id, WorkflowStatus.DEAD_LETTER, 3)
        assert info.error is not None and info.error.message == "boom 3"
        assert info.completed_at == clock.now
        assert backend.task_keys() == []
        with pytest.raises(durable.WorkflowDeadLetteredError, match="boom 3"):
            await rt.result(workflow_id, timeout=1)
        # the completed step ran once; the failed one once per attempt, its last failure kept
        assert CALLS["first"] == 1 and CALLS["attempt"] == 3
        steps = await rt.list_steps(workflow_id)
        assert [(s.name, s.status) for s in steps] == [
            ("first", StepStatus.SUCCEEDED),
            ("attempt", StepStatus.FAILED),
        ]
        assert steps[1].error is not None and steps[1].error.message == "boom 3"

        # runtime.retry runs it again from its history: the completed step is not run again
        GATES.fixed = True
        requeued = await rt.retry(workflow_id)
        assert (requeued.status, requeued.attempts, requeued.error) == (
            WorkflowStatus.PENDING,
            0,
            None,
        )
        assert await rt.result(workflow_id, timeout=WAIT) == "attempt(first(o-1))"
        assert CALLS["first"] == 1 and CALLS["attempt"] == 4
        info = await rt.get_workflow(workflow_id)
        assert (info.status, info.attempts) == (WorkflowStatus.SUCCEEDED, 1)
        with pytest.raises(durable.InvalidArgumentError):
            await rt.retry(workflow_id)  # a succeeded execution is not run again


async def test_non_retryable_errors_and_max_attempts_override_on_a_fake_clock() -> None:
    clock = FakeClock(datetime(2030, 1, 1, 12, 0, tzinfo=UTC))
    t0 = clock.now
    backend = durable.InMemoryBackend(clock=clock)
    async with runtime(backend, "exec-1") as rt:
        await rt.start_worker(concurrency=2, poll_interval=0.01)
        # a NonRetryableError fails the execution at once, whatever attempts are left
        doomed = await rt.enqueue(fatal, "o-1")
        info = await reaches(rt, doomed, WorkflowStatus.FAILED, 1)
        assert info.error is not None
        assert info.error.type == "durable.errors.NonRetryableError"
        with pytest.raises(durable.NonRetryableError, match="reported stolen"):
            await rt.result(doomed, timeout=1)
        assert CALLS["refuse"] == 1

        # max_attempts=1: no retry, dead-lettered after the only attempt
        once = await rt.enqueue(flaky, "o-2", max_attempts=1)
        info = await reaches(rt, once, WorkflowStatus.DEAD_LETTER, 1)
        assert info.max_attempts == 1
        assert info.error is not None and info.error.message == "boom 1"

        # max_attempts=2 overrides the workflow's 3: one retry after 60 s, then dead-lettered
        twice = await rt.enqueue(flaky, "o-3", max_attempts=2)
        info = await reaches(rt, twice, WorkflowStatus.PENDING, 1)
        clock.now = t0 + timedelta(seconds=60)
        info = await reaches(rt, twice, WorkflowStatus.DEAD_LETTER, 2)
        assert info.error is not None and info.error.message == "boom 3"
        assert CALLS["refuse"] == 1 and CALLS["attempt"] == 3
        assert backend.task_keys() == []


async def test_enqueue_delay_follows_the_backend_clock() -> None:
    clock = FakeClock(datetime(2030, 1, 1, 12, 0, tzinfo=UTC))
    backend = durable.InMemoryBackend(clock=clock)
    async with runtime(backend, "exec-1") as rt:
        workflow_id = await rt.enqueue(record, "later", delay=60)
        assert await backend.find_available_tasks("probe", 10) == []
        clock.now += timedelta(seconds=60)
        assert [t.instance_id for t in await backend.find_available_tasks("probe", 10)] == [
            workflow_id
        ]


async def test_backoff_schedule_is_stored_on_sql_backends(sql_url: str) -> None:
    """The stored ``run_after`` of each retry is the failure time plus 60 s, then 240 s; the
    test moves it to the past (instead of sleeping) to make the retry due."""
    async with runtime(durable.connect(sql_url), "exec-1") as rt:
        await rt.start_worker(concurrency=2, poll_interval=0.05)
        workflow_id = await rt.enqueue(flaky, "o-1")
        for attempt_no, delay in ((1, 60.0), (2, 240.0)):
            info = await reaches(rt, workflow_id, WorkflowStatus.PENDING, attempt_no)
            assert info.error is not None and info.error.message == f"boom {attempt_no}"
            run_after = await asyncio.to_thread(stored_run_after, sql_url, workflow_id)
            assert info.updated_at is not None
            assert abs((run_after - info.updated_at).total_seconds() - delay) < 2.0
            assert abs((run_after - datetime.now(UTC)).total_seconds() - delay) < 5.0
            assert await rt.backend.find_available_tasks("probe", 10) == []
            await asyncio.sleep(0.2)  # several polls: the worker starts nothing early
            assert CALLS["attempt"] == attempt_no
            await asyncio.to_thread(make_due, sql_url, workflow_id)
        info = await reaches(rt, workflow_id, WorkflowStatus.DEAD_LETTER, 3)
        assert info.error is not None and info.error.message == "boom 3"
        assert (
            await asyncio.to_thread(
                query,
                sql_url,
                lambda conn: conn.execute(
                    sa.select(sa.func.count()).select_from(tasks_table)
                ).scalar(),
            )
            == 0
        )
        GATES.fixed = True
        await rt.retry(workflow_id)
        assert await rt.result(workflow_id, timeout=WAIT) == "attempt(first(o-1))"
        assert CALLS["first"] == 1 and CALLS["attempt"] == 4


# -- 5. graceful stop -----------------------------------------------------------------------------


async def test_graceful_stop_hands_an_interrupted_execution_back_at_once(backend_url: str) -> None:
    backend_a = durable.connect(backend_url)
    backend_b = second_backend(backend_url, backend_a)
    async with runtime(backend_a, "exec-A", claim_ttl=30) as rt_a:
        worker = await rt_a.start_worker(concurrency=2, poll_interval=0.05)
        workflow_id = await rt_a.enqueue(blocking, "o-1")
        await asyncio.wait_for(GATES.entered.wait(), WAIT)
        info = await rt_a.get_workflow(workflow_id)
        assert (info.status, info.attempts, info.executor_id) == (
            WorkflowStatus.RUNNING,
            1,
            "exec-A",
        )

        stopping = time.monotonic()
        await worker.stop(grace=0.2)
        assert time.monotonic() - stopping < 0.2 + 5.0
        assert CALLS["hold.cancelled"] == 1  # the step was interrupted
        info = await rt_a.get_workflow(workflow_id)
        # back to pending, the interrupted attempt not counted, no error recorded
        assert (info.status, info.attempts, info.error) == (WorkflowStatus.PENDING, 0, None)
        assert [s.name for s in await rt_a.list_steps(workflow_id)] == ["first"]
        # its lease is released: anyone may claim it now, long before the 30 s lease would end
        available = await backend_a.find_available_tasks("someone-else", 10)
        assert [(t.instance_id, t.claimed_by) for t in available] == [(workflow_id, None)]

        GATES.release.set()
        async with runtime(backend_b, "exec-B", claim_ttl=30) as rt_b:
            taking_over = time.monotonic()
            await rt_b.start_worker(concurrency=1, poll_interval=0.05)
            assert await rt_b.result(workflow_id, timeout=WAIT) == "last(hold(first(o-1)))"
            assert time.monotonic() - taking_over < 10.0  # the lease would last 30 s
            info = await rt_b.get_workflow(workflow_id)
            assert (info.status, info.attempts, info.executor_id) == (
                WorkflowStatus.SUCCEEDED,
                1,
                "exec-B",
            )
            steps = await rt_b.list_steps(workflow_id)
            assert [(s.name, s.executor_id) for s in steps] == [
                ("first", "exec-A"),
                ("hold", "exec-B"),
                ("last", "exec-B"),
            ]
    # the completed step was not run again; the interrupted one was
    assert (CALLS["first"], CALLS["hold"], CALLS["last"]) == (1, 2, 1)


async def test_graceful_stop_lets_executions_finish_within_the_grace_period(
    backend_url: str,
) -> None:
    async with runtime(durable.connect(backend_url), "exec-A") as rt:
        worker = await rt.start_worker(concurrency=2, poll_interval=0.05)
        workflow_id = await rt.enqueue(blocking, "o-1")
        await asyncio.wait_for(GATES.entered.wait(), WAIT)
        asyncio.get_running_loop().call_later(0.2, GATES.release.set)
        await worker.stop(grace=WAIT)
        assert CALLS["hold.cancelled"] == 0
        info = await rt.get_workflow(workflow_id)
        assert (info.status, info.attempts, info.output) == (
            WorkflowStatus.SUCCEEDED,
            1,
            "last(hold(first(o-1)))",
        )
        # a stopped worker claims nothing more
        later = await rt.enqueue(ping, 1)
        await asyncio.sleep(0.3)
        assert (await rt.get_workflow(later)).status is WorkflowStatus.PENDING


# -- 6. cancel ----------------------------------------------------------------------------------


async def test_cancel_a_queued_execution_and_a_running_one(backend_url: str) -> None:
    async with runtime(durable.connect(backend_url), "exec-1") as rt:
        queued = await rt.enqueue(record, "cancelled")
        control = await rt.enqueue(record, "control")
        info = await rt.cancel(queued)
        assert info.status is WorkflowStatus.CANCELLED
        worker = await rt.start_worker(concurrency=1, poll_interval=0.05)
        assert await rt.result(control, timeout=WAIT) == "control"
        await asyncio.sleep(0.2)
        assert [label for label, _ in STARTS] == ["control"]  # never picked up
        assert (await rt.get_workflow(queued)).status is WorkflowStatus.CANCELLED
        with pytest.raises(durable.WorkflowCancelledError):
            await rt.result(queued, timeout=1)

        # a running execution stops at its next step boundary
        running = await rt.enqueue(blocking, "o-1")
        await asyncio.wait_for(GATES.entered.wait(), WAIT)
        info = await rt.cancel(running)
        assert info.status is WorkflowStatus.CANCELLED
        GATES.release.set()
        with pytest.raises(durable.WorkflowCancelledError):
            await rt.result(running, timeout=WAIT)

        async def idle() -> bool:
            return worker.running == 0

        await until(idle, "the worker to be idle")
        assert CALLS["hold"] == 1 and CALLS["last"] == 0
        # the step it was in when cancelled is not recorded; nothing after it ran
        assert [s.name for s in await rt.list_steps(running)] == ["first"]
        info = await rt.get_workflow(running)
        assert info.status is WorkflowStatus.CANCELLED
        # cancelling a finished execution changes nothing; the worker goes on working
        assert (await rt.cancel(control)).status is WorkflowStatus.SUCCEEDED
        assert await rt.result(await rt.enqueue(ping, 5), timeout=WAIT) == 5
        assert await backend_tasks(rt) == []
        # runtime.retry runs a cancelled execution after all
        assert (await rt.retry(queued)).status is WorkflowStatus.PENDING
        assert await rt.result(queued, timeout=WAIT) == "cancelled"
        assert [label for label, _ in STARTS] == ["control", "cancelled"]


async def backend_tasks(rt: durable.Runtime) -> list[str]:
    return [t.instance_id for t in await rt.backend.find_available_tasks("probe", 100)]


# -- 7. enqueue inside a workflow ---------------------------------------------------------------


@pytest.mark.parametrize("interrupted", ["after-the-enqueue-step", "inside-the-enqueue-step"])
async def test_a_replayed_parent_does_not_enqueue_its_child_twice(
    backend_url: str, interrupted: str
) -> None:
    """The parent is interrupted (its task cancelled, as a crash would), either after its
    enqueue step was recorded or after the child was created but before the step was recorded,
    then run again: one child, with the deterministic id ``<parent>/<position>``."""
    backend = durable.connect(backend_url)
    recorded = backend.record_step
    block_enqueue_record = asyncio.Event()

    async def record_step(instance_id: str, step: durable.StepRecord, **kw: Any) -> None:
        if interrupted == "inside-the-enqueue-step" and step.name.startswith("enqueue:"):
            GATES.entered.set()
            if not block_enqueue_record.is_set():
                block_enqueue_record.set()
                await asyncio.Event().wait()  # interrupted here, the first time
        await recorded(instance_id, step, **kw)

    backend.record_step = record_step  # type: ignore[method-assign]
    async with runtime(backend, "exec-1") as rt:
        RUNTIMES.append(rt)
        run = asyncio.create_task(rt.run(parent, 3, workflow_id="p-1"))
        await asyncio.wait_for(GATES.entered.wait(), WAIT)
        run.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await run
        info = await rt.get_workflow("p-1")
        assert (info.status, info.attempts) == (WorkflowStatus.PENDING, 0)
        steps = [(s.name, s.output) for s in await rt.list_steps("p-1")]
        if interrupted == "after-the-enqueue-step":
            assert steps == [("first", "first(3)"), ("enqueue:tw.child.v1", "p-1/1")]
        else:
            assert steps == [("first", "first(3)")]
        children = (await rt.list_workflows(parent_id="p-1")).items
        assert [(c.id, c.name, c.status) for c in children] == [
            ("p-1/1", child.name, WorkflowStatus.PENDING)
        ]

        GATES.release.set()
        assert await rt.run(parent, 3, workflow_id="p-1") == "p-1/1"
        children = (await rt.list_workflows(parent_id="p-1")).items
        assert [c.id for c in children] == ["p-1/1"]
        assert CALLS["first"] == 1
        steps = [(s.name, s.output) for s in await rt.list_steps("p-1")]
        assert steps[1] == ("enqueue:tw.child.v1", "p-1/1")
        # the child is queued work: a worker runs it
        await rt.start_worker(concurrency=1, poll_interval=0.05)
        assert await rt.result("p-1/1", timeout=WAIT) == 30
        assert (await rt.get_workflow("p-1/1")).input == {"args": [3], "kwargs": {}}


# -- 8. enqueue by name without the code --------------------------------------------------------


@pytest.mark.slow
def test_a_producer_without_the_code_enqueues_by_name_for_a_worker_process(
    sqlite_url: str, programs: Callable[..., Program], tmp_path: Path
) -> None:
    db_url = sqlite_url  # PostgreSQL: the first test above enqueues by name for worker processes
    log = tmp_path / "steps.log"

    async def before_any_worker() -> str:
        async with producer(db_url) as rt:
            with pytest.raises(durable.UnknownWorkflowError, match=PIPELINE):
                await rt.enqueue(PIPELINE, 1)
            assert (await rt.list_workflows()).items == []  # nothing was written
            return await rt.enqueue(PIPELINE, 1, served_elsewhere=True)

    first_id = asyncio.run(before_any_worker())
    worker = start_worker_process(programs, db_url, "worker-x", log, concurrency=2, grace=0.3)

    async def with_a_worker() -> tuple[Any, Any, list[durable.StepRecord], str]:
        async with producer(db_url) as rt:
            first_result = await rt.result(first_id, timeout=WAIT)
            # now that a worker registered the name, no flag is needed
            second_id = await rt.enqueue(PIPELINE, 2)
            second_result = await rt.result(second_id, timeout=WAIT)
            # and one that will still be in its step b when the worker is told to stop
            long_id = await rt.enqueue(PIPELINE, 3, WAIT, workflow_id="long")
            return second_result, first_result, await rt.list_steps(second_id), long_id

    second_result, first_result, steps, long_id = asyncio.run(with_a_worker())
    assert first_result == pipeline_result(1)
    assert second_result == pipeline_result(2)
    assert {s.executor_id for s in steps} == {"worker-x"}
    wait_until(
        lambda: any(e.workflow_id == long_id and e.step == "b" for e in read_log(log)),
        "the long step to start",
        worker,
    )
    # SIGTERM mid-step: after the grace period the step is interrupted, the execution handed
    # back (pending, the attempt not counted, no lease held) and the process exits 0
    stopping = time.monotonic()
    os.kill(worker.pid, signal.SIGTERM)
    assert worker.wait() == 0, worker.output()
    assert time.monotonic() - stopping < 0.3 + 5.0
    assert {e.pid for e in read_log(log)} == {worker.pid}

    async def handed_back() -> tuple[durable.WorkflowInfo, list[durable.AvailableTask]]:
        async with producer(db_url) as rt:
            info = await rt.get_workflow(long_id)
            available = await rt.backend.find_available_tasks("someone-else", 10)
            await rt.cancel(long_id)
            return info, available

    info, available = asyncio.run(handed_back())
    assert (info.status, info.attempts) == (WorkflowStatus.PENDING, 0)
    assert [(t.instance_id, t.claimed_by) for t in available] == [(long_id, None)]


# -- 9. disabled names -------------------------------------------------------------------------


async def unclaimed(rt: durable.Runtime, workflow_id: str) -> bool:
    """The execution is pending and nobody ever claimed it."""
    info = await rt.get_workflow(workflow_id)
    held = [t for t in await rt.backend.find_available_tasks("probe", 100) if t.claimed_by]
    return info.status is WorkflowStatus.PENDING and info.attempts == 0 and held == []


async def test_a_disabled_name_is_not_claimed_until_enabled(backend_url: str) -> None:
    # Synchronized on state: work enqueued after the disabled execution comes after it in the
    # queue, so once a worker has run that later work, every claim it made had the disabled
    # execution in front of it, and skipped it.
    backend = durable.connect(backend_url)
    async with runtime(backend, "exec-1") as rt:
        REG.disable(record.name)  # in this process only
        worker = await rt.start_worker(concurrency=2, poll_interval=0.05)
        assert record.name not in worker.names
        waiting = await rt.enqueue(record, "waiting")
        assert await rt.result(await rt.enqueue(ping, 1), timeout=WAIT) == 1  # others run
        assert await unclaimed(rt, waiting)
        assert STARTS == []
        REG.enable(record.name)
        assert await rt.result(waiting, timeout=WAIT) == "waiting"

        # disabled for every worker on the database, by another runtime (an operator's tool),
        # after the worker started: the worker's very next claim skips it (a poll interval far
        # longer than the test shows that nothing waits for the worker to re-read anything)
        await worker.stop()
        worker = await rt.start_worker(concurrency=2, poll_interval=WAIT)
        assert await rt.result(await rt.enqueue(ping, 2), timeout=WAIT) == 2  # it claims
        async with durable.Runtime(
            second_backend(backend_url, backend), registry=durable.Registry(), recover=False
        ) as admin:
            await admin.set_workflow_enabled(record.name, False)
            later = await rt.enqueue(record, "later")
            assert await rt.result(await rt.enqueue(ping, 3), timeout=WAIT) == 3
            assert await unclaimed(rt, later)
            await admin.set_workflow_enabled(record.name, True)
            await rt.enqueue(ping, 4)  # a wake-up: the worker claims again at once
            assert await rt.result(later, timeout=WAIT) == "later"
        assert [label for label, _ in STARTS] == ["waiting", "later"]


async def test_a_wake_up_before_the_first_wait_is_not_lost() -> None:
    """``notify_work`` before a loop's first ``wait_for_work`` (a worker started just before an
    enqueue in its process) wakes that wait: it is not lost until the next poll."""
    backend = durable.connect("memory://")
    async with backend:
        backend.notify_work()
        woken = asyncio.get_running_loop().create_task(backend.wait_for_work(3600))
        await asyncio.wait_for(woken, WAIT)  # an hour if the wake-up were lost


async def test_serve_freezes_what_the_process_holds_once_its_worker_started() -> None:
    """``serve`` takes the process as its own: once its worker started, the objects the
    process holds are moved out of the collector's way (``gc.freeze``)."""
    gc.unfreeze()
    try:
        rt = durable.Runtime(durable.connect("memory://"), registry=REG, recover=False)
        serving = asyncio.create_task(durable.worker.serve(rt, poll_interval=0.02))
        deadline = time.monotonic() + 10
        while not rt._workers:  # serve hands out no worker to wait on
            assert time.monotonic() < deadline and not serving.done(), "serve did not start"
            await asyncio.sleep(0.01)
        assert gc.get_freeze_count() > 0
        signal.raise_signal(signal.SIGTERM)  # serve's own handler: a graceful stop
        assert await asyncio.wait_for(serving, 10) == 0
    finally:
        gc.unfreeze()
