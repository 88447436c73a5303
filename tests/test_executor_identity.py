"""One live process per executor id (durable.identity), and what a run waiting for another
executor's lease says.

* two runtimes under one id, in one process or in two real processes: the second does not
  start while the first lives; it starts once the first stopped, or was SIGKILLed (and then
  resumes the dead one's work at once, long before its leases expire);
* the id of a process that is gone on this host (no such pid, a zombie, a recycled pid) is
  taken over at once; on another host, once its heartbeats stopped for 3 of its intervals;
* a runtime presumed dead that comes back cannot heartbeat or stop under the id taken over;
* a run that waits for a lease held by another executor logs what it waits for, and until when.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

import durable
from durable.identity import process_token
from durable.models import WORKFLOW_TASK

PROG = Path(__file__).with_name("workerprog.py")
PIPELINE = "workerprog.pipeline.v1"
WAIT = 60.0  # a safety net for what the tests wait for, never reached when green
HOST = socket.gethostname()
REG = durable.Registry()


@durable.workflow(name="tests.identity.ping.v1", registry=REG)
async def ping(x: int) -> int:
    return x


class FakeClock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def connect_twice(url: str) -> tuple[durable.PersistentBackend, durable.PersistentBackend]:
    """Two connections to one storage (one shared object for memory://)."""
    first = durable.connect(url)
    return first, first if url == "memory://" else durable.connect(url)


def runtime(backend: durable.PersistentBackend, executor_id: str = "node-1") -> durable.Runtime:
    return durable.Runtime(backend, executor_id=executor_id, recover=False, registry=REG)


async def record(
    backend: durable.PersistentBackend,
    *,
    hostname: str = HOST,
    pid: int,
    incarnation: str,
    interval: float = 3600.0,
) -> None:
    """Record ``node-1`` as started by another process, heartbeat just now."""
    assert await backend.start_executor(
        "node-1",
        hostname=hostname,
        pid=pid,
        incarnation=incarnation,
        heartbeat_interval=interval,
        replacing=None,
    )


async def holder(backend: durable.PersistentBackend) -> durable.ExecutorInfo:
    found = await backend.get_executor("node-1")
    assert found is not None
    return found


# -- in one process ----------------------------------------------------------------------------


async def test_a_second_runtime_under_a_live_id_does_not_start(backend_url: str) -> None:
    first_backend, second_backend = connect_twice(backend_url)
    async with runtime(first_backend) as first:
        second = runtime(second_backend)
        with pytest.raises(durable.ExecutorIdInUseError) as caught:
            await second.start()
        assert (caught.value.executor_id, caught.value.pid) == ("node-1", os.getpid())
        assert f"in use by process {os.getpid()} on host {HOST!r}" in str(caught.value)
        with pytest.raises(durable.DurableError, match="not started"):
            await second.run(ping, 1)
        assert await first.run(ping, 2) == 2  # the first one runs on, unharmed
        owner = await holder(first_backend)
    # once the first stopped, the id is free
    async with runtime(second_backend) as second:
        assert await second.run(ping, 3) == 3
        now = await holder(second_backend)
        assert now.incarnation != owner.incarnation and now.stopped_at is None


async def test_runtimes_starting_at_once_under_one_id_one_wins(backend_url: str) -> None:
    backends = [durable.connect(backend_url)]
    backends += [backends[0] if backend_url == "memory://" else durable.connect(backend_url)]
    runtimes = [runtime(b) for b in backends]
    outcomes = await asyncio.gather(*(rt.start() for rt in runtimes), return_exceptions=True)
    try:
        assert sorted(type(o).__name__ for o in outcomes) == ["ExecutorIdInUseError", "NoneType"]
    finally:
        for rt in runtimes:
            await rt.close()


@pytest.fixture
def dead_pid() -> int:
    """The pid of a process that ended (and was reaped)."""
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], check=True, capture_output=True
    )
    return int(dead.stdout)


async def test_the_id_of_a_dead_process_on_this_host_is_taken_at_once(
    backend_url: str, dead_pid: int
) -> None:
    first_backend, second_backend = connect_twice(backend_url)
    async with first_backend:
        await record(first_backend, pid=dead_pid, incarnation="x/y")  # fresh for an hour
    async with runtime(second_backend):
        assert (await holder(second_backend)).pid == os.getpid()


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    yield process
    if process.poll() is None:
        process.kill()
    process.wait()


