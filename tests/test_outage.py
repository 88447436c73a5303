"""Database outages: workers ride them out and resume on their own.

* Unit level: every way PostgreSQL can be unreachable (a connection refused, dropped, or
  terminated by the server; the server starting up, shutting down, or out of connection slots;
  no pooled connection free in time) reaches callers as :class:`BackendUnavailableError`, on the
  engine path and on the direct path (opening a new connection included) and on the blocking
  path of sync workflows. A TCP proxy in front of the shared server plays the outage (it drops
  every connection and refuses new ones until restored), so the shared server is never touched.
* The worker's loop survives any exception raised while claiming; a loop that dies all the same
  (a BaseException) leaves a process that does not look healthy: its node heartbeat stops,
  ``serve`` raises :class:`WorkerCrashedError` and ``durable worker`` exits with status 1.
* Real outages: a PostgreSQL cluster of these tests' own (``pg_createcluster``, port 5499; never
  the shared server on 5432) is restarted in immediate mode, then stopped for 6 seconds and
  started, while three worker processes (tests/workerprog.py) drain 2,000 workflows, half of
  them sync. Every workflow succeeds, no step whose result was recorded ran again, and after the
  server is back each worker claims work, listens for notifications and sends heartbeats again.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from support import pg_conninfo, terminate_other_sessions

import durable
from durable.backends import SQLAlchemyBackend
from durable.cli import main
from durable.errors import BackendError, BackendUnavailableError, WorkerCrashedError
from durable.models import ChangeKind, StepRecord, TaskSpec, WorkflowSnapshot
from durable.testing._concurrency import max_overlap

# one PostgreSQL cluster of these tests' own, on one port: each test that restarts it holds it
# under a file lock for that test (see outage_cluster); the xdist group keeps them on one
# worker where pytest-xdist's loadgroup works (with pytest 9.2 and xdist 3.8 it does not group)
pytestmark = pytest.mark.xdist_group("outage-cluster")

T = TypeVar("T")

PROG = Path(__file__).with_name("workerprog.py")
OUTAGE = "workerprog.outage.v1"  # served by workerprog.py, not registered here
OUTAGE_SYNC = "workerprog.outage.sync.v1"
WAIT = 120.0  # an upper bound for anything the tests wait for, never reached when green

REG = durable.Registry()
GATE: dict[str, asyncio.Event] = {}  # the test's events, for the step "to.held"
RUNS: Counter[str] = Counter()


@durable.workflow(name="to.echo.v1", registry=REG)
async def echo(x: int) -> int:
    return x


@durable.step(name="to.held")
async def held(x: int) -> int:
    RUNS["held"] += 1
    GATE["entered"].set()
    await GATE["release"].wait()
    return x * 10


@durable.step(name="to.after")
async def after(x: int) -> int:
    RUNS["after"] += 1
    return x + 1


@durable.workflow(name="to.held.v1", registry=REG)
async def holding(x: int) -> int:
    return await after(await held(x))


# -- a proxy that plays the outage -------------------------------------------------------------


class Proxy:
    """A TCP proxy to a PostgreSQL server, on a port of its own, run by a thread: :meth:`cut`
    drops every connection through it and refuses new ones, :meth:`restore` accepts them
    again on the same port; :meth:`stall` holds every byte (a server that hangs, neither
    answering nor refusing) until :meth:`unstall`."""

    def __init__(self, host: str, port: int) -> None:
        self._target = (host, port)
        self._flowing = asyncio.Event()  # cleared while stalled (set on the proxy's loop)
        self._flowing.set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._server: asyncio.Server | None = None
        self._transports: set[asyncio.BaseTransport] = set()
        self.port = 0
        self.restore()

    def url(self, pg_url: str) -> str:
        return sa.make_url(pg_url).set(host="127.0.0.1", port=self.port).render_as_string(False)

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=30)

    def restore(self) -> None:
        self._call(self._listen())

    def cut(self) -> None:
        self._call(self._cut())

    def stall(self) -> None:
        self._call(self._switch(self._flowing.clear))  # done on the proxy's loop when it returns

    def unstall(self) -> None:
        self._call(self._switch(self._flowing.set))

    @staticmethod
    async def _switch(flip: Any) -> None:
        flip()

    def close(self) -> None:
        self._call(self._cut())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _cut(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for transport in list(self._transports):
            transport.abort()  # a reset: the peers see the connection fail at once
        self._transports.clear()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.transport.abort()
            return
        self._transports |= {writer.transport, up_writer.transport}

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, ConnectionError):
                while data := await source.read(65536):
                    await self._flowing.wait()
                    sink.write(data)
                    await sink.drain()
            sink.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._transports -= {writer.transport, up_writer.transport}


@pytest.fixture
def proxy(pg_url: str) -> Iterator[Proxy]:
    """A proxy in front of the test's PostgreSQL database."""
    url = sa.make_url(pg_url)
    proxy = Proxy(url.host or "127.0.0.1", url.port or 5432)
    try:
        yield proxy
    finally:
        proxy.close()


@pytest.fixture
async def proxied(pg_url: str, proxy: Proxy) -> AsyncIterator[SQLAlchemyBackend]:
    """A started backend that reaches the test's database through the proxy, holding the
    claim on a workflow "wf"."""
    backend = durable.connect(proxy.url(pg_url))
    assert isinstance(backend, SQLAlchemyBackend)
    await backend.start()
    await backend.create_workflow(
        WorkflowSnapshot(id="wf", name="wf"), task=TaskSpec(instance_id="wf", name="wf")
    )
    try:
        yield backend
    finally:
        await backend.close()


def _step(position: int) -> StepRecord:
    return StepRecord(position=position, name="s", output=position, executor_id="w1")


async def _claim(backend: SQLAlchemyBackend) -> list[durable.TaskClaim]:
    return await backend.claim_available_tasks(
        "w1", 4, timedelta(minutes=5), names=["wf"], include_own=False
    )


# -- unit level: the translation ---------------------------------------------------------------