def is_zombie(pid: int) -> bool:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][0] == "Z"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc (Linux)")
async def test_a_zombie_or_a_recycled_pid_does_not_hold_an_id(
    sleeper: subprocess.Popen[bytes],
) -> None:
    backend = durable.InMemoryBackend()
    live = f"{process_token(sleeper.pid)}/x"
    # alive, and the same process as recorded: in use
    await record(backend, pid=sleeper.pid, incarnation=live)
    with pytest.raises(durable.ExecutorIdInUseError):
        await runtime(backend).start()
    # the pid now belongs to another process (a different start time): not in use
    backend.reset()
    await record(backend, pid=sleeper.pid, incarnation="0.1/x")
    async with runtime(backend):
        pass
    # killed and not reaped yet (a zombie): not in use
    backend.reset()
    await record(backend, pid=sleeper.pid, incarnation=live)
    os.kill(sleeper.pid, signal.SIGKILL)
    deadline = time.monotonic() + WAIT
    while not is_zombie(sleeper.pid):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    async with runtime(backend):
        pass


async def test_an_id_on_another_host_is_taken_once_its_heartbeats_stopped() -> None:
    """Judged by that executor's own interval: 3 missed heartbeats (on a fake clock)."""
    fake = FakeClock(datetime(2030, 1, 1, tzinfo=UTC))
    backend = durable.InMemoryBackend(clock=fake)
    await record(backend, hostname="elsewhere", pid=os.getpid(), incarnation="a", interval=1)
    rt = runtime(backend)
    with pytest.raises(durable.ExecutorIdInUseError, match="on host 'elsewhere'"):
        await rt.start()
    fake.now += timedelta(seconds=2.9)
    with pytest.raises(durable.ExecutorIdInUseError):
        await rt.start()
    fake.now += timedelta(seconds=0.2)
    async with rt:
        assert (await holder(backend)).hostname == HOST


async def test_an_id_on_another_host_is_taken_once_stale_on_sql(sql_url: str) -> None:
    """The same on the database's clock: fresh for an hour, then beating every 10 ms (stale
    within 30 ms; waited for)."""
    first_backend, second_backend = connect_twice(sql_url)
    async with first_backend:
        await record(first_backend, hostname="elsewhere", pid=1, incarnation="b")
        rt = runtime(second_backend)
        with pytest.raises(durable.ExecutorIdInUseError, match="on host 'elsewhere'"):
            await rt.start()
        assert await first_backend.start_executor(
            "node-1",
            hostname="elsewhere",
            pid=1,
            incarnation="c",
            heartbeat_interval=0.01,
            replacing="b",
        )
        deadline = time.monotonic() + WAIT
        while not (await holder(first_backend)).stale:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        async with rt:
            assert (await holder(first_backend)).hostname == HOST