@pytest.mark.postgres
async def test_a_refused_connection_is_unavailable_on_every_path(
    proxied: SQLAlchemyBackend, proxy: Proxy
) -> None:
    assert [c.instance_id for c in await _claim(proxied)] == ["wf"]  # a direct connection
    proxy.cut()
    # the direct path: its connection was dropped, then opening a new one is refused
    for _ in range(3):
        with pytest.raises(BackendUnavailableError, match="claim available tasks"):
            await _claim(proxied)
    # the engine path (a transaction), the direct path's step record, the blocking path
    with pytest.raises(BackendUnavailableError, match="list registered workflows"):
        await proxied.list_registered_workflows()
    with pytest.raises(BackendUnavailableError, match="record step 0"):
        await proxied.record_step("wf", _step(0), worker_id="w1")
    assert proxied.records_steps_blocking
    with pytest.raises(BackendUnavailableError, match="record step 0"):
        await asyncio.to_thread(proxied.record_step_blocking, "wf", _step(0), worker_id="w1")
    with pytest.raises(BackendUnavailableError, match="Connection refused"):
        await proxied.list_registered_workflows()
    proxy.restore()  # the same backend works again, on every path
    assert await _claim(proxied) == []  # its claim is held by w1 already
    await proxied.record_step("wf", _step(0), worker_id="w1")
    await asyncio.to_thread(proxied.record_step_blocking, "wf", _step(1), worker_id="w1")
    assert [s.output for s in await proxied.list_steps("wf")] == [0, 1]
    assert proxied.checked_out_connections() == 0


@pytest.mark.postgres
async def test_connections_the_server_terminated_while_idle_are_replaced_before_use(
    proxied: SQLAlchemyBackend, pg_url: str
) -> None:
    """Direct and pooled: nothing is sent on a connection whose server said goodbye while it
    sat idle, so the caller sees no error (the database answers)."""
    await _claim(proxied)
    await proxied.list_registered_workflows()  # a pooled connection as well
    database = sa.make_url(pg_url).database
    conninfo = sa.make_url(pg_url).set(drivername="postgresql").render_as_string(False)
    async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as admin:
        await admin.execute(
            "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity"
            " WHERE datname = %s AND pid <> pg_backend_pid()",
            (database,),
        )
    await asyncio.sleep(0.2)  # the goodbyes cross the proxy
    assert await _claim(proxied) == []
    assert await proxied.list_registered_workflows() == []
    assert proxied.checked_out_connections() == 0