@pytest.fixture(
    params=["sqlite", "aiosqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def sql_url(request: pytest.FixtureRequest) -> str:
    fixture = {"sqlite": "sqlite_url", "aiosqlite": "aiosqlite_url", "postgres": "pg_url"}
    return str(request.getfixturevalue(fixture[request.param]))


class Gate:
    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.release = asyncio.Event()
        self.after = 0


GATE = Gate()


@durable.step(name="tests.identity.held")
async def held() -> int:
    GATE.entered.set()
    await GATE.release.wait()
    return 1


@durable.step(name="tests.identity.after")
async def after() -> int:
    GATE.after += 1
    return 2


@durable.workflow(name="tests.identity.two_steps.v1", registry=REG)
async def two_steps() -> int:
    return await held() + await after()


async def test_a_runtime_presumed_dead_stops_under_its_lost_id(
    backend_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Another process took the id over while this one looked dead (here: while one of its
    workflows waits in a step). This one finds out at its next heartbeat, or before its next
    step if its lease's local deadline passed: from then on it runs no further step, records
    nothing (not even the step in flight), claims nothing, hands nothing back (the leases are
    the other process's), and neither beats nor stops under the id."""
    global GATE
    GATE = Gate()
    first_backend, other = connect_twice(backend_url)
    rt = durable.Runtime(
        first_backend, executor_id="node-1", recover=False, registry=REG, claim_ttl=0.6
    )
    with caplog.at_level(logging.ERROR, logger="durable.runtime"):
        async with rt:
            run = asyncio.create_task(rt.run(two_steps, workflow_id="wf-1"))
            await asyncio.wait_for(GATE.entered.wait(), WAIT)
            mine = await holder(first_backend)
            async with other if other is not first_backend else contextlib.nullcontext():
                assert await other.start_executor(
                    "node-1",
                    hostname="elsewhere",
                    pid=1,
                    incarnation="successor",
                    heartbeat_interval=3600,
                    replacing=mine.incarnation,
                )
            deadline = time.monotonic() + WAIT
            while not rt.superseded:  # its node heartbeat (every 0.2 s) finds out
                assert time.monotonic() < deadline
                await asyncio.sleep(0.01)
            assert await rt._node_heartbeat() is False
            with pytest.raises(durable.ClaimLostError, match="another process under 'node-1'"):
                await rt.check_identity("wf-1")
            GATE.release.set()
            with pytest.raises(durable.ClaimLostError):
                await asyncio.wait_for(run, WAIT)
            assert GATE.after == 0  # the next step did not run
            task = await first_backend.get_task("wf-1", WORKFLOW_TASK)
            assert task.claimed_by == "node-1"  # not handed back: the successor's now
    lost = [r for r in caplog.records if getattr(r, "action", "") == "executor.superseded"]
    assert len(lost) == 1 and "no longer this process's" in lost[0].getMessage()
    # closing did not mark the successor stopped
    async with durable.connect(backend_url) if first_backend is not other else other as again:
        successor = await holder(again)
        assert (successor.incarnation, successor.stopped_at) == ("successor", None)
        info = await again.get_workflow("wf-1")
        assert info.status is durable.WorkflowStatus.RUNNING
        # the step in flight when it found out is not recorded either: the leases, and the
        # execution's next run, are the successor's (it runs the step again)
        assert await again.list_steps("wf-1") == []


PAUSED: list[Callable[[], None]] = []  # what starts as the step pauses
TAKEN = threading.Event()  # the successor took the executor id over


@durable.step(name="tests.identity.paused")
async def paused() -> int:
    for start in PAUSED:
        start()
    # the loop blocked, as a process stopped: no heartbeat, until the successor has the id
    TAKEN.wait(WAIT)
    return 1


@durable.workflow(name="tests.identity.paused_then_after.v1", registry=REG)
async def paused_then_after() -> int:
    return await paused() + await after()


async def test_a_process_paused_past_its_ids_takeover_records_nothing_more(sql_url: str) -> None:
    """Another process takes the executor id over once this one has been silent for three
    heartbeat intervals, which comes long before its leases (held by the id) run out when the
    interval is below a third of ``claim_ttl``: the paused process came back, took its leases
    for held until ``claim_ttl``, recorded the step it was in and ran the next one, under the
    leases of its successor. Its local window is now the shorter of the two."""
    global GATE
    GATE = Gate()
    done = threading.Event()

    def successor() -> None:
        async def take_over() -> None:
            while True:  # once the paused one is silent for three intervals
                await asyncio.sleep(0.2)
                successor = durable.Runtime(
                    durable.connect(sql_url), executor_id="node-1", recover=False, registry=REG
                )
                try:
                    await successor.start()
                except durable.ExecutorIdInUseError:
                    await successor.close()
                    continue
                break
            TAKEN.set()
            await asyncio.to_thread(done.wait, WAIT)
            await successor.close()

        asyncio.run(take_over())

    rt = durable.Runtime(
        durable.connect(sql_url),
        executor_id="node-1",
        recover=False,
        registry=REG,
        claim_ttl=30,
        heartbeat_interval=0.2,
    )
    other = threading.Thread(target=successor)
    TAKEN.clear()
    PAUSED[:] = [other.start]
    try:
        async with rt:
            run = asyncio.create_task(rt.run(paused_then_after, workflow_id="paused"))
            with pytest.raises(durable.ClaimLostError):
                await asyncio.wait_for(run, WAIT)
            assert GATE.after == 0  # the next step did not run
            assert await rt.backend.list_steps("paused") == []  # nor was the paused one kept
    finally:
        PAUSED.clear()
        TAKEN.set()
        done.set()
        if other.is_alive():
            other.join(WAIT)


# -- a run waiting for another executor's lease ------------------------------------------------


@pytest.mark.slow
async def test_a_run_waiting_for_another_executors_lease_says_so(
    backend_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A rerun after a crash under a new executor id waits for the old lease: it logs, once,
    whose lease it waits for and until when, then runs the workflow when the lease expires."""
    async with runtime(durable.connect(backend_url), "new") as rt:
        workflow_id = await rt.enqueue(ping, 5, workflow_id="wf-held")
        claim = await rt.backend.claim_task(
            workflow_id, WORKFLOW_TASK, "crashed-run", timedelta(seconds=1)
        )
        assert claim is not None
        with caplog.at_level(logging.WARNING, logger="durable.runtime"):
            assert await rt.run(ping, 5, workflow_id=workflow_id) == 5
    waits = [r for r in caplog.records if getattr(r, "action", "") == "workflow.waiting"]
    assert len(waits) == 1, [r.getMessage() for r in waits]
    assert waits[0].levelno == logging.WARNING
    assert (waits[0].workflow_id, waits[0].holder, waits[0].until) == (  # type: ignore[attr-defined]
        workflow_id,
        "crashed-run",
        claim.expires_at,
    )
    message = waits[0].getMessage()
    assert "held by executor crashed-run" in message and claim.expires_at.isoformat() in message
    assert "stable executor_id" in message


async def test_a_run_waiting_for_a_live_executor_does_not_warn(
    backend_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The usual case (a live executor runs the workflow) is no warning: said at INFO."""
    first_backend, second_backend = connect_twice(backend_url)
    async with runtime(first_backend, "new") as rt, runtime(second_backend, "busy") as busy:
        workflow_id = await rt.enqueue(ping, 5, workflow_id="wf-busy")
        assert await busy.backend.claim_task(workflow_id, WORKFLOW_TASK, "busy", timedelta(60))
        with caplog.at_level(logging.INFO, logger="durable.runtime"):
            run = asyncio.create_task(rt.run(ping, 5, workflow_id=workflow_id))
            deadline = time.monotonic() + WAIT
            while not any(getattr(r, "action", "") == "workflow.waiting" for r in caplog.records):
                assert time.monotonic() < deadline
                await asyncio.sleep(0.01)
            run.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await run
    waits = [r for r in caplog.records if getattr(r, "action", "") == "workflow.waiting"]
    assert [(r.levelno, r.getMessage()) for r in waits] == [
        (logging.INFO, f"workflow {workflow_id} is run by executor busy: waiting for it")
    ]


# -- two real processes ------------------------------------------------------------------------


class Worker:
    """``workerprog.py serve`` under a given executor id."""

    def __init__(self, workdir: Path, name: str, url: str, executor_id: str, log: Path) -> None:
        self.stderr = workdir / f"stderr-{name}.txt"
        with self.stderr.open("wb") as out:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    str(PROG),
                    "serve",
                    "--url",
                    url,
                    "--executor-id",
                    executor_id,
                    "--log",
                    str(log),
                    "--claim-ttl",
                    "600",  # no lease expires during the test: only re-entrancy resumes work
                    "--poll-interval",
                    "0.05",
                ],
                cwd=workdir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
            )

    def output(self) -> str:
        return self.stderr.read_text(encoding="utf-8", errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()


async def wait_for(what: str, check: object, *workers: Worker) -> None:
    deadline = time.monotonic() + WAIT
    while not await check():  # type: ignore[operator]
        for worker in workers:
            if worker.process.poll() is not None:
                pytest.fail(f"a worker exited while waiting for {what}:\n{worker.output()}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


@pytest.mark.slow
async def test_two_processes_under_one_id_and_a_restart_after_sigkill(
    db_url: str, tmp_path: Path
) -> None:
    log = tmp_path / "steps.log"
    workers: list[Worker] = []
    producer = durable.Runtime(
        durable.connect(db_url), executor_id="producer", recover=False, registry=durable.Registry()
    )
    try:
        async with producer:
            first = Worker(tmp_path, "first", db_url, "node-1", log)
            workers.append(first)

            async def serving(worker: Worker) -> bool:
                found = await producer.backend.get_executor("node-1")
                return found is not None and found.pid == worker.process.pid

            await wait_for("the first worker to start", lambda: serving(first), first)
            # a second process under the same id does not start while the first lives
            second = Worker(tmp_path, "second", db_url, "node-1", log)
            workers.append(second)
            assert second.process.wait(timeout=WAIT) != 0
            assert "ExecutorIdInUseError" in second.output()
            assert f"in use by process {first.process.pid}" in second.output()
            assert first.process.poll() is None

            # the first one is SIGKILLed mid-step; a restart under its id resumes at once
            workflow_id = await producer.enqueue(PIPELINE, 1, 2.0, served_elsewhere=True)

            async def mid_step() -> bool:
                return log.exists() and f"{workflow_id} b" in log.read_text()

            await wait_for("step b to start", mid_step, first)
            first.process.send_signal(signal.SIGKILL)
            assert first.process.wait(timeout=WAIT) == -signal.SIGKILL
            third = Worker(tmp_path, "third", db_url, "node-1", log)
            workers.append(third)
            # its leases last 600 s: only the restart under the same id can finish it now
            result = await producer.result(workflow_id, timeout=WAIT)
            assert result == {"n": 1, "out": 1}
            steps = await producer.list_steps(workflow_id)
            assert [s.executor_id for s in steps] == ["node-1"] * 3
            found = await producer.backend.get_executor("node-1")
            assert found is not None and found.pid == third.process.pid
            assert third.process.poll() is None, third.output()
    finally:
        for worker in workers:
            worker.stop()