@pytest.mark.postgres
async def test_a_pooled_connection_lost_after_its_check_is_replaced_for_a_transaction(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The checkout's look at a pooled connection races the server closing it (an idle
    timeout firing just then; under load, a runtime's start failed on it): a transaction whose
    connection turns out lost before its commit has written nothing, and runs again on another
    one. Here the look is turned off, so every terminated connection reaches a statement."""
    from durable.backends.sql import stale

    backend = durable.connect(pg_url)
    await backend.start()
    try:
        assert await backend.list_registered_workflows() == []  # a pooled connection
        monkeypatch.setattr(stale, "_driver_closed_while_idle", lambda _c: False)
        await terminate_other_sessions(pg_url)
        assert await backend.list_registered_workflows() == []
    finally:
        await backend.close()


@pytest.mark.postgres
async def test_no_pooled_connection_free_in_time_is_unavailable(pg_url: str) -> None:
    backend = durable.connect(
        pg_url, engine_options={"pool_size": 1, "max_overflow": 0, "pool_timeout": 0.2}
    )
    assert isinstance(backend, SQLAlchemyBackend)
    async with backend:
        # through a transaction (the bulk path): create_workflow's direct statement would open
        # the direct path's connection before the pool is exhausted below
        await backend.create_workflows(
            [(WorkflowSnapshot(id="wf", name="wf"), TaskSpec(instance_id="wf", name="wf"))]
        )
        engine = backend.engine
        assert isinstance(engine, sa.ext.asyncio.AsyncEngine)
        async with engine.connect():  # the pool's only connection, held
            with pytest.raises(BackendUnavailableError, match="pool"):
                await backend.list_registered_workflows()
            with pytest.raises(BackendUnavailableError, match="pool"):  # the direct path opens
                await _claim(backend)  # its connections through the pool
        assert [c.instance_id for c in await _claim(backend)] == ["wf"]


@pytest.mark.parametrize(
    ("error", "unavailable"),
    [
        (psycopg.errors.TooManyConnections("sorry, too many clients already"), True),
        (psycopg.errors.DiskFull("could not extend file: No space left on device"), True),
        (psycopg.errors.OutOfMemory("out of memory"), True),
        (psycopg.errors.ReadOnlySqlTransaction("cannot execute INSERT in a read-only"), True),
        (psycopg.errors.CannotConnectNow("the database system is starting up"), True),
        (psycopg.errors.AdminShutdown("terminating connection"), True),
        (psycopg.errors.CrashShutdown("terminating connection"), True),
        (psycopg.errors.ConnectionFailure("connection failure"), True),
        (psycopg.OperationalError("connection failed: Connection refused"), True),
        (psycopg.errors.DeadlockDetected("deadlock detected"), False),
        (psycopg.errors.QueryCanceled("canceling statement due to statement timeout"), False),
        (psycopg.errors.UniqueViolation("duplicate key"), False),
    ],
)
async def test_driver_errors_are_classified(error: Exception, unavailable: bool) -> None:
    """Raised bare by the driver, as opening a connection does, or wrapped by SQLAlchemy."""
    backend = SQLAlchemyBackend("postgresql+psycopg://nobody@127.0.0.1:1/none")
    backend._started = True  # as after start(): before it, every connection error is unavailable
    wrapped = sa.exc.DBAPIError.instance("SELECT 1", {}, error, psycopg.Error)
    for raised in (error, wrapped):
        with pytest.raises(BackendError) as info, backend._errors("run it"):
            raise raised
        assert isinstance(info.value, BackendUnavailableError) is unavailable
        assert info.value.__cause__ is raised
    await backend.close()


# -- unit level: the worker's loop ---------------------------------------------------------------


@pytest.mark.postgres
async def test_a_step_in_flight_when_the_database_goes_away_does_not_leave_the_worker_stuck(
    pg_url: str, proxy: Proxy
) -> None:
    GATE.update(entered=asyncio.Event(), release=asyncio.Event())
    RUNS.clear()
    async with durable.Runtime(
        durable.connect(proxy.url(pg_url)), registry=REG, recover=False, claim_ttl=1.0
    ) as rt:
        worker = await rt.start_worker(concurrency=2, poll_interval=0.05)
        # counts the worker's claims (at the runtime: during the outage a claim may fail
        # before it reaches the backend's claim, at its re-read of the limited queues)
        claims = Flaky(rt, RuntimeError("unused"), times=0, method="claim_work")
        async with durable.Runtime(
            durable.connect(pg_url), registry=durable.Registry(), recover=False
        ) as producer:
            wid = await producer.enqueue("to.held.v1", 4, served_elsewhere=True)
            await asyncio.wait_for(GATE["entered"].wait(), WAIT)
            proxy.cut()  # the step is running: its record, and all else, will fail
            GATE["release"].set()
            # the execution ends here (its outcome cannot be recorded); the worker goes on
            await until(lambda: _now(worker.running), lambda running: running == 0)
            tried = claims.calls  # and claiming, refused, fails a few times
            await until(lambda: _now(claims.calls), lambda calls: calls >= tried + 3)
            proxy.restore()
            # its lease expires and it resumes; the step that ran is not recorded: it runs again
            assert await producer.result(wid, timeout=WAIT) == 41
        assert worker.failure is None
        await worker.stop()
    assert RUNS == {"held": 2, "after": 1}


@pytest.mark.postgres
async def test_an_attempt_an_outage_cut_off_is_handed_back_as_soon_as_the_database_answers(
    pg_url: str, proxy: Proxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The step's record fails while the proxy is cut: the execution keeps its slot, trying to
    hand the attempt back, until the database answers again; then the attempt is handed back
    uncounted and runs again 50 ms later, long before its 60 s lease would have expired.
    (Before, the hand-back was tried once: the slot was freed at once, for the worker to start
    more executions into the outage, and the attempt waited for its lease.)"""
    monkeypatch.setattr(durable.runtime, "OUTAGE_BACKOFF", timedelta(milliseconds=50))
    GATE.update(entered=asyncio.Event(), release=asyncio.Event())
    RUNS.clear()
    async with durable.Runtime(
        durable.connect(proxy.url(pg_url)), registry=REG, recover=False, claim_ttl=60.0
    ) as rt:
        worker = await rt.start_worker(concurrency=2, poll_interval=0.05)
        async with durable.Runtime(
            durable.connect(pg_url), registry=durable.Registry(), recover=False
        ) as producer:
            wid = await producer.enqueue("to.held.v1", 4, served_elsewhere=True)
            await asyncio.wait_for(GATE["entered"].wait(), WAIT)
            proxy.cut()
            GATE["release"].set()
            await asyncio.sleep(1.0)
            assert worker.running == 1, "the execution gave its slot up during the outage"
            assert RUNS == {"held": 1}
            proxy.restore()
            back = time.monotonic()
            assert await producer.result(wid, timeout=WAIT) == 41
            waited = time.monotonic() - back
            info = await producer.get_workflow(wid)
        assert worker.failure is None
        await worker.stop()
    assert waited < 20.0, f"resumed {waited:.1f}s after the database came back"
    # handed back, not taken over after its lease expired; the step whose record was lost ran
    # again, the rest once
    assert (info.attempts, info.interruptions) == (1, 0)
    assert RUNS == {"held": 2, "after": 1}


@pytest.mark.postgres
async def test_a_database_made_read_only_is_waited_out_like_an_outage(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The database is made read-only (``ALTER DATABASE ... SET default_transaction_read_only``,
    as for maintenance; a failover that leaves a connection on a standby refuses writes the
    same way, 25006) while a step runs: its record is refused, and the attempt is handed back
    uncounted through the outage, not failed, nor left to wait for its 60 s lease. The
    sessions opened while it was read-only stay read-only for their life: they are dropped,
    so once the database takes writes again, without any session ended from outside, the
    execution finishes."""
    monkeypatch.setattr(durable.runtime, "OUTAGE_BACKOFF", timedelta(milliseconds=50))
    GATE.update(entered=asyncio.Event(), release=asyncio.Event())
    RUNS.clear()
    database = sa.make_url(pg_url).database

    async def alter(setting: str) -> None:  # on a session of its own, which may write
        async with await psycopg.AsyncConnection.connect(
            pg_conninfo(pg_url), autocommit=True
        ) as admin:
            await admin.execute("SET default_transaction_read_only = off")
            await admin.execute(f'ALTER DATABASE "{database}" {setting}')

    try:
        async with durable.Runtime(
            durable.connect(pg_url), registry=REG, recover=False, claim_ttl=60.0
        ) as rt:
            worker = await rt.start_worker(concurrency=2, poll_interval=0.05)
            wid = await rt.enqueue("to.held.v1", 4)
            await asyncio.wait_for(GATE["entered"].wait(), WAIT)
            await alter("SET default_transaction_read_only = on")
            await terminate_other_sessions(pg_url)  # its sessions start again, read-only
            with pytest.raises(BackendUnavailableError, match=r"takes no writes now.*read-only"):
                await rt.enqueue("to.held.v1", 5)
            # reads go on, on pooled sessions that start read-only meanwhile
            await asyncio.gather(*(rt.list_workflows() for _ in range(4)))
            GATE["release"].set()
            await asyncio.sleep(1.0)
            assert worker.running == 1, "the attempt was not handed back through the outage"
            await alter("RESET default_transaction_read_only")
            back = time.monotonic()
            # a write through the pool: a read-only session it meets is refused once, and
            # dropped with the rest of the pool, so the next try gets a session that writes
            for _ in range(3):
                with contextlib.suppress(BackendUnavailableError):
                    [extra] = await rt.enqueue_many("to.held.v1", [(6,)])
                    break
            else:
                pytest.fail("writes through the pool kept meeting read-only sessions")
            assert await rt.result(wid, timeout=WAIT) == 41
            waited = time.monotonic() - back
            info = await rt.get_workflow(wid)
            assert await rt.result(extra, timeout=WAIT) == 61
            assert worker.failure is None
            await worker.stop()
    finally:
        await alter("RESET default_transaction_read_only")
    assert waited < 20.0, f"resumed {waited:.1f}s after the database took writes again"
    assert (info.attempts, info.interruptions) == (1, 0)
    assert RUNS == {"held": 3, "after": 2}  # the extra job: once each


async def _now(value: T) -> T:
    return value


class Flaky:
    """Wraps a claim (a backend's ``claim_available_tasks``, or ``method`` of ``owner``):
    raises ``error`` the first ``times`` calls, and counts the calls."""

    def __init__(
        self,
        owner: Any,
        error: BaseException,
        times: int,
        *,
        method: str = "claim_available_tasks",
    ) -> None:
        self.claim = getattr(owner, method)
        self.error = error
        self.times = times
        self.calls = 0
        setattr(owner, method, self)

    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        if self.calls <= self.times:
            raise self.error
        return await self.claim(*args, **kwargs)


async def test_the_worker_loop_survives_any_exception_while_claiming(
    caplog: pytest.LogCaptureFixture,
) -> None:
    backend = durable.connect("memory://")
    flaky = Flaky(backend, KeyError("not a DurableError"), times=3)
    caplog.set_level(logging.DEBUG, logger="durable.worker")
    async with durable.Runtime(backend, registry=REG, recover=False) as rt:
        worker = await rt.start_worker(poll_interval=0.02)
        wid = await rt.enqueue(echo, 5)
        assert await rt.result(wid, timeout=30) == 5
        assert flaky.calls > 3 and worker.failure is None
    failed = [r for r in caplog.records if getattr(r, "action", None) == "worker.claim"]
    assert [r.levelno for r in failed] == [logging.WARNING, logging.DEBUG, logging.DEBUG]
    assert failed[0].exc_info is not None  # not a DurableError: the traceback is shown
    assert "KeyError" in failed[0].getMessage()
    resumed = [r for r in caplog.records if getattr(r, "action", None) == "worker.claim_resumed"]
    assert len(resumed) == 1 and "3 failed attempt(s)" in resumed[0].getMessage()


async def until(read: Callable[[], Awaitable[T]], done: Callable[[T], bool]) -> T:
    deadline = time.monotonic() + WAIT
    while not done(value := await read()):
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)
    return value


class Fatal(BaseException):
    """Nothing catches this: it kills the worker's loop."""


async def test_a_dead_worker_loop_stops_the_node_heartbeat_and_fails_serve(
    caplog: pytest.LogCaptureFixture,
) -> None:
    backend = durable.connect("memory://")
    Flaky(backend, Fatal("the loop dies"), times=1)
    rt = durable.Runtime(backend, registry=REG, recover=False)
    with pytest.raises(WorkerCrashedError, match="Fatal: the loop dies") as info:
        await asyncio.wait_for(durable.worker.serve(rt, poll_interval=0.02), timeout=WAIT)
    assert isinstance(info.value.__cause__, Fatal)
    died = [r for r in caplog.records if getattr(r, "action", None) == "worker.died"]
    assert [r.levelno for r in died] == [logging.CRITICAL]


async def test_a_dead_worker_loop_leaves_the_executor_stale(
    caplog: pytest.LogCaptureFixture,
) -> None:
    backend = durable.connect("memory://")
    flaky = Flaky(backend, Fatal("the loop dies"), times=0)
    async with durable.Runtime(backend, registry=REG, recover=False, heartbeat_interval=0.02) as rt:
        worker = await rt.start_worker(poll_interval=0.02)

        async def heartbeat_at() -> Any:
            (executor,) = await rt.list_executors()
            return executor.heartbeat_at

        first = await heartbeat_at()
        await until(heartbeat_at, lambda at: at != first)  # it beats while the worker lives
        flaky.times = flaky.calls + 1  # the next claim kills the loop
        await asyncio.wait_for(worker.wait_stopped(), timeout=WAIT)
        assert isinstance(worker.failure, Fatal)
        last = await heartbeat_at()
        await asyncio.sleep(0.3)  # many heartbeat intervals: none comes
        assert await heartbeat_at() == last
        (executor,) = await rt.list_executors(stale_after=0.1)
        assert executor.stale
        await worker.stop()


APP = """
import durable
from durable.backends import InMemoryBackend


class Fatal(BaseException):
    pass


class DyingBackend(InMemoryBackend):
    async def claim_available_tasks(self, *args, **kwargs):
        raise Fatal("the loop dies")


@durable.workflow(name="to.cli.v1")
async def work(x: int) -> int:
    return x


runtime = durable.Runtime(DyingBackend(), executor_id="cli-dying")
"""


def test_durable_worker_exits_non_zero_when_its_loop_dies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "dyingapp.py").write_text(textwrap.dedent(APP))
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    result = CliRunner().invoke(main, ["worker", "dyingapp:runtime", "--poll-interval", "0.02"])
    assert result.exit_code == 1, result.output
    assert "worker cli-dying stopped claiming work" in result.output
    assert "Fatal: the loop dies" in result.output


@pytest.mark.postgres
async def test_the_listener_is_restarted_when_it_died(pg_url: str) -> None:
    backend = durable.connect(pg_url)
    assert isinstance(backend, SQLAlchemyBackend)
    async with backend:
        await backend.wait_for_work(0.01)
        first = backend._listener
        assert first is not None
        first.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await first
        await backend.wait_for_work(0.01)
        assert backend._listener is not None and backend._listener is not first
        assert not backend._listener.done()


# -- real outages: a PostgreSQL cluster of our own ----------------------------------------------


@dataclass(frozen=True)
class Cluster:
    """A Debian PostgreSQL cluster (pg_createcluster / pg_ctlcluster) these tests may restart."""

    version: str
    name: str
    port: int

    def ctl(self, action: str, *options: str) -> None:
        subprocess.run(
            [
                "pg_ctlcluster",
                "--skip-systemctl-redirect",
                self.version,
                self.name,
                action,
                *options,
            ],
            check=True,
            capture_output=True,
            timeout=WAIT,
        )

    @property
    def conninfo(self) -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres"

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def running(self) -> bool:
        try:
            with psycopg.connect(self.conninfo, connect_timeout=2) as conn:
                conn.execute("SELECT 1")
            return True
        except psycopg.Error:
            return False

    def ensure(self) -> None:
        """Create the cluster unless it exists, let 127.0.0.1 in without a password, start it
        unless it runs, and wait until it answers."""
        config = Path("/etc/postgresql") / self.version / self.name
        if not config.exists():
            subprocess.run(
                ["pg_createcluster", self.version, self.name, "--port", str(self.port)],
                check=True,
                capture_output=True,
                timeout=WAIT,
            )
        hba = config / "pg_hba.conf"
        trust = "host all all 127.0.0.1/32 trust"
        lines = hba.read_text().splitlines()
        if not lines or lines[0] != trust:
            hba.write_text("\n".join([trust, *lines]) + "\n")
            with contextlib.suppress(subprocess.CalledProcessError):
                self.ctl("reload")
        if not self.running():
            with contextlib.suppress(subprocess.CalledProcessError):  # already started
                self.ctl("start")
        self.wait_running()

    def wait_running(self) -> None:
        deadline = time.monotonic() + WAIT
        while not self.running():
            if time.monotonic() > deadline:
                pytest.fail(f"PostgreSQL cluster {self.name} did not come up on {self.port}")
            time.sleep(0.1)

    def execute(self, sql: str) -> None:
        with psycopg.connect(self.conninfo, autocommit=True) as conn:
            conn.execute(sql)  # type: ignore[arg-type]


def _pg_version() -> str | None:
    versions = sorted(
        (p.name for p in Path("/etc/postgresql").glob("*") if p.name[0].isdigit()),
        key=lambda v: [int(x) for x in v.split(".") if x.isdigit()],
    )
    return versions[-1] if versions else None


@pytest.fixture
def outage_cluster() -> Iterator[Cluster]:
    """The cluster ``durable_outage`` on port 5499 (DURABLE_OUTAGE_PG_PORT), created if needed
    (then reused), started for the test and stopped after it, under a file lock held for the
    test: concurrent test sessions, and pytest-xdist's workers, take turns with it one test at
    a time (held for a whole session, one worker's lock made the other's test wait until that
    session ended, past the test timeout). Skipped without pg_createcluster or root (a
    failure under CI)."""
    version = _pg_version()
    missing = (
        "pg_createcluster is not installed"
        if shutil.which("pg_createcluster") is None or version is None
        else "creating a PostgreSQL cluster needs root"
        if os.geteuid() != 0
        else None
    )
    if missing:
        reason = f"the outage tests need a PostgreSQL cluster of their own: {missing}"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    assert version is not None
    cluster = Cluster(
        version, "durable_outage", int(os.environ.get("DURABLE_OUTAGE_PG_PORT", 5499))
    )
    with open("/tmp/durable-outage-cluster.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        cluster.ensure()
        try:
            yield cluster
        finally:
            with contextlib.suppress(subprocess.CalledProcessError):
                cluster.ctl("stop")


@pytest.fixture
def outage_url(outage_cluster: Cluster) -> Iterator[str]:
    """A fresh database in the outage cluster, dropped afterwards (the cluster started again
    first, should the test have left it stopped)."""
    database = f"durable_outage_{os.getpid()}_{time.monotonic_ns()}"
    outage_cluster.execute(f'CREATE DATABASE "{database}"')
    try:
        yield outage_cluster.url(database)
    finally:
        outage_cluster.ensure()
        outage_cluster.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


class Workers:
    """Worker processes of tests/workerprog.py on one database."""

    def __init__(self, workdir: Path, url: str, log: Path) -> None:
        self.workdir, self.url, self.log = workdir, url, log
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, executor_id: str, concurrency: int) -> None:
        with (self.workdir / f"stderr-{executor_id}.txt").open("wb") as out:
            self.processes[executor_id] = subprocess.Popen(
                [
                    sys.executable,
                    str(PROG),
                    *("serve", "--url", self.url, "--executor-id", executor_id),
                    *("--log", str(self.log), "--claim-ttl", "2"),
                    *("--concurrency", str(concurrency), "--poll-interval", "0.5"),
                ],
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
            )

    def output(self, executor_id: str) -> str:
        path = self.workdir / f"stderr-{executor_id}.txt"
        return path.read_text(encoding="utf-8", errors="replace")

    def check_alive(self) -> None:
        for executor_id, process in self.processes.items():
            if process.poll() is not None:
                pytest.fail(
                    f"{executor_id} exited with {process.returncode}:\n{self.output(executor_id)}"
                )

    def stop(self) -> dict[str, int]:
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        return {eid: p.wait(timeout=WAIT) for eid, p in self.processes.items()}

    def kill(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.kill()
                process.wait()


def query(url: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """One query on a new connection (the cluster may be away: the caller retries)."""
    conninfo = sa.make_url(url).set(drivername="postgresql").render_as_string(False)
    with psycopg.connect(conninfo, autocommit=True, connect_timeout=5) as conn:
        cursor = conn.execute(sql, params)  # type: ignore[arg-type]
        return cursor.fetchall() if cursor.description else []


def wait_for(condition: Callable[[], T], what: str, workers: Workers) -> T:
    """Poll ``condition`` (a database error counts as not yet) until it returns something
    truthy; the worker processes must stay alive meanwhile."""
    deadline = time.monotonic() + WAIT
    while True:
        with contextlib.suppress(psycopg.Error):
            value = condition()
            if value:
                return value
        workers.check_alive()
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


@dataclass(frozen=True)
class Run:
    """One line of the side-effect log: a step body started."""

    workflow_id: str
    step: str
    token: str
    pid: int
    at: float


def read_runs(path: Path) -> list[Run]:
    runs = []
    text = path.read_text(encoding="utf-8")
    # while workers run, the last line may be half written: only whole lines count
    for line in text[: text.rfind("\n") + 1].splitlines():
        workflow_id, step, token, pid, at = line.split(" ")
        runs.append(Run(workflow_id, step, token, int(pid), float(at)))
    return runs


async def enqueue_all(url: str, count: int, pause: float) -> list[str]:
    """``count`` workflows, sync and async alternately, enqueued by name, due in an hour."""
    async with durable.Runtime(
        durable.connect(url), executor_id="producer", recover=False, registry=durable.Registry()
    ) as producer:
        ids: list[str] = []
        for start in range(0, count, 100):
            ids += await asyncio.gather(
                *(
                    producer.enqueue(
                        OUTAGE_SYNC if n % 2 else OUTAGE, pause, served_elsewhere=True, delay=3600
                    )
                    for n in range(start, min(count, start + 100))
                )
            )
        return ids


@pytest.mark.slow
@pytest.mark.postgres
def test_workers_ride_out_server_restarts_and_an_outage(
    outage_cluster: Cluster, outage_url: str, tmp_path: Path
) -> None:
    total, pause = 2000, 0.04  # at most 12 at a time: the drain outlasts both outages
    # enqueued not to be due before the workers are up and idle (so they listen)
    ids = asyncio.run(enqueue_all(outage_url, total, pause))
    assert len(set(ids)) == total
    log = tmp_path / "runs.log"
    log.touch()
    workers = Workers(tmp_path, outage_url, log)
    executors = ["worker-1", "worker-2", "worker-3"]

    def succeeded() -> int:
        rows = query(
            outage_url, "SELECT count(*) FROM durable_workflows WHERE status = %s", "succeeded"
        )
        return int(rows[0][0])

    def at_least(n: int) -> Callable[[], int | None]:
        return lambda: done if (done := succeeded()) >= n else None

    def listening() -> int:
        """How many connections listen for work (one per worker, once it waited for work)."""
        rows = query(
            outage_url,
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND query LIKE 'LISTEN %%'",
        )
        return int(rows[0][0])

    def back_for_all(since: float) -> bool:
        """Every worker is back: it listens again (its old LISTEN connection died with the
        server), sends node heartbeats, and ran a step since the server came back."""
        beating = query(
            outage_url,
            "SELECT count(*) FROM durable_executors WHERE id = ANY(%s)"
            " AND extract(epoch FROM heartbeat_at) > %s",
            executors,
            since,
        )[0][0]
        ran = {r.pid for r in read_runs(log) if r.at > since}
        pids = {p.pid for p in workers.processes.values()}
        return listening() == len(executors) and beating == len(executors) and ran == pids

    try:
        for executor_id in executors:
            workers.start(executor_id, concurrency=4)
        # idle, they listen; then all the work is due at once, and they are told
        wait_for(lambda: listening() == len(executors), "the workers to listen", workers)
        query(outage_url, "UPDATE durable_tasks SET run_after = now(); NOTIFY durable_work")

        # 1. a fast restart (immediate: the server crashes and recovers) mid-drain
        wait_for(at_least(200), "200 workflows done before the first restart", workers)
        outage_cluster.ctl("restart", "-m", "immediate")
        back = time.time()
        done = wait_for(at_least(1), "the server to answer after the restart", workers)
        assert done < total, "the drain finished before the restart: make it slower"
        print(f"\nrestart: {done} done, {time.time() - back:.2f}s to answer", flush=True)
        wait_for(lambda: back_for_all(back), "every worker back after the restart", workers)
        print(f"back: {succeeded()} done, {time.time() - back:.2f}s after", flush=True)
        wait_for(at_least(done + 200), "200 more workflows done after the restart", workers)

        # 2. stopped for 6 seconds, then started
        print(f"stop: {succeeded()} done", flush=True)
        outage_cluster.ctl("stop", "-m", "fast")
        time.sleep(6)
        outage_cluster.ctl("start")
        back = time.time()
        done = wait_for(at_least(1), "the server to answer after the outage", workers)
        assert done < total, "the drain finished before the outage: make it slower"
        print(f"outage: {done} done, {time.time() - back:.2f}s to answer", flush=True)
        wait_for(lambda: back_for_all(back), "every worker back after the outage", workers)
        print(f"back: {succeeded()} done, {time.time() - back:.2f}s after", flush=True)

        wait_for(at_least(total), f"all {total} workflows to succeed", workers)
        codes = workers.stop()
    finally:
        workers.kill()
    assert codes == dict.fromkeys(executors, 0), {e: workers.output(e) for e in executors}

    # every workflow succeeded, its three steps recorded; no recorded step ran again after the
    # run whose result was recorded (a run cut off before its record may have been repeated)
    rows = query(
        outage_url,
        "SELECT w.id, w.status, s.output FROM durable_workflows w"
        " JOIN durable_steps s ON s.workflow_id = w.id ORDER BY w.id, s.position",
    )
    recorded: dict[str, list[str]] = defaultdict(list)
    for workflow_id, status, output in rows:
        assert status == "succeeded"
        recorded[workflow_id].append(output)
    assert sorted(recorded) == sorted(ids)
    last: dict[tuple[str, str], str] = {}
    runs = read_runs(log)
    for run in runs:
        last[(run.workflow_id, run.step)] = run.token
    for workflow_id, outputs in recorded.items():
        assert [last[(workflow_id, step)] for step in "abc"] == [json.loads(o) for o in outputs]
    repeated = Counter(n for n in Counter((r.workflow_id, r.step) for r in runs).values() if n > 1)
    print(
        f"\n{len(runs)} step runs for {3 * total} steps; repeated (cut off before their record):"
        f" {dict(repeated)}"
    )
    for executor_id in executors:
        output = workers.output(executor_id)
        assert "Traceback" not in output and "CRITICAL" not in output, output


@pytest.mark.slow
@pytest.mark.postgres
def test_a_limited_queue_keeps_its_limit_across_a_server_restart(
    outage_cluster: Cluster, outage_url: str, tmp_path: Path
) -> None:
    """Four worker processes drain a queue with concurrency 3 while the server restarts
    (immediate: it crashes and recovers) mid-drain: every execution succeeds, and at no moment
    do more than 3 run (each step logs its running interval, inside its execution's claim)."""
    total, limit = 300, 3
    log = tmp_path / "runs.log"
    log.touch()

    async def prepare() -> None:
        async with durable.Client(outage_url) as client:
            await client.create_queue(durable.Queue("q", concurrency=limit))
            await client.enqueue_many("queueprog.job.v1", [(n,) for n in range(total)], queue="q")

    asyncio.run(prepare())
    prog = Path(__file__).with_name("queueprog.py")
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(prog),
                *("--url", outage_url, "--executor-id", f"q{n}", "--log", str(log)),
                *("--hold", "0.05", "--concurrency", str(limit), "--slots", "2"),
            ],
            cwd=tmp_path,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(4)
    ]

    def succeeded() -> int:
        sql = "SELECT count(*) FROM durable_workflows WHERE status = 'succeeded'"
        rows = query(outage_url, sql)
        return int(rows[0][0])

    def wait_until(condition: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + WAIT
        while True:
            with contextlib.suppress(psycopg.Error):
                if condition():
                    return
            assert all(p.poll() is None for p in procs), f"a worker exited while {what}"
            assert time.monotonic() < deadline, f"timed out: {what}"
            time.sleep(0.05)

    try:
        wait_until(lambda: succeeded() >= 60, "60 executions done before the restart")
        outage_cluster.ctl("restart", "-m", "immediate")
        done = 0

        def answers() -> bool:
            nonlocal done
            done = succeeded()
            return True

        wait_until(answers, "the server to answer after the restart")
        assert done < total, "the drain finished before the restart: make it slower"
        wait_until(lambda: succeeded() >= total, f"all {total} executions to succeed")
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        errors = [proc.communicate(timeout=WAIT)[1] for proc in procs]
    assert [p.returncode for p in procs] == [0] * 4, errors
    lines = [line.split() for line in log.read_text().splitlines() if line.strip()]
    intervals = [(int(start), int(end)) for start, end, _pid in lines]
    assert len(intervals) >= total  # a step cut off by the restart before its record runs again
    assert max_overlap(intervals) <= limit
    assert all("Traceback" not in e for e in errors), errors


async def test_a_change_feed_follower_rides_out_an_outage(pg_url: str, proxy: Proxy) -> None:
    """``follow_events`` through a connection the outage cuts: it waits, and every change
    written meanwhile (by a process that still reaches the database) comes once it is back."""
    async with durable.Client(durable.connect(pg_url)) as writer:
        await writer.backend.create_workflow(WorkflowSnapshot(id="before", name="wf"))
        async with durable.Client(durable.connect(proxy.url(pg_url))) as reader:
            events = reader.follow_events(poll_interval=0.05)
            first = await asyncio.wait_for(anext(events), 30)
            assert (first.kind, first.workflow_id) == (ChangeKind.CREATED, "before")
            nxt = asyncio.ensure_future(anext(events))
            await asyncio.sleep(0.2)
            proxy.cut()
            await asyncio.sleep(0.3)  # the follower reads and fails meanwhile
            assert not nxt.done()
            await writer.backend.create_workflow(WorkflowSnapshot(id="during", name="wf"))
            proxy.restore()
            second = await asyncio.wait_for(nxt, 30)
            assert (second.kind, second.workflow_id) == (ChangeKind.CREATED, "during")
            assert second.position > first.position
            await events.aclose()


# -- a transactional step whose connection the server drops -----------------------------------

TX_RUNS: Counter[str] = Counter()


@durable.transaction(name="to.tx.sleepy", max_attempts=1)
def sleepy_tx(conn: sa.Connection, x: int) -> int:
    TX_RUNS["sync"] += 1
    if TX_RUNS["sync"] == 1:  # the first run waits here until its session is terminated
        conn.execute(sa.text("SELECT pg_sleep(60)"))
    return x + 1


@durable.transaction(name="to.tx.sleepy_async", max_attempts=1)
async def sleepy_tx_async(conn: Any, x: int) -> int:
    TX_RUNS["async"] += 1
    if TX_RUNS["async"] == 1:
        await conn.execute(sa.text("SELECT pg_sleep(60)"))
    return x + 2


@durable.workflow(name="to.tx.v1", registry=REG)
async def tx_flow(x: int, kind: str) -> int:
    return await (sleepy_tx.aio(x) if kind == "sync" else sleepy_tx_async(x))


@pytest.mark.postgres
@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_a_transactional_step_whose_connection_is_dropped_is_handed_back_uncounted(
    pg_url: str, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server terminates the session of a transactional step's body (what a restart does):
    the attempt is handed back uncounted, as any checkpoint that cannot reach the database, and
    runs again; not recorded as the step's failure, which with one attempt allowed
    dead-lettered the execution."""
    monkeypatch.setattr(durable.runtime, "OUTAGE_BACKOFF", timedelta(milliseconds=50))
    TX_RUNS.clear()
    async with durable.Runtime(durable.connect(pg_url), registry=REG, recover=False) as rt:
        await rt.start_worker(concurrency=1, poll_interval=0.05)
        wid = await rt.enqueue(tx_flow, 1, kind, max_attempts=1)
        async with await psycopg.AsyncConnection.connect(
            pg_conninfo(pg_url), autocommit=True
        ) as admin:
            terminated = False
            deadline = time.monotonic() + WAIT
            while not terminated:
                assert time.monotonic() < deadline, "the body's pg_sleep never started"
                cursor = await admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE query = 'SELECT pg_sleep(60)' AND datname = %s",
                    (sa.make_url(pg_url).database,),
                )
                terminated = bool(await cursor.fetchall())
                await asyncio.sleep(0.05)
        assert await rt.result(wid, timeout=WAIT) == (2 if kind == "sync" else 3)
        info = await rt.get_workflow(wid)
        (step,) = await rt.list_steps(wid)
    assert info.status is durable.WorkflowStatus.SUCCEEDED and info.attempts == 1
    assert step.attempts == 1 and step.error is None
    assert TX_RUNS[kind] == 2


@durable.transaction(name="to.tx.plain", max_attempts=1)
def plain_tx(conn: sa.Connection, x: int) -> int:
    return int(conn.execute(sa.select(sa.literal(x) + 1)).scalar_one())


@durable.workflow(name="to.tx.plain.v1", registry=REG)
async def plain_tx_flow(x: int) -> int:
    return await plain_tx.aio(x)


@pytest.mark.parametrize("engine", ["durable's", "the caller's"])
def test_the_callers_database_is_durables_across_a_server_restart(
    outage_cluster: Cluster, outage_url: str, engine: str
) -> None:
    """PostgreSQL's identity of a database held the server's start time: after a restart,
    every ``enqueue_in(..., using=)`` was refused as "another database" until the process
    restarted, and a ``@durable.transaction(engine=)`` engine first used after it failed its
    step (dead-lettered). Also for a backend over an async engine the caller made, which has
    no sync connection of its own to read the identity anew on."""
    from sqlalchemy.ext.asyncio import create_async_engine

    given = None if engine == "durable's" else create_async_engine(outage_url)
    backend = durable.connect(outage_url) if given is None else SQLAlchemyBackend(given)
    app = sa.create_engine(outage_url)
    try:
        with durable.Runtime(backend, registry=REG, recover=False) as rt:
            with app.begin() as conn:
                before = durable.enqueue_in(conn, "to.none.v1", 1, using=rt)
            outage_cluster.ctl("restart")
            outage_cluster.wait_running()
            app.dispose()  # its pooled connections died with the server
            with app.begin() as conn:
                after = durable.enqueue_in(conn, "to.none.v1", 2, using=rt)
            assert {i.id for i in rt.client.list_workflows_sync()} == {before, after}
            plain_tx.engine = app  # first used now, after the restart
            rt.start_worker_sync(concurrency=1, poll_interval=0.05)
            wid = rt.client.enqueue_sync(plain_tx_flow, 1, max_attempts=1)
            assert rt.client.result_sync(wid, timeout=WAIT) == 2
    finally:
        plain_tx.engine = None
        app.dispose()
        if given is not None:  # the caller's, which the backend leaves open
            asyncio.run(given.dispose())


def test_a_copy_of_durables_server_is_another_database(
    outage_cluster: Cluster, outage_url: str
) -> None:
    """A copy of the cluster (a base backup, a restored one, here its data directory copied
    while it was stopped) has the same system identifier: with the identity of the server
    reduced to it, an ``enqueue_in`` on the copy was accepted, and the execution, written
    there, was lost to durable's workers."""
    with durable.Client(outage_url):
        pass  # durable's tables
    outage_cluster.ctl("stop")
    data = Path("/var/lib/postgresql") / outage_cluster.version / outage_cluster.name
    tmp_path = Path(tempfile.mkdtemp(prefix="durable-clone-"))  # postgres must reach it
    shutil.chown(tmp_path, "postgres")
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-a", str(data), str(copy)], check=True, timeout=WAIT)
    outage_cluster.ensure()
    port = outage_cluster.port - 2
    config = Path("/etc/postgresql") / outage_cluster.version / outage_cluster.name
    bin_dir = Path("/usr/lib/postgresql") / outage_cluster.version / "bin"
    options = (
        f"-c config_file={config / 'postgresql.conf'} -c data_directory={copy} -c port={port}"
        f" -c unix_socket_directories={tmp_path} -c external_pid_file={tmp_path / 'pid'}"
    )
    start = ["runuser", "-u", "postgres", "--", str(bin_dir / "pg_ctl"), "-D", str(copy)]
    clone = sa.create_engine(outage_url.replace(f":{outage_cluster.port}/", f":{port}/"))
    try:
        subprocess.run(
            [*start, "-o", options, "-l", str(tmp_path / "log"), "-w", "start"],
            check=True,
            capture_output=True,
            timeout=WAIT,
        )
        with durable.Client(outage_url) as client:
            with (
                pytest.raises(durable.ConfigurationError, match="another database"),
                clone.begin() as conn,
            ):
                durable.enqueue_in(conn, "to.none.v1", 1, using=client)
            assert client.list_workflows_sync().items == []
    finally:
        clone.dispose()
        subprocess.run(
            [*start, "-m", "immediate", "stop"], check=False, capture_output=True, timeout=WAIT
        )
        shutil.rmtree(tmp_path, ignore_errors=True)


# -- waits of a client through a restart ---------------------------------------------------------


@durable.workflow(name="to.publishes.v1", registry=REG)
async def publishes(x: int) -> int:
    await durable.set_event("ready", x)
    return await after(await held(x))


@pytest.mark.postgres
async def test_a_clients_waits_ride_out_an_outage(pg_url: str, proxy: Proxy) -> None:
    """result() and get_event() of a client whose database goes away while they wait look
    again until it answers, and return what was done meanwhile; a timeout that passes during
    the outage says the database could not be reached (not that nothing happened)."""
    GATE.update(entered=asyncio.Event(), release=asyncio.Event())
    RUNS.clear()
    async with (
        durable.Runtime(durable.connect(pg_url), registry=REG, recover=False) as worker_rt,
        durable.Client(proxy.url(pg_url), poll_interval=0.05) as client,
    ):
        await worker_rt.start_worker(concurrency=1, poll_interval=0.05)
        wid = await client.enqueue("to.publishes.v1", 4)
        await asyncio.wait_for(GATE["entered"].wait(), WAIT)
        proxy.cut()
        result = asyncio.create_task(client.result(wid, timeout=WAIT))
        event = asyncio.create_task(client.get_event(wid, "ready", timeout=WAIT))
        with pytest.raises(durable.BackendUnavailableError):
            await client.result(wid, timeout=0.3)
        GATE["release"].set()  # the worker (not behind the proxy) finishes meanwhile
        await until(lambda: worker_rt.get_workflow(wid), lambda i: i.status.is_terminal)
        await asyncio.sleep(0.3)
        assert not result.done() and not event.done()
        proxy.restore()
        assert await result == 41
        assert await event == 4


@pytest.mark.postgres
async def test_a_clients_waits_keep_their_timeout_when_the_server_hangs(
    pg_url: str, proxy: Proxy
) -> None:
    """A server that hangs (neither answers nor refuses): result() and get_event() end at their
    timeout, saying the database did not answer (not that nothing finished), instead of
    waiting for their last look's cancellation (the driver's connect timeout, 10 s)."""
    async with (
        durable.Runtime(durable.connect(pg_url), registry=REG, recover=False) as worker_rt,
        durable.Client(proxy.url(pg_url), poll_interval=0.05) as client,
    ):
        await worker_rt.start_worker(concurrency=1, poll_interval=0.05)
        wid = await client.enqueue("to.echo.v1", 7)
        assert await client.result(wid, timeout=WAIT) == 7
        proxy.stall()
        try:
            began = time.monotonic()
            with pytest.raises(durable.BackendUnavailableError, match="did not answer"):
                await client.result(wid, timeout=2)
            with pytest.raises(durable.BackendUnavailableError, match="did not answer"):
                await client.get_event(wid, "never", timeout=1)
            took = time.monotonic() - began
        finally:
            proxy.unstall()
        assert took < 8, f"the two waits took {took:.1f} s for 2 s and 1 s (+1 s) of timeout"
        assert await client.result(wid, timeout=WAIT) == 7  # and it works once it answers
